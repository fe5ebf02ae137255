"""Prediction on whole images: a trained detector, its config and its class names behind one call.

    from sarl.inference import Predictor

    predictor = Predictor.from_config("configs/aitod/sarl_yolox_aitod.yaml", "output/model_final.pth")
    result = predictor.predict("scene.png")                      # "auto": tiled when much larger than IMG_SIZE
    result = predictor.predict("big_scene.tif", slice_size=800)  # 800 px tiles at native resolution
    result = predictor.predict(frame, slice_size=0)              # letterboxed to INPUT.YOLO.IMG_SIZE
    result.boxes, result.scores, result.class_ids, result.class_names, result.tiles, result.truncated

Which images are tiled is :mod:`sarl.inference.slice_policy`'s rule; tiled ones go through
:class:`~sarl.inference.sliced.SlicedPredictor`, the others are letterboxed to ``INPUT.YOLO.IMG_SIZE`` as in
evaluation. Boxes come back in the original image's pixels either way. Class names: the checkpoint's (stored at
training time) unless given (:mod:`sarl.inference.class_names`). Detections cut by the per-image cap
(``TEST.DETECTIONS_PER_IMAGE``) are reported: ``Prediction.truncated`` and a warning.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from detectron2.data.catalog import Metadata
from detectron2.structures import Instances

from .class_names import resolve_class_names
from .slice_policy import SlicePolicy, check_batch_size, check_overlap, check_slice_size, parse_slice_size
from .sliced import SlicedPredictor, TileProgress, cut_to_cap, one_past_the_cap

logger = logging.getLogger(__name__)

__all__ = ["Prediction", "Predictor", "build_inference_model", "load_inference_model", "read_image"]

SliceSize = Union[int, str, None]  # "auto" / None: automatic; 0: never tile; N: tile images larger than N px


def load_inference_model(cfg) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """The detector of ``cfg`` in eval mode with ``MODEL.WEIGHTS`` loaded (EMA weights when the checkpoint has them;
    none: as initialised), BatchNorm folded into the convolutions when ``TEST.FUSE_CONV_BN``, and what else the
    checkpoint holds (``class_names``...; {} without weights)."""
    from detectron2.modeling import build_model

    from .. import modeling  # noqa: F401  (registers the YOLO meta-architectures, backbones and heads)
    from ..checkpoint import load_inference_weights
    from ..modeling.fuse import fuse_conv_bn

    model = build_model(cfg)
    checkpoint = load_inference_weights(model, cfg.MODEL.WEIGHTS) if cfg.MODEL.WEIGHTS else {}
    model.eval()
    if cfg.TEST.FUSE_CONV_BN:
        fuse_conv_bn(model)
    return model, checkpoint


def build_inference_model(cfg) -> torch.nn.Module:
    """The model of :func:`load_inference_model` alone."""
    return load_inference_model(cfg)[0]


def read_image(path: str) -> Optional[np.ndarray]:
    """HxWx3 uint8 BGR array of the image at ``path``; None when it cannot be read (missing, corrupt)."""
    return cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)


@dataclass
class Prediction:
    """Detections on one image, best first, in the original image's pixels.

    Attributes:
        boxes: [N, 4] float32, XYXY.
        scores: [N] float32.
        class_ids: [N] int64, contiguous ids (0 .. NUM_CLASSES - 1).
        class_names: N names, one per detection (the id as text when the class has no name).
        instances: the same detections as detectron2 ``Instances`` (``pred_boxes``, ``scores``, ``pred_classes``),
            for detectron2's ``Visualizer`` and evaluators.
        tiles: tiles the image was cut into; 0 when it was predicted whole (letterboxed).
        truncated: the per-image cap (``TEST.DETECTIONS_PER_IMAGE``) cut detections: there were more.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_names: List[str]
    instances: Instances
    tiles: int = 0
    truncated: bool = False

    @classmethod
    def from_instances(cls, instances: Instances, names: Sequence[str] = (), tiles: int = 0,
                       truncated: bool = False) -> "Prediction":
        instances = instances.to("cpu")
        class_ids = instances.pred_classes.numpy().astype(np.int64)
        return cls(boxes=instances.pred_boxes.tensor.numpy(), scores=instances.scores.numpy(), class_ids=class_ids,
                   class_names=[names[c] if 0 <= c < len(names) else str(c) for c in class_ids.tolist()],
                   instances=instances, tiles=tiles, truncated=truncated)

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, score: float) -> "Prediction":
        """The detections scoring above ``score``."""
        keep = self.scores > score
        names = [n for n, k in zip(self.class_names, keep.tolist()) if k]
        return Prediction(self.boxes[keep], self.scores[keep], self.class_ids[keep], names,
                          self.instances[torch.from_numpy(keep)], self.tiles, self.truncated)

    def to_coco_results(self, image_id, contiguous_to_dataset_id: Optional[Dict[int, int]] = None) -> List[Dict]:
        """COCO detection results (``bbox`` XYWH, plus ``category_name``). ``category_id``: the dataset's id from
        ``contiguous_to_dataset_id`` when given (classes it lacks are left out), else the contiguous id."""
        out = []
        for box, score, cls, name in zip(self.boxes, self.scores.tolist(), self.class_ids.tolist(), self.class_names):
            if contiguous_to_dataset_id is not None and cls not in contiguous_to_dataset_id:
                continue
            category = contiguous_to_dataset_id[cls] if contiguous_to_dataset_id is not None else cls
            out.append({"image_id": image_id, "category_id": int(category), "category_name": name,
                        "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                        "score": float(score)})
        return out


class Predictor:
    """Whole-image or sliced prediction with a built model (eval mode, weights loaded).

    Args:
        model: a ``YOLODetector`` (or anything with its inference contract).
        img_size: letterbox size for whole images (``INPUT.YOLO.IMG_SIZE``).
        input_format: ``INPUT.FORMAT`` ("BGR" or "RGB"); images are given (and read) as BGR.
        slice_size: "auto" (default), 0 (never tile) or a tile size; see :mod:`sarl.inference.slice_policy`.
            ``predict`` can override it.
        overlap: overlap of adjacent tiles, a fraction of the tile, in [0, 1).
        batch_size: tiles per model call.
        max_detections: detections kept per image (``TEST.DETECTIONS_PER_IMAGE``).
        nms_thresh: IoU threshold of the merge of the tiles (``MODEL.YOLO.NMS_THRESH_TEST``).
        class_names: names of the contiguous class ids.
        metadata: detectron2 metadata of the classes (drawing colours), when its ``thing_classes`` are these names.
        eval_slice_size: the tile size of a config evaluated sliced (``TEST.SLICED``; 0: it is not), which "auto"
            follows.
    Raises :class:`~sarl.inference.slice_policy.SliceSettingError` (a ValueError) for bad slice settings.
    """

    def __init__(self, model: torch.nn.Module, img_size: int, input_format: str = "BGR", slice_size: SliceSize = "auto",
                 overlap: float = 0.2, batch_size: int = 4, max_detections: int = 3000, nms_thresh: float = 0.65,
                 class_names: Sequence[str] = (), metadata=None, eval_slice_size: int = 0):
        check_overlap(overlap)
        check_batch_size(batch_size)
        self.model = model
        self.img_size = int(img_size)
        self.rgb = input_format == "RGB"
        self.size_divisibility = int(getattr(model, "size_divisibility", 1) or 1)
        self.eval_slice_size = int(eval_slice_size)
        self.overlap = float(overlap)
        self.batch_size = int(batch_size)
        self.max_detections = int(max_detections)
        self.nms_thresh = float(nms_thresh)
        self.class_names = list(class_names)
        if metadata is None or list(metadata.get("thing_classes", []) or []) != self.class_names:
            metadata = Metadata(name="sarl_predict", thing_classes=self.class_names)
        self.metadata = metadata
        self.policy = self._policy(slice_size)  # checks the slice size now, not at the first image
        self._sliced: Dict[int, SlicedPredictor] = {}

    @classmethod
    def from_config(cls, config_file: str, weights: Optional[str] = None, opts: Optional[Sequence[str]] = None,
                    device: Optional[str] = None, slice_size: SliceSize = "auto", overlap: Optional[float] = None,
                    batch_size: Optional[int] = None, metadata_name: Optional[str] = None,
                    class_names: Optional[Sequence[str]] = None) -> "Predictor":
        """Build the model of ``config_file`` (with ``KEY VALUE`` ``opts``), load ``weights`` (default
        ``MODEL.WEIGHTS``; none: an untrained model, with a warning) and put it in eval mode on ``device``
        (default ``MODEL.DEVICE``). ``overlap``/``batch_size`` default to ``TEST.SLICED``'s. Class names:
        ``class_names``, else ``metadata_name``'s, else the checkpoint's, else the config datasets' (logged). Config
        errors raise :class:`sarl.config.UserError`."""
        from ..config import load_config

        opts = list(opts or [])
        if weights is not None:
            opts += ["MODEL.WEIGHTS", weights]
        if device is not None:
            opts += ["MODEL.DEVICE", device]
        return cls.from_cfg(load_config(config_file, opts), slice_size=slice_size, overlap=overlap,
                            batch_size=batch_size, metadata_name=metadata_name, class_names=class_names)

    @classmethod
    def from_cfg(cls, cfg, model: Optional[torch.nn.Module] = None, slice_size: SliceSize = "auto",
                 overlap: Optional[float] = None, batch_size: Optional[int] = None,
                 metadata_name: Optional[str] = None, class_names: Optional[Sequence[str]] = None) -> "Predictor":
        """As :meth:`from_config`, from a loaded config; ``model`` (already built, weights loaded) is used as is."""
        from detectron2.data import MetadataCatalog

        from ..checkpoint import checkpoint_class_names

        checkpoint: Dict[str, Any] = {}
        weights = ""  # the checkpoint the model was loaded from here
        if model is None:
            if not cfg.MODEL.WEIGHTS:
                logger.warning("MODEL.WEIGHTS is empty: predicting with an untrained model")
            model, checkpoint = load_inference_model(cfg)
            weights = cfg.MODEL.WEIGHTS
        model.eval()
        datasets = [d for d in list(cfg.DATASETS.TRAIN)[:1] + list(cfg.DATASETS.TEST)[:1] if d]
        resolved = resolve_class_names(cfg.MODEL.YOLO.NUM_CLASSES, class_names, metadata_name,
                                       checkpoint_class_names(checkpoint), weights, datasets)
        logger.info(f"class names ({resolved.source}): {', '.join(resolved.names) or 'none, ids shown'}")
        source_dataset = metadata_name or (datasets[0] if datasets else "")
        sliced = cfg.TEST.SLICED
        return cls(model, cfg.INPUT.YOLO.IMG_SIZE, cfg.INPUT.FORMAT, slice_size,
                   float(sliced.OVERLAP) if overlap is None else overlap,
                   int(sliced.BATCH_SIZE) if batch_size is None else batch_size,
                   cfg.TEST.DETECTIONS_PER_IMAGE, cfg.MODEL.YOLO.NMS_THRESH_TEST, class_names=resolved.names,
                   metadata=MetadataCatalog.get(source_dataset) if source_dataset else None,
                   eval_slice_size=(int(sliced.SLICE_SIZE) or int(cfg.INPUT.YOLO.IMG_SIZE)) if sliced.ENABLED else 0)

    def _policy(self, slice_size: SliceSize) -> SlicePolicy:
        size = parse_slice_size(slice_size)
        check_slice_size(size, self.size_divisibility)
        return SlicePolicy(size, self.img_size, self.eval_slice_size)

    def _sliced_predictor(self, slice_size: int) -> SlicedPredictor:
        if slice_size not in self._sliced:
            self._sliced[slice_size] = SlicedPredictor(self.model, slice_size, self.overlap, self.batch_size,
                                                       nms_thresh=self.nms_thresh, max_detections=self.max_detections)
        return self._sliced[slice_size]

    @torch.no_grad()
    def _predict(self, image_bgr: np.ndarray, policy: SlicePolicy, progress: Optional[TileProgress]
                 ) -> Tuple[Instances, int, str]:
        """Detections (CPU, original pixels), the number of tiles (0: whole) and, when the per-image cap cut
        detections, where ("" when it did not)."""
        image = image_bgr[:, :, ::-1] if self.rgb else image_bgr
        height, width = image.shape[:2]
        tile_size = policy.tile_size(height, width)
        if tile_size > 0:
            instances, report = self._sliced_predictor(tile_size).predict(image, progress)
            cut = (f"more than {self.max_detections} after merging {report.tiles} tiles" if report.merge_over_cap
                   else f"more than the cap in {report.tiles_over_cap} of {report.tiles} tiles"
                   if report.tiles_over_cap else "")
            return instances, report.tiles, cut
        scale = self.img_size / max(height, width)
        resized = cv2.resize(np.ascontiguousarray(image), (max(1, round(width * scale)), max(1, round(height * scale))),
                             interpolation=cv2.INTER_LINEAR) if scale != 1 else image
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        # letterbox (scale, pad_x, pad_y): the model maps its boxes back to the original pixels.
        inputs = [{"image": tensor, "height": height, "width": width, "letterbox": (scale, 0.0, 0.0)}]
        with one_past_the_cap(self.model) as cap:
            instances = self.model(inputs)[0]["instances"].to("cpu")
        cap = cap if cap is not None else self.max_detections
        instances, truncated = cut_to_cap(instances, cap)
        return instances, 0, f"more than {cap} on the whole image" if truncated else ""

    def predict_instances(self, image_bgr: np.ndarray, slice_size: SliceSize = None) -> Instances:
        """Detections on an HxWx3 uint8 BGR image as ``Instances`` (on the CPU, original pixels)."""
        policy = self.policy if slice_size is None else self._policy(slice_size)
        return self._predict(image_bgr, policy, None)[0]

    __call__ = predict_instances

    def predict(self, image: Union[str, os.PathLike, np.ndarray], slice_size: SliceSize = None,
                progress: Optional[TileProgress] = None, name: Optional[str] = None) -> Prediction:
        """Detections on ``image`` (a path, or an HxWx3 uint8 BGR array as ``cv2.imread`` gives).

        ``slice_size``: None keeps the predictor's; "auto", 0 (never tile) or N (tile images larger than N px).
        ``progress(tiles_done, tiles_total)`` is called as the tiles of a tiled image are run. ``name`` names the
        image in the warning about a cut by the per-image cap. Raises ValueError when the image cannot be read.
        """
        if not isinstance(image, np.ndarray):
            path, image = image, read_image(image)
            if image is None:
                raise ValueError(f"cannot read image {path}")
            name = name or os.fspath(path)
        policy = self.policy if slice_size is None else self._policy(slice_size)
        instances, tiles, cut = self._predict(image, policy, progress)
        if cut:
            logger.warning(f"{name or 'image %dx%d' % image.shape[1::-1]}: the per-image cap "
                           f"TEST.DETECTIONS_PER_IMAGE={self.max_detections} cut detections ({cut}); the best were "
                           f"kept: raise it to keep more, or raise MODEL.YOLO.SCORE_THRESH_TEST to keep fewer")
        return Prediction.from_instances(instances, self.class_names, tiles, bool(cut))
