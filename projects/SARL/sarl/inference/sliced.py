"""Sliced (tiled) inference for aerial images larger than the detector's input.

The image is cut into ``slice_size`` x ``slice_size`` tiles overlapping by ``overlap`` (a fraction of the tile),
the last tile of each row/column aligned to the image border so every tile is full-size (the grid and the
merge are :mod:`sarl.inference.tiling`'s). Tiles are read lazily from the image array (a view, then one
uint8 -> float copy of that tile only), run through the model ``batch_size`` at a time, shifted back to image
coordinates and merged:

- border handling: a detection touching an *inner* tile edge (an edge that is not the image border) is a
  possibly cut object; when it is smaller than the overlap it lies whole in the neighbouring tile, so the cut
  copy is dropped. Larger cut boxes (they cannot be whole in any tile) are kept and left to NMS;
- class-wise NMS over all kept detections (``torchvision.ops.batched_nms``), then the top ``max_detections``.

Nothing is cut silently: the model is asked for one detection more than its per-image cap, so a tile whose
detections were cut is known, and so is a merge that kept only the top ``max_detections``
(:class:`SliceReport`, which :class:`~sarl.inference.Predictor` turns into a warning).

Memory: the image (uint8) plus one batch of float tiles plus the detections; a 10000 x 10000 RGB image needs
~300 MB for itself, never a full-size float copy.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.structures import Boxes, Instances

from .tiling import drop_cut_boxes, merge_detections, shift_boxes, sliced_stride, tile_grid

logger = logging.getLogger(__name__)

__all__ = ["SliceReport", "SlicedPredictor", "SlicedDetector", "cut_to_cap", "one_past_the_cap"]

# progress(tiles_done, tiles_total), called after each batch of tiles
TileProgress = Callable[[int, int], None]


@contextmanager
def one_past_the_cap(model) -> Iterator[Optional[int]]:
    """Within the block the model keeps one detection more than its ``max_detections_per_image`` cap (yielded;
    None for a model without one), so more than ``cap`` detections back means the cap cut some."""
    cap = getattr(model, "max_detections_per_image", None)
    if not isinstance(cap, int):
        yield None
        return
    model.max_detections_per_image = cap + 1
    try:
        yield cap
    finally:
        model.max_detections_per_image = cap


def cut_to_cap(instances: Instances, cap: Optional[int]) -> Tuple[Instances, bool]:
    """``instances`` (best first) cut to ``cap``, and whether that dropped any."""
    if cap is None or len(instances) <= cap:
        return instances, False
    return instances[:cap], True


@dataclass
class SliceReport:
    """What sliced prediction of one image did: ``tiles`` run, ``tiles_over_cap`` of them had detections cut by
    the model's per-image cap, ``merge_over_cap``: more than ``max_detections`` survived the merge (the best kept)."""

    tiles: int = 0
    tiles_over_cap: int = 0
    merge_over_cap: bool = False

    @property
    def truncated(self) -> bool:
        return self.tiles_over_cap > 0 or self.merge_over_cap


@dataclass
class _TileDetections:
    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor


