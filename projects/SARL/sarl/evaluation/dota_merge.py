"""Merge DOTA patch detections back to whole images (class-wise NMS) and score them with the AI-TOD protocol.

``tools/prepare_dota.py`` writes each patch's origin (``patch_x0``, ``patch_y0``, in the scaled image), ``scale``
and whole-image id (``source_image_id``) into its image record; a patch box maps back as
``(box + [x0, y0, x0, y0]) / scale``. Overlapping patches (and several scales) detect the same object more than
once: class-wise NMS over all the detections of a whole image removes the duplicates.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torchvision.ops import batched_nms

from detectron2.data import DatasetCatalog

from .evaluator import AITODEvaluator

__all__ = ["patch_boxes_to_source", "merge_patch_predictions", "DOTAMergeEvaluator"]


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
            (the form of ``sarl.evaluation.arrays.instances_to_prediction``).
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


class DOTAMergeEvaluator(AITODEvaluator):
    """Evaluate a model run on DOTA *patches* (e.g. ``dota_v2_val_1024``) on the *whole* images
    (``dota_v2_val_1024_full``): patch detections are merged back with class-wise NMS (the :meth:`_merge` hook),
    then scored with the AI-TOD protocol like :class:`AITODEvaluator`. Returns ``{"bbox": metrics}``.

    The per-image cap (``max_dets_per_image``) applies to the merged whole images, not to the patches.
    """

    def __init__(
        self,
        patches_dataset: str,
        full_dataset: Optional[str] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        nms_threshold: float = 0.5,
        **evaluator_kwargs: Any,
    ):
        """
        Args:
            patches_dataset: the dataset the model runs on (patch dicts with their origin, see the module docstring).
            full_dataset: the whole-image dataset scored (default ``<patches_dataset>_full``).
            nms_threshold: class-wise NMS threshold of the merge.
            evaluator_kwargs: ``engine``, ``max_dets``, ``max_dets_per_image``, ... of :class:`AITODEvaluator`.
        """
        super().__init__(patches_dataset, distributed, output_dir, **evaluator_kwargs)
        self._gt_dataset = full_dataset or f"{patches_dataset}_full"
        self._nms_threshold = nms_threshold

    def _prepare(self, prediction: Dict[str, Any]) -> Dict[str, Any]:
        return prediction  # capped after the merge, per whole image

    def _merge(self, predictions: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        patch_records = {d["image_id"]: d for d in DatasetCatalog.get(self._dataset_name)}
        return merge_patch_predictions(predictions, patch_records, self._nms_threshold, self._max_dets_per_image)
