"""``sarl.ops.coco_eval_bbox``: COCOeval (bbox) evaluate + accumulate on columns of boxes, in C++.

The kernel (``csrc/eval/coco_eval_cpu.cpp``) reproduces pycocotools' ``COCOeval`` (iouType "bbox", useCats 1) to the
bit; pycocotools is its reference (tests/test_evaluator.py). ``sarl.evaluation`` builds the columns from detectron2
dataset dicts and predictions; this function is the plain-tensor entry point, importable without detectron2.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

from ._extension import _LOADED

__all__ = ["coco_eval_bbox"]


def coco_eval_bbox(
    gt_boxes: torch.Tensor, gt_image: torch.Tensor, gt_category: torch.Tensor, gt_area: torch.Tensor,
    gt_crowd: torch.Tensor, dt_boxes: torch.Tensor, dt_image: torch.Tensor, dt_category: torch.Tensor,
    dt_score: torch.Tensor, dt_area: torch.Tensor, num_images: int, num_categories: int,
    iou_thresholds: Sequence[float], recall_thresholds: Sequence[float],
    area_ranges: Sequence[Tuple[float, float]], max_dets: Sequence[int],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Precision, recall and scores arrays of COCO box evaluation (CPU tensors).

    Args:
        gt_boxes: [G, 4] float64 XYWH; gt_image, gt_category: [G] int64, 0-based; gt_area: [G] float64 (the area
            the ranges test); gt_crowd: [G] bool (a crowd is ignored and may match many detections).
        dt_boxes: [D, 4] float64 XYWH; dt_image, dt_category: [D] int64; dt_score, dt_area: [D] float64.
        iou_thresholds (T <= 16), recall_thresholds (R, increasing), area_ranges (A pairs), max_dets (M, ascending).
    Returns:
        precision [T, R, K, A, M], recall [T, K, A, M], scores [T, R, K, A, M] (float64; -1 where a (category,
        area) cell has no ground truth that counts), as ``COCOeval.eval``.
    """
    if not _LOADED or not hasattr(torch.ops.sarl, "coco_eval_bbox"):
        raise RuntimeError("sarl.ops.coco_eval_bbox needs the compiled extension sarl._C (make build)")
    flat_ranges = [float(v) for lo_hi in area_ranges for v in lo_hi]
    return torch.ops.sarl.coco_eval_bbox(
        gt_boxes, gt_image, gt_category, gt_area, gt_crowd, dt_boxes, dt_image, dt_category, dt_score, dt_area,
        int(num_images), int(num_categories), [float(v) for v in iou_thresholds],
        [float(v) for v in recall_thresholds], flat_ranges, [int(m) for m in max_dets])


def _register_fake() -> None:
    @torch.library.register_fake("sarl::coco_eval_bbox")
    def _coco_eval_bbox_fake(gt_boxes, gt_image, gt_category, gt_area, gt_crowd, dt_boxes, dt_image, dt_category,
                             dt_score, dt_area, num_images, num_categories, iou_thresholds, recall_thresholds,
                             area_ranges, max_dets):
        t, r, a, m = len(iou_thresholds), len(recall_thresholds), len(area_ranges) // 2, len(max_dets)
        full = (t, r, num_categories, a, m)
        return (gt_boxes.new_empty(full), gt_boxes.new_empty((t, num_categories, a, m)), gt_boxes.new_empty(full))


if _LOADED and hasattr(torch.ops.sarl, "coco_eval_bbox"):
    _register_fake()
