"""Prediction on whole images: a trained detector, its config and its class names behind one call.

    from sarl.inference import Predictor

    predictor = Predictor.from_config("configs/aitod/sarl_yolox_aitod.yaml", "output/model_final.pth")
    result = predictor.predict("scene.png")                      # letterboxed to INPUT.YOLO.IMG_SIZE
    result = predictor.predict("big_scene.tif", slice_size=800)  # 800 px tiles at native resolution
    result.boxes, result.scores, result.class_ids, result.class_names

Images no larger than the slice size (or every image, without slicing) are letterboxed to ``INPUT.YOLO.IMG_SIZE``
as in evaluation; larger ones go through :class:`~sarl.inference.sliced.SlicedPredictor`. Boxes come back in
the original image's pixels either way.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from detectron2.structures import Instances

from .sliced import SlicedPredictor

logger = logging.getLogger(__name__)

__all__ = ["Prediction", "Predictor", "build_inference_model", "read_image"]


def build_inference_model(cfg) -> torch.nn.Module:
    """The detector of ``cfg`` with ``MODEL.WEIGHTS`` loaded (EMA weights when the checkpoint has them; none: as
    initialised), in eval mode."""
    from detectron2.modeling import build_model

    from .. import modeling  # noqa: F401  (registers the YOLO meta-architectures, backbones and heads)
    from ..checkpoint import load_inference_weights

    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_inference_weights(model, cfg.MODEL.WEIGHTS)
    return model.eval()


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
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_names: List[str]
    instances: Instances

    @classmethod
    def from_instances(cls, instances: Instances, names: Sequence[str] = ()) -> "Prediction":
        instances = instances.to("cpu")
        class_ids = instances.pred_classes.numpy().astype(np.int64)
        return cls(boxes=instances.pred_boxes.tensor.numpy(), scores=instances.scores.numpy(), class_ids=class_ids,
                   class_names=[names[c] if 0 <= c < len(names) else str(c) for c in class_ids.tolist()],
                   instances=instances)

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, score: float) -> "Prediction":
        """The detections scoring above ``score``."""
        keep = self.scores > score
        names = [n for n, k in zip(self.class_names, keep.tolist()) if k]
        return Prediction(self.boxes[keep], self.scores[keep], self.class_ids[keep], names,
                          self.instances[torch.from_numpy(keep)])

    def to_coco_results(self, image_id, contiguous_to_dataset_id: Optional[Dict[int, int]] = None) -> List[Dict]:
        """COCO detection results (``bbox`` XYWH); ``category_id`` mapped back to the dataset's ids when given."""
        out = []
        for box, score, cls in zip(self.boxes, self.scores.tolist(), self.class_ids.tolist()):
            category = contiguous_to_dataset_id.get(cls, cls) if contiguous_to_dataset_id else cls
            out.append({"image_id": image_id, "category_id": int(category),
                        "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                        "score": float(score)})
        return out


class Predictor:
    """Whole-image or sliced prediction with a built model (eval mode, weights loaded).

    Args:
        model: a ``YOLODetector`` (or anything with its inference contract).
        img_size: letterbox size for whole images (``INPUT.YOLO.IMG_SIZE``).
        input_format: ``INPUT.FORMAT`` ("BGR" or "RGB"); images are given (and read) as BGR.
        slice_size: tile images larger than this many px (0: never tile); ``predict`` can override it.
        overlap: overlap of adjacent tiles, a fraction of the tile.
        batch_size: tiles per model call.
        max_detections: detections kept per tiled image (``TEST.DETECTIONS_PER_IMAGE``).
        nms_thresh: IoU threshold of the merge of the tiles (``MODEL.YOLO.NMS_THRESH_TEST``).
        class_names: names of the contiguous class ids (e.g. the dataset's ``thing_classes``).
        metadata: detectron2 metadata of the classes (drawing, dataset ids), when known.
    """

    def __init__(self, model: torch.nn.Module, img_size: int, input_format: str = "BGR", slice_size: int = 0,
                 overlap: float = 0.2, batch_size: int = 4, max_detections: int = 3000, nms_thresh: float = 0.65,
                 class_names: Sequence[str] = (), metadata=None):
        self.model = model
        self.img_size = int(img_size)
        self.rgb = input_format == "RGB"
        self.slice_size = int(slice_size)
        self.overlap = float(overlap)
        self.batch_size = int(batch_size)
        self.max_detections = int(max_detections)
        self.nms_thresh = float(nms_thresh)
        self.class_names = list(class_names)
        self.metadata = metadata
        self._sliced: Dict[int, SlicedPredictor] = {}
        if self.slice_size > 0:
            self._sliced_predictor(self.slice_size)  # checks slice size and overlap now, not at the first image

    @classmethod
    def from_config(cls, config_file: str, weights: Optional[str] = None, opts: Optional[Sequence[str]] = None,
                    device: Optional[str] = None, slice_size: int = 0, overlap: float = 0.2, batch_size: int = 4,
                    metadata_name: Optional[str] = None) -> "Predictor":
        """Build the model of ``config_file`` (with ``KEY VALUE`` ``opts``), load ``weights`` (default
        ``MODEL.WEIGHTS``; none: an untrained model, with a warning) and put it in eval mode on ``device``
        (default ``MODEL.DEVICE``). Class names come from the metadata of ``metadata_name`` (default
        ``DATASETS.TEST[0]``). Config errors raise :class:`sarl.config.UserError`."""
        from ..config import load_config

        opts = list(opts or [])
        if weights is not None:
            opts += ["MODEL.WEIGHTS", weights]
        if device is not None:
            opts += ["MODEL.DEVICE", device]
        return cls.from_cfg(load_config(config_file, opts), slice_size=slice_size, overlap=overlap,
                            batch_size=batch_size, metadata_name=metadata_name)

    @classmethod
    def from_cfg(cls, cfg, model: Optional[torch.nn.Module] = None, slice_size: int = 0, overlap: float = 0.2,
                 batch_size: int = 4, metadata_name: Optional[str] = None) -> "Predictor":
        """As :meth:`from_config`, from a loaded config; ``model`` (already built, weights loaded) is used as is."""
        import sarl.data  # noqa: F401  (registers the datasets, so their metadata has the class names)
        from detectron2.data import MetadataCatalog

        if model is None:
            if not cfg.MODEL.WEIGHTS:
                logger.warning("MODEL.WEIGHTS is empty: predicting with an untrained model")
            model = build_inference_model(cfg)
        model.eval()
        name = metadata_name or (cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "")
        metadata = MetadataCatalog.get(name or "__sarl_predict__")
        return cls(model, cfg.INPUT.YOLO.IMG_SIZE, cfg.INPUT.FORMAT, slice_size, overlap, batch_size,
                   cfg.TEST.DETECTIONS_PER_IMAGE, cfg.MODEL.YOLO.NMS_THRESH_TEST,
                   class_names=metadata.get("thing_classes", []), metadata=metadata)

    def _sliced_predictor(self, slice_size: int) -> SlicedPredictor:
        if slice_size not in self._sliced:
            self._sliced[slice_size] = SlicedPredictor(self.model, slice_size, self.overlap, self.batch_size,
                                                       nms_thresh=self.nms_thresh, max_detections=self.max_detections)
        return self._sliced[slice_size]

    @torch.no_grad()
    def predict_instances(self, image_bgr: np.ndarray, slice_size: Optional[int] = None) -> Instances:
        """Detections on an HxWx3 uint8 BGR image as ``Instances`` (on the CPU, original pixels)."""
        slice_size = self.slice_size if slice_size is None else int(slice_size)
        image = image_bgr[:, :, ::-1] if self.rgb else image_bgr
        height, width = image.shape[:2]
        if slice_size > 0 and max(height, width) > slice_size:
            return self._sliced_predictor(slice_size)(image)
        scale = self.img_size / max(height, width)
        resized = cv2.resize(np.ascontiguousarray(image), (max(1, round(width * scale)), max(1, round(height * scale))),
                             interpolation=cv2.INTER_LINEAR) if scale != 1 else image
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        # letterbox (scale, pad_x, pad_y): the model maps its boxes back to the original pixels.
        inputs = [{"image": tensor, "height": height, "width": width, "letterbox": (scale, 0.0, 0.0)}]
        return self.model(inputs)[0]["instances"].to("cpu")

    __call__ = predict_instances

    def predict(self, image: Union[str, os.PathLike, np.ndarray], slice_size: Optional[int] = None) -> Prediction:
        """Detections on ``image`` (a path, or an HxWx3 uint8 BGR array as ``cv2.imread`` gives).

        ``slice_size``: None keeps the predictor's; 0 never tiles; N tiles images larger than N px.
        Raises ValueError when the image cannot be read.
        """
        if not isinstance(image, np.ndarray):
            path, image = image, read_image(image)
            if image is None:
                raise ValueError(f"cannot read image {path}")
        return Prediction.from_instances(self.predict_instances(image, slice_size), self.class_names)
