"""Pictures of detections: boxes with class and score on the image, optionally over the ground truth."""
from __future__ import annotations

import logging
import os
from typing import List, Sequence

import cv2
import numpy as np
from detectron2.structures import Instances

from .predictor import Predictor, read_image

logger = logging.getLogger(__name__)

__all__ = ["draw", "draw_boxes", "draw_ground_truth", "draw_dataset_predictions"]

# detectron2's Visualizer draws on a matplotlib canvas: several GB for a 10000 px image. Larger images get plain
# OpenCV rectangles.
VISUALIZER_MAX_SIDE = 4096


def draw(image_bgr: np.ndarray, instances: Instances, metadata) -> np.ndarray:
    """Boxes with class and score on a copy of ``image_bgr`` (HxWx3 uint8 BGR): detectron2's Visualizer, or plain
    OpenCV rectangles for huge images."""
    if max(image_bgr.shape[:2]) <= VISUALIZER_MAX_SIDE:
        from detectron2.utils.visualizer import Visualizer

        return Visualizer(image_bgr[:, :, ::-1], metadata, scale=1.0).draw_instance_predictions(instances) \
            .get_image()[:, :, ::-1]
    return draw_boxes(image_bgr, instances.pred_boxes.tensor.numpy(), instances.scores.numpy(),
                      instances.pred_classes.numpy(), getattr(metadata, "thing_classes", None) or [])


def draw_boxes(image_bgr: np.ndarray, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray,
               names: Sequence[str]) -> np.ndarray:
    """Green rectangles labelled ``name score`` on a copy of ``image_bgr`` (HxWx3 uint8 BGR), with plain OpenCV:
    fast enough for every frame of a video and any image size. ``boxes`` [N, 4] XYXY, ``scores`` [N],
    ``class_ids`` [N] (the id as text when ``names`` has no name for it)."""
    canvas = image_bgr.copy()
    for box, score, cls in zip(np.asarray(boxes).tolist(), np.asarray(scores).tolist(),
                               np.asarray(class_ids).tolist()):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), (0, 255, 0), 2)
        label = f"{names[cls] if 0 <= cls < len(names) else cls} {score:.2f}"
        cv2.putText(canvas, label, (x0, max(y0 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
    return canvas


def draw_ground_truth(image_bgr: np.ndarray, record: dict) -> np.ndarray:
    """The annotations of a dataset dict (``bbox`` XYWH) as thin white rectangles on a copy of the image."""
    canvas = image_bgr.copy()
    for ann in record.get("annotations", []):
        x, y, w, h = (int(round(v)) for v in ann["bbox"])
        cv2.rectangle(canvas, (x, y), (x + w, y + h), (255, 255, 255), 1)
    return canvas


def draw_dataset_predictions(predictor: Predictor, dataset_name: str, out_dir: str, num_images: int, score: float,
                             upscale: int = 2) -> List[str]:
    """Predictions (green) over the ground truth (thin white) of the first ``num_images`` images of a registered
    dataset, written as ``out_dir/<name>.jpg``; returns the paths. ``upscale``: small images with tiny objects are
    enlarged so boxes and labels are legible."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    os.makedirs(out_dir, exist_ok=True)
    metadata = MetadataCatalog.get(dataset_name)
    paths = []
    for record in DatasetCatalog.get(dataset_name)[:num_images]:
        image = read_image(record["file_name"])
        if image is None:
            logger.warning(f"cannot read {record['file_name']}: skipped")
            continue
        instances = predictor.predict_instances(image)
        vis = draw(draw_ground_truth(image, record), instances[instances.scores > score], metadata)
        vis = cv2.resize(vis, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_NEAREST)
        path = os.path.join(out_dir, os.path.splitext(os.path.basename(record["file_name"]))[0] + ".jpg")
        cv2.imwrite(path, vis)
        paths.append(path)
    return paths