class SlicedPredictor:
    """Run a Detectron2-style detector over the tiles of a large image and merge the detections.

    Args:
        model: a callable taking a list of ``{"image": [3, h, w] tensor, "height", "width"}`` dicts and returning
            ``[{"instances": Instances(pred_boxes, scores, pred_classes)}]`` in each tile's pixels (a
            ``YOLODetector`` in eval mode, or anything with that contract).
        slice_size: tile side in pixels (``--slice``).
        overlap: overlap of adjacent tiles as a fraction of ``slice_size`` (``--overlap``).
        batch_size: tiles per model call (``--batch``).
        nms_thresh: IoU threshold of the class-wise merge NMS.
        max_detections: detections kept per image after merging.
        input_size: the tiles are resized so their long side is ``input_size`` before the model (the model
            rescales its boxes back through ``height``/``width``); None keeps them at native resolution.
        class_agnostic: merge with class-agnostic NMS.
        to_input: converts an HxWxC uint8 tile to the model's ``[C, h, w]`` tensor (default: channels first,
            no colour change: give the image in the model's ``INPUT.FORMAT``).
    """

    def __init__(self, model: Callable, slice_size: int = 800, overlap: float = 0.2, batch_size: int = 4,
                 nms_thresh: float = 0.65, max_detections: int = 3000, input_size: Optional[int] = None,
                 class_agnostic: bool = False, to_input: Optional[Callable[[np.ndarray], torch.Tensor]] = None):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        sliced_stride(slice_size, overlap)  # validates slice_size and overlap
        self.model = model
        self.slice_size = int(slice_size)
        self.overlap = float(overlap)
        self.batch_size = int(batch_size)
        self.nms_thresh = float(nms_thresh)
        self.max_detections = int(max_detections)
        self.input_size = input_size
        self.class_agnostic = class_agnostic
        self.to_input = to_input or (lambda tile: torch.from_numpy(np.ascontiguousarray(tile.transpose(2, 0, 1))))

    def _model_inputs(self, image: np.ndarray, tiles: Sequence[Tuple[int, int, int, int]]) -> List[Dict]:
        inputs = []
        for x0, y0, x1, y1 in tiles:
            tile = image[y0:y1, x0:x1]  # a view: nothing full-size is copied
            if tile.ndim == 2:
                tile = tile[:, :, None]
            h, w = tile.shape[:2]
            if self.input_size is not None and max(h, w) != self.input_size:
                import cv2

                scale = self.input_size / max(h, w)
                tile = cv2.resize(np.ascontiguousarray(tile), (max(1, round(w * scale)), max(1, round(h * scale))),
                                  interpolation=cv2.INTER_LINEAR)
                if tile.ndim == 2:
                    tile = tile[:, :, None]
            inputs.append({"image": self.to_input(tile), "height": h, "width": w})
        return inputs

    def _run_tiles(self, image: np.ndarray, report: SliceReport, progress: Optional[TileProgress]
                   ) -> Iterator[Tuple[Tuple[int, int, int, int], _TileDetections]]:
        height, width = image.shape[:2]
        tiles = tile_grid(height, width, self.slice_size, self.overlap)
        report.tiles = len(tiles)
        for start in range(0, len(tiles), self.batch_size):
            batch = tiles[start:start + self.batch_size]
            with torch.no_grad(), one_past_the_cap(self.model) as cap:
                outputs = self.model(self._model_inputs(image, batch))
            for tile, output in zip(batch, outputs):
                instances, cut = cut_to_cap(output["instances"].to("cpu"), cap)
                report.tiles_over_cap += int(cut)
                yield tile, _TileDetections(instances.pred_boxes.tensor, instances.scores, instances.pred_classes)
            if progress is not None:
                progress(min(start + self.batch_size, len(tiles)), len(tiles))

    def __call__(self, image: np.ndarray) -> Instances:
        """Detections on ``image`` (HxWxC uint8 array, e.g. from ``cv2.imread``; a memmap works) as
        ``Instances(pred_boxes, scores, pred_classes)`` in image pixels."""
        return self.predict(image)[0]

    def predict(self, image: np.ndarray, progress: Optional[TileProgress] = None) -> Tuple[Instances, SliceReport]:
        """As ``__call__``, with the :class:`SliceReport` of the image; ``progress(done, total)`` is called after
        each batch of tiles."""
        if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or min(image.shape[:2]) == 0:
            raise ValueError(f"image must be a non-empty HxW or HxWxC array, got "
                             f"{getattr(image, 'shape', type(image))}")
        height, width = image.shape[:2]
        overlap_px = self.slice_size * self.overlap
        report = SliceReport()
        boxes, scores, classes = [], [], []
        for tile, det in self._run_tiles(image, report, progress):
            if det.boxes.numel() == 0:
                continue
            keep = drop_cut_boxes(det.boxes, tile, (height, width), overlap_px)
            boxes.append(shift_boxes(det.boxes[keep], tile[0], tile[1]))
            scores.append(det.scores[keep])
            classes.append(det.classes[keep])
            # Bound memory on huge images: prune the running set when it grows far beyond what is kept.
            if sum(len(s) for s in scores) > 8 * self.max_detections:
                boxes, scores, classes = self._merge(boxes, scores, classes, report)
                boxes, scores, classes = [boxes], [scores], [classes]
        result = Instances((height, width))
        if boxes:
            b, s, c = self._merge(boxes, scores, classes, report)
        else:
            b, s, c = torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)
        result.pred_boxes = Boxes(b)
        result.scores = s
        result.pred_classes = c
        return result, report

    def _merge(self, boxes, scores, classes, report: SliceReport):
        b, s, c = torch.cat(boxes), torch.cat(scores), torch.cat(classes)
        # One past the cap: tells a merge that filled the cap from one that cut it.
        keep = merge_detections(b, s, c, self.nms_thresh, self.max_detections + 1, self.class_agnostic)
        if len(keep) > self.max_detections:
            report.merge_over_cap = True
            keep = keep[:self.max_detections]
        return b[keep], s[keep], c[keep]

    def num_tiles(self, height: int, width: int) -> int:
        return len(tile_grid(height, width, self.slice_size, self.overlap))


