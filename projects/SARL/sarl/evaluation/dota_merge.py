"""Merge DOTA patch detections back to whole images (class-wise NMS) and score them with the AI-TOD protocol.

``tools/prepare_dota.py`` writes each patch's origin (``patch_x0``, ``patch_y0``, in the scaled image), ``scale``
and whole-image id (``source_image_id``) into its image record; a patch box maps back as
``(box + [x0, y0, x0, y0]) / scale``. Overlapping patches (and several scales) detect the same object more than
once: class-wise NMS over all the detections of a whole image removes the duplicates.
"""
from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torchvision.ops import batched_nms

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

logger = logging.getLogger(__name__)


def patch_boxes_to_source(boxes_xyxy: np.ndarray, patch_record: Mapping[str, Any]) -> np.ndarray:
    """Boxes [N, 4] XYXY in patch pixels -> whole-image pixels, clipped to the whole image."""
    offset = np.array([patch_record["patch_x0"], patch_record["patch_y0"]] * 2, np.float64)
    boxes = (np.asarray(boxes_xyxy, np.float64).reshape(-1, 4) + offset) / float(patch_record["scale"])
    width, height = patch_record["source_width"], patch_record["source_height"]
    return np.clip(boxes, 0, [width, height, width, height])


def merge_patch_predictions(
    predictions: Sequence[Mapping[str, Any]],
    patch_records: Mapping[Any, Mapping[str, Any]],
    iou_threshold: float = 0.5,
    max_dets_per_image: int = 3000,
) -> List[Dict[str, Any]]:
    """Merge per-patch predictions into per-whole-image predictions.

    Args:
        predictions: ``{"image_id" (patch id), "boxes" [N, 4] XYXY patch px, "scores" [N], "classes" [N]}`` each
            (the form of ``sarl.evaluation.aitod_evaluator.instances_to_prediction``).
        patch_records: patch image id -> its dataset dict (needs ``source_image_id``, ``patch_x0``, ``patch_y0``,
            ``scale``, ``source_width``, ``source_height``).
        iou_threshold: class-wise NMS threshold on the whole image.
        max_dets_per_image: highest-scoring detections kept per whole image.

    Returns:
        one ``{"image_id" (whole-image id), "boxes", "scores", "classes"}`` per whole image that had a patch.
    """
    grouped: Dict[Any, List[tuple]] = defaultdict(list)
    for prediction in predictions:
        record = patch_records.get(prediction["image_id"])
        if record is None:
            raise KeyError(f"prediction for image_id {prediction['image_id']!r}: not a patch of this dataset")
        boxes = patch_boxes_to_source(prediction["boxes"], record)
        grouped[record["source_image_id"]].append(
            (boxes, np.asarray(prediction["scores"], np.float64).reshape(-1),
             np.asarray(prediction["classes"], np.int64).reshape(-1))
        )
    merged = []
    for image_id, parts in grouped.items():
        boxes = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        scores = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        classes = torch.from_numpy(np.concatenate([p[2] for p in parts]))
        keep = batched_nms(boxes, scores, classes, iou_threshold)[:max_dets_per_image]  # sorted by score
        merged.append({"image_id": image_id, "boxes": boxes[keep].numpy(), "scores": scores[keep].numpy(),
                       "classes": classes[keep].numpy()})
    return merged


class DOTAMergeEvaluator(DatasetEvaluator):
    """Evaluate a model run on DOTA *patches* (e.g. ``dota_v2_val_1024``) on the *whole* images
    (``dota_v2_val_1024_full``): patch detections are merged back with class-wise NMS, then scored with the AI-TOD
    protocol (``sarl.evaluation.aitod_evaluator.evaluate_detections``). Returns ``{"bbox": metrics}`` like
    :class:`AITODEvaluator`.
    """

    def __init__(
        self,
        patches_dataset: str,
        full_dataset: Optional[str] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        nms_threshold: float = 0.5,
        max_dets_per_image: int = 3000,
        **evaluate_kwargs: Any,
    ):
        self._patches_dataset = patches_dataset
        self._full_dataset = full_dataset or f"{patches_dataset}_full"
        self._distributed = distributed
        self._output_dir = output_dir
        self._nms_threshold = nms_threshold
        self._max_dets_per_image = max_dets_per_image
        self._evaluate_kwargs = evaluate_kwargs
        self._predictions: List[Dict[str, Any]] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        from .aitod_evaluator import instances_to_prediction

        for model_input, output in zip(inputs, outputs):
            if "instances" in output:
                self._predictions.append(instances_to_prediction(model_input["image_id"], output["instances"].to("cpu")))

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        from .aitod_evaluator import evaluate_detections, format_aitod_table

        predictions = self._predictions
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        patch_records = {d["image_id"]: d for d in DatasetCatalog.get(self._patches_dataset)}
        merged = merge_patch_predictions(predictions, patch_records, self._nms_threshold, self._max_dets_per_image)
        class_names = list(MetadataCatalog.get(self._full_dataset).thing_classes)
        metrics = evaluate_detections(
            DatasetCatalog.get(self._full_dataset), merged, class_names,
            max_dets_per_image=self._max_dets_per_image, output_dir=self._output_dir, **self._evaluate_kwargs,
        )
        logger.info(f"[DOTAMergeEvaluator] {self._full_dataset} (merged from {self._patches_dataset})\n"
                    + format_aitod_table(metrics))
        return {"bbox": dict(metrics)}
