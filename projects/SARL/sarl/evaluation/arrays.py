"""Ground truth and detections -> :class:`EvalArrays`, the columns every engine scores.

Ground truth comes from the dataset dicts (any reader), not from a COCO json, through
:func:`sarl.data.annotations.annotation_arrays`:
    - crowd (``iscrowd`` / ``ignore``) and ``difficult`` annotations become COCO "crowd" ground truth: a detection
      matched to one is neither a true nor a false positive, and missing it costs nothing;
    - VisDrone ``ignore_regions`` ([[x1, y1, x2, y2], ...] per image): a detection, or a ground-truth box, whose area
      is covered by the *union* of the image's ignore regions for at least ``ignore_ioa_thresh`` (default 0.5, as the
      VisDrone toolkit's rule) is removed before scoring (counted in the returned counters).
Predictions are checked (one entry per image, finite, matching lengths, class ids in range) and capped to the
top-scoring ``max_dets_per_image`` per image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch

from sarl.data.annotations import annotation_arrays, ignore_regions

from .protocol import DEFAULT_MAX_DETS_PER_IMAGE

__all__ = ["instances_to_prediction", "cap_per_image", "ignored_fraction", "EvalArrays", "build_eval_arrays",
           "coco_dicts_from_arrays"]


# ----------------------------------------------------------------------------------------------------------------
# Predictions: one canonical form, per image numpy arrays
# ----------------------------------------------------------------------------------------------------------------
def _to_numpy(values: Any, dtype: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def instances_to_prediction(image_id: Any, instances: Any) -> Dict[str, Any]:
    """detectron2 ``Instances`` (``pred_boxes`` XYXY in original image pixels, ``scores``, ``pred_classes``) ->
    ``{"image_id", "boxes" [N, 4] float64 XYXY, "scores" [N], "classes" [N] int64}``."""
    boxes = instances.pred_boxes.tensor if hasattr(instances.pred_boxes, "tensor") else instances.pred_boxes
    return {
        "image_id": image_id,
        "boxes": _to_numpy(boxes, np.float64).reshape(-1, 4),
        "scores": _to_numpy(instances.scores, np.float64).reshape(-1),
        "classes": _to_numpy(instances.pred_classes, np.int64).reshape(-1),
    }


def _normalize_prediction(prediction: Mapping[str, Any], index: int) -> Dict[str, Any]:
    """Accept ``{"image_id", "instances": Instances}`` or ``{"image_id", "boxes", "scores", "classes"}``."""
    if "image_id" not in prediction:
        raise ValueError(f"predictions[{index}] has no 'image_id'")
    if "instances" in prediction:
        out = instances_to_prediction(prediction["image_id"], prediction["instances"])
    else:
        missing = [k for k in ("boxes", "scores", "classes") if k not in prediction]
        if missing:
            raise ValueError(
                f"predictions[{index}] needs 'instances' or 'boxes', 'scores', 'classes' (missing {missing})"
            )
        out = {
            "image_id": prediction["image_id"],
            "boxes": _to_numpy(prediction["boxes"], np.float64).reshape(-1, 4),
            "scores": _to_numpy(prediction["scores"], np.float64).reshape(-1),
            "classes": _to_numpy(prediction["classes"], np.int64).reshape(-1),
        }
    n = len(out["boxes"])
    if len(out["scores"]) != n or len(out["classes"]) != n:
        raise ValueError(
            f"predictions[{index}] (image {out['image_id']!r}): {n} boxes but {len(out['scores'])} scores and "
            f"{len(out['classes'])} classes"
        )
    if n and not (np.isfinite(out["boxes"]).all() and np.isfinite(out["scores"]).all()):
        raise ValueError(f"predictions[{index}] (image {out['image_id']!r}): boxes or scores are not finite")
    return out


def cap_per_image(prediction: Dict[str, Any], max_dets_per_image: int) -> Dict[str, Any]:
    """Keep the ``max_dets_per_image`` highest-scoring detections of one image (all classes together)."""
    if max_dets_per_image <= 0 or len(prediction["scores"]) <= max_dets_per_image:
        return prediction
    # Stable sort on -score: equal scores keep their input order, so the cut is deterministic.
    keep = np.argsort(-prediction["scores"], kind="stable")[:max_dets_per_image]
    keep.sort()
    return {**prediction, "boxes": prediction["boxes"][keep], "scores": prediction["scores"][keep],
            "classes": prediction["classes"][keep]}


# ----------------------------------------------------------------------------------------------------------------
# Ignore regions
# ----------------------------------------------------------------------------------------------------------------
def ignored_fraction(boxes: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Fraction of each box's area covered by the union of ``regions`` (exact, by coordinate compression).

    Args:
        boxes: [N, 4] XYXY.
        regions: [R, 4] XYXY.
    Returns:
        [N] in [0, 1]; 0 for boxes of zero area.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    regions = np.asarray(regions, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0 or len(regions) == 0:
        return np.zeros(len(boxes))
    # The region edges cut the plane into cells; each cell is either fully inside the union or fully outside.
    xs = np.unique(regions[:, [0, 2]])
    ys = np.unique(regions[:, [1, 3]])
    cx = (xs[:-1] + xs[1:]) / 2
    cy = (ys[:-1] + ys[1:]) / 2
    in_x = (regions[:, None, 0] <= cx[None]) & (cx[None] <= regions[:, None, 2])  # [R, nx]
    in_y = (regions[:, None, 1] <= cy[None]) & (cy[None] <= regions[:, None, 3])  # [R, ny]
    occupied = (in_x[:, :, None] & in_y[:, None, :]).any(axis=0).astype(np.float64)  # [nx, ny]
    # Overlap of each box with each cell column / row (separable).
    ox = np.clip(np.minimum(boxes[:, None, 2], xs[None, 1:]) - np.maximum(boxes[:, None, 0], xs[None, :-1]), 0, None)
    oy = np.clip(np.minimum(boxes[:, None, 3], ys[None, 1:]) - np.maximum(boxes[:, None, 1], ys[None, :-1]), 0, None)
    covered = np.einsum("ni,ij,nj->n", ox, occupied, oy)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.where(area > 0, covered / np.maximum(area, 1e-12), 0.0)


# ----------------------------------------------------------------------------------------------------------------
# Columns for the engines
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class EvalArrays:
    """Ground truth and detections of one evaluation as columns, after validation, ignore regions and the
    per-image cap: the form every engine scores (the COCO dicts of :func:`coco_dicts_from_arrays` are built
    from it). Images are 0-based positions in the ground-truth dicts, categories 0-based contiguous ids.

    Shapes: ``gt_*`` [G] (``gt_boxes`` [G, 4] XYWH), ``dt_*`` [D] (``dt_boxes`` [D, 4] XYWH); float64 / int64 / bool.
    ``gt_area`` is the dataset's area when it has one (official jsons), else the box area; ``dt_area`` = w * h.
    ``gt_crowd`` is true for crowd and difficult ground truth (both ignored by the scoring).
    """

    image_sizes: List[Tuple[int, int]]
    num_classes: int
    gt_image: np.ndarray
    gt_category: np.ndarray
    gt_boxes: np.ndarray
    gt_area: np.ndarray
    gt_crowd: np.ndarray
    dt_image: np.ndarray
    dt_category: np.ndarray
    dt_boxes: np.ndarray
    dt_score: np.ndarray
    dt_area: np.ndarray


def _concat(parts: List[np.ndarray], dtype: Any, width: int = 0) -> np.ndarray:
    if parts:
        return np.concatenate(parts).astype(dtype, copy=False)
    return np.zeros((0, width) if width else (0,), dtype=dtype)


def build_eval_arrays(
    gt_dicts: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    num_classes: int,
    *,
    max_dets_per_image: int = DEFAULT_MAX_DETS_PER_IMAGE,
    ignore_ioa_thresh: float = 0.5,
) -> Tuple[EvalArrays, Dict[str, int]]:
    """Validated columns of the ground truth and the detections (:class:`EvalArrays`), plus counters
    (``gt_ignored_by_region``, ``dt_ignored_by_region``, ``dt_capped``, ``gt_crowd``).

    Predictions for images that are not in ``gt_dicts`` are an error; images without predictions are valid.
    """
    image_index: Dict[Any, int] = {}
    sizes: List[Tuple[int, int]] = []
    regions_by_image: List[np.ndarray] = []
    gt = {key: [] for key in ("image", "category", "boxes", "area", "crowd")}
    counts = {"gt_ignored_by_region": 0, "dt_ignored_by_region": 0, "dt_capped": 0, "gt_crowd": 0}
    for record in gt_dicts:
        if record["image_id"] in image_index:
            raise ValueError(f"duplicate image_id {record['image_id']!r} in the ground-truth dicts")
        index = len(sizes)
        image_index[record["image_id"]] = index
        sizes.append((int(record["height"]), int(record["width"])))
        where = f"image {record['image_id']!r}"
        regions = ignore_regions(record, where=where)
        regions_by_image.append(regions)
        objects = annotation_arrays(record, where=where)
        if not len(objects):
            continue
        boxes = objects.boxes_xywh
        in_region = (ignored_fraction(objects.boxes_xyxy, regions) >= ignore_ioa_thresh if len(regions)
                     else np.zeros(len(boxes), bool))
        counts["gt_ignored_by_region"] += int(in_region.sum())
        categories = objects.classes
        bad = np.flatnonzero((categories < 0) | (categories >= num_classes))
        if len(bad):
            raise ValueError(f"image {record['image_id']!r}: ground-truth category_id {int(categories[bad[0]])} is "
                             f"outside [0, {num_classes})")
        crowd = objects.is_crowd | objects.is_difficult
        area = np.array([float(a.get("area", box[2] * box[3])) for a, box in zip(record["annotations"], boxes)])
        keep = ~in_region
        counts["gt_crowd"] += int(crowd[keep].sum())
        gt["image"].append(np.full(int(keep.sum()), index, dtype=np.int64))
        gt["category"].append(categories[keep])
        gt["boxes"].append(boxes[keep])
        gt["area"].append(area[keep])
        gt["crowd"].append(crowd[keep])

    dt = {key: [] for key in ("image", "category", "boxes", "score", "area")}
    for index, raw in enumerate(predictions):
        prediction = _normalize_prediction(raw, index)
        image = image_index.get(prediction["image_id"])
        if image is None:
            raise ValueError(f"predictions[{index}]: image_id {prediction['image_id']!r} is not in the ground truth")
        before = len(prediction["scores"])
        prediction = cap_per_image(prediction, max_dets_per_image)
        counts["dt_capped"] += before - len(prediction["scores"])
        boxes, scores, classes = prediction["boxes"], prediction["scores"], prediction["classes"]
        if len(classes) and (classes.min() < 0 or classes.max() >= num_classes):
            raise ValueError(
                f"predictions[{index}] (image {prediction['image_id']!r}): class ids must lie in [0, {num_classes})"
            )
        regions = regions_by_image[image]
        if len(regions) and len(boxes):
            keep = ignored_fraction(boxes, regions) < ignore_ioa_thresh
            counts["dt_ignored_by_region"] += int((~keep).sum())
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        wh = boxes[:, 2:] - boxes[:, :2]
        dt["image"].append(np.full(len(boxes), image, dtype=np.int64))
        dt["category"].append(classes)
        dt["boxes"].append(np.concatenate([boxes[:, :2], wh], axis=1))
        dt["score"].append(scores)
        dt["area"].append(wh[:, 0] * wh[:, 1])

    arrays = EvalArrays(
        image_sizes=sizes, num_classes=num_classes,
        gt_image=_concat(gt["image"], np.int64), gt_category=_concat(gt["category"], np.int64),
        gt_boxes=_concat(gt["boxes"], np.float64, 4), gt_area=_concat(gt["area"], np.float64),
        gt_crowd=_concat(gt["crowd"], bool),
        dt_image=_concat(dt["image"], np.int64), dt_category=_concat(dt["category"], np.int64),
        dt_boxes=_concat(dt["boxes"], np.float64, 4), dt_score=_concat(dt["score"], np.float64),
        dt_area=_concat(dt["area"], np.float64),
    )
    return arrays, counts


def coco_dicts_from_arrays(arrays: EvalArrays) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Ground truth and detections as two COCO datasets (dicts) for pycocotools / faster-coco-eval.

    Image ids are 1..N in ground-truth order (faster_coco_eval wants ints; detectron2 ids may be strings); category
    ids are ``contiguous id + 1``; annotation ids start at 1 (0 means "unmatched" inside the engines).
    """
    categories = [{"id": k + 1, "name": str(k)} for k in range(arrays.num_classes)]
    images = [{"id": i + 1, "height": h, "width": w} for i, (h, w) in enumerate(arrays.image_sizes)]
    gt_anns = [
        {"id": n + 1, "image_id": image + 1, "category_id": category + 1, "bbox": box, "area": area,
         "iscrowd": int(crowd)}
        for n, (image, category, box, area, crowd) in enumerate(zip(
            arrays.gt_image.tolist(), arrays.gt_category.tolist(), arrays.gt_boxes.tolist(),
            arrays.gt_area.tolist(), arrays.gt_crowd.tolist()))
    ]
    dt_anns = [
        {"id": n + 1, "image_id": image + 1, "category_id": category + 1, "bbox": box, "score": score,
         "area": area, "iscrowd": 0}
        for n, (image, category, box, score, area) in enumerate(zip(
            arrays.dt_image.tolist(), arrays.dt_category.tolist(), arrays.dt_boxes.tolist(),
            arrays.dt_score.tolist(), arrays.dt_area.tolist()))
    ]
    gt = {"images": images, "categories": categories, "annotations": gt_anns}
    dt = {"images": images, "categories": categories, "annotations": dt_anns}
    return gt, dt