class SlicedDetector(torch.nn.Module):
    """A detector in eval mode that scores whole large images: inputs marked ``"sliced": True`` (by
    ``YOLOMapper`` with ``TEST.SLICED.ENABLED``: native-resolution images larger than the input size) go through
    a :class:`SlicedPredictor`; the others (letterboxed small images) go to ``model`` directly. Same contract as
    ``model``: a list of input dicts in, ``[{"instances": Instances}]`` in original-image pixels out, so
    ``inference_on_dataset`` and the AI-TOD evaluator score whole frames after tiling and merging.
    """

    def __init__(self, model: torch.nn.Module, slice_size: int, overlap: float = 0.2, batch_size: int = 4,
                 nms_thresh: float = 0.65, max_detections: int = 3000, class_agnostic: bool = False):
        super().__init__()
        self.model = model
        self.predictor = SlicedPredictor(model, slice_size=slice_size, overlap=overlap, batch_size=batch_size,
                                         nms_thresh=nms_thresh, max_detections=max_detections,
                                         class_agnostic=class_agnostic)

    @classmethod
    def from_config(cls, cfg, model: torch.nn.Module) -> "SlicedDetector":
        sliced = cfg.TEST.SLICED
        return cls(model, slice_size=int(sliced.SLICE_SIZE) or int(cfg.INPUT.YOLO.IMG_SIZE),
                   overlap=float(sliced.OVERLAP), batch_size=int(sliced.BATCH_SIZE),
                   nms_thresh=float(cfg.MODEL.YOLO.NMS_THRESH_TEST), max_detections=int(cfg.TEST.DETECTIONS_PER_IMAGE),
                   class_agnostic=bool(cfg.MODEL.YOLO.CLASS_AGNOSTIC_NMS))

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        outputs: List[Optional[Dict[str, Instances]]] = [None] * len(batched_inputs)
        direct = [i for i, x in enumerate(batched_inputs) if not x.get("sliced", False)]
        if direct:
            for i, out in zip(direct, self.model([batched_inputs[i] for i in direct])):
                outputs[i] = out
        for i, x in enumerate(batched_inputs):
            if outputs[i] is None:
                image = x["image"].permute(1, 2, 0).cpu().numpy()  # [H, W, C] in the model's INPUT.FORMAT
                outputs[i] = {"instances": self.predictor(image)}
        return outputs
