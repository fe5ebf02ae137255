"""AI-TOD evaluation protocol (REFERENCE.md section 4) on detectron2 dataset dicts.

Protocol:
    COCO-style AP over IoU 0.50:0.05:0.95; area ranges
        all [0, 1e10], vt (very tiny) [0, 8^2], t (tiny) [8^2, 16^2], s (small) [16^2, 32^2], m (medium) [32^2, 1e10];
    maxDets [100, 300, 1500]; AP uses maxDets 1500 (as in COCO, the cap counts per image and category);
    at most 3000 detections per image (top scores, over all classes) are kept before scoring.

Ground truth comes from the dataset dicts (any reader), not from a COCO json:
    - ``iscrowd``, ``difficult`` or ``ignore`` annotations become COCO "crowd" ground truth: a detection matched to
      one is neither a true nor a false positive, and missing it costs nothing;
    - VisDrone ``ignore_regions`` ([[x1, y1, x2, y2], ...] per image): a detection, or a ground-truth box, whose area
      is covered by the *union* of the image's ignore regions for at least ``ignore_ioa_thresh`` (default 0.5, as the
      VisDrone toolkit's rule) is removed before scoring (counted in the log).

Metrics are read from ``eval["precision"]`` / ``eval["recall"]`` (``summarize()`` is hard-wired to COCO's area
labels) and reported in % : AP, AP50, AP75, AP_vt, AP_t, AP_s, AP_m, AR@100, AR@300, AR@1500, AR_vt/t/s/m (maxDets
1500) and ``AP-<class>``. A metric with no ground truth to score is NaN (detectron2's convention).

Engines: ``sarl`` (default: ``torch.ops.sarl.coco_eval_bbox``, this project's C++ kernel over columns of boxes,
multi-threaded), ``faster_coco_eval`` (C++ over COCO dicts) or ``pycocotools``; all get the same inputs
(:class:`EvalArrays`) and parameters, and give the same precision arrays (tests/test_evaluator.py: ``sarl`` equals
pycocotools to the bit, faster_coco_eval to 1e-6).
"""
from __future__ import annotations

import contextlib
import copy
import gc
import io
import itertools
import json
import logging
import multiprocessing
import os
import time
from collections import Counter, OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table

logger = logging.getLogger(__name__)

# Label -> [min area, max area) in px^2; "all" must come first (COCO convention).
AITOD_AREA_RANGES: "OrderedDict[str, Tuple[float, float]]" = OrderedDict(
    [
        ("all", (0.0, 1e10)),
        ("vt", (0.0, 8.0**2)),
        ("t", (8.0**2, 16.0**2)),
        ("s", (16.0**2, 32.0**2)),
        ("m", (32.0**2, 1e10)),
    ]
)
AITOD_MAX_DETS: Tuple[int, ...] = (100, 300, 1500)
ENGINES = ("sarl", "faster_coco_eval", "pycocotools")


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


def _ignore_regions_of(record: Mapping[str, Any]) -> np.ndarray:
    regions = record.get("ignore_regions")
    regions = np.asarray([] if regions is None else regions, dtype=np.float64).reshape(-1, 4)
    if len(regions) and not (regions[:, 2:] >= regions[:, :2]).all():
        raise ValueError(
            f"image {record.get('image_id')!r}: an ignore region is not [x1, y1, x2, y2] with x2 >= x1, y2 >= y1"
        )
    return regions


# ----------------------------------------------------------------------------------------------------------------
# COCO-format inputs for the engines
# ----------------------------------------------------------------------------------------------------------------
def _gt_boxes_xywh(record: Mapping[str, Any]) -> np.ndarray:
    """[N, 4] XYWH_ABS boxes of a record's annotations (vectorised for the common XYWH_ABS mode)."""
    annotations = record["annotations"]
    try:
        raw = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(len(annotations), 4)
    except (ValueError, TypeError, KeyError):
        raise ValueError(f"image {record.get('image_id')!r}: an annotation has no 4-number 'bbox'") from None
    modes = [a.get("bbox_mode", BoxMode.XYWH_ABS) for a in annotations]
    if any(mode != BoxMode.XYWH_ABS for mode in modes):
        raw = np.array([BoxMode.convert(list(b), m, BoxMode.XYWH_ABS) for b, m in zip(raw, modes)],
                       dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(raw).all() or (raw[:, 2:] < 0).any():
        raise ValueError(f"image {record.get('image_id')!r}: a ground-truth box is not finite or has a negative size")
    return raw


@dataclass
class EvalArrays:
    """Ground truth and detections of one evaluation as columns, after validation, ignore regions and the
    per-image cap: the form every engine scores (the COCO dicts of :func:`coco_dicts_from_arrays` are built
    from it). Images are 0-based positions in the ground-truth dicts, categories 0-based contiguous ids.

    Shapes: ``gt_*`` [G] (``gt_boxes`` [G, 4] XYWH), ``dt_*`` [D] (``dt_boxes`` [D, 4] XYWH); float64 / int64 / bool.
    ``gt_area`` is the dataset's area when it has one (official jsons), else the box area; ``dt_area`` = w * h.
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
    max_dets_per_image: int = 3000,
    ignore_ioa_thresh: float = 0.5,
) -> Tuple[EvalArrays, Dict[str, int]]:
    """Validated columns of the ground truth and the detections (:class:`EvalArrays`), plus counters.

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
        regions = _ignore_regions_of(record)
        regions_by_image.append(regions)
        annotations = record.get("annotations", [])
        if not annotations:
            continue
        boxes = _gt_boxes_xywh(record)
        xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
        in_region = ignored_fraction(xyxy, regions) >= ignore_ioa_thresh if len(regions) else np.zeros(len(boxes), bool)
        counts["gt_ignored_by_region"] += int(in_region.sum())
        categories = np.array([int(a["category_id"]) for a in annotations], dtype=np.int64)
        bad = np.flatnonzero((categories < 0) | (categories >= num_classes))
        if len(bad):
            raise ValueError(f"image {record['image_id']!r}: ground-truth category_id {int(categories[bad[0]])} is "
                             f"outside [0, {num_classes})")
        crowd = np.array([bool(a.get("iscrowd", 0) or a.get("difficult", 0) or a.get("ignore", 0))
                          for a in annotations])
        area = np.array([float(a.get("area", box[2] * box[3])) for a, box in zip(annotations, boxes)])
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


def build_coco_inputs(
    gt_dicts: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    num_classes: int,
    *,
    max_dets_per_image: int = 3000,
    ignore_ioa_thresh: float = 0.5,
) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, int]]:
    """:func:`build_eval_arrays` then :func:`coco_dicts_from_arrays`: ``(gt, dt, counts)``."""
    arrays, counts = build_eval_arrays(gt_dicts, predictions, num_classes, max_dets_per_image=max_dets_per_image,
                                       ignore_ioa_thresh=ignore_ioa_thresh)
    gt, dt = coco_dicts_from_arrays(arrays)
    return gt, dt, counts


def coco_params(max_dets: Sequence[int] = AITOD_MAX_DETS,
                area_ranges: Mapping[str, Tuple[float, float]] = AITOD_AREA_RANGES) -> Dict[str, Any]:
    """COCOeval's parameters for the protocol (the thresholds as pycocotools builds them, to the bit)."""
    return {
        "iouThrs": np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True).tolist(),
        "recThrs": np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True).tolist(),
        "maxDets": sorted(int(m) for m in max_dets),
        "areaRng": [[float(lo), float(hi)] for lo, hi in area_ranges.values()],
        "areaRngLbl": [str(label) for label in area_ranges],
    }


def run_native_engine(
    arrays: EvalArrays,
    *,
    max_dets: Sequence[int] = AITOD_MAX_DETS,
    area_ranges: Mapping[str, Tuple[float, float]] = AITOD_AREA_RANGES,
) -> Dict[str, Any]:
    """COCOeval evaluate + accumulate in this project's C++ kernel (:func:`sarl.ops.coco_eval_bbox`, threads over
    images and cells); same arrays as pycocotools to the bit (tests/test_evaluator.py). Layout as
    :func:`run_coco_engine`."""
    params = coco_params(max_dets, area_ranges)  # sarl.ops.coco_eval_bbox raises when sarl._C is not built

    def t(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values))

    from sarl.ops import coco_eval_bbox

    precision, recall, scores = coco_eval_bbox(
        t(arrays.gt_boxes), t(arrays.gt_image), t(arrays.gt_category), t(arrays.gt_area), t(arrays.gt_crowd),
        t(arrays.dt_boxes), t(arrays.dt_image), t(arrays.dt_category), t(arrays.dt_score), t(arrays.dt_area),
        len(arrays.image_sizes), arrays.num_classes, params["iouThrs"], params["recThrs"], params["areaRng"],
        params["maxDets"])
    params["catIds"] = list(range(1, arrays.num_classes + 1))
    return {"precision": precision.numpy(), "recall": recall.numpy(), "scores": scores.numpy(), "params": params}


def native_engine_available() -> bool:
    """True when ``sarl._C`` (with ``coco_eval_bbox``) is loaded."""
    from sarl.ops._extension import extension_available  # loads sarl._C (registers torch.ops.sarl.*)

    return extension_available() and hasattr(torch.ops.sarl, "coco_eval_bbox")


_LEAN_CLASS: Any = None


def _lean_faster_evaluator_class() -> Any:
    """``COCOeval_faster`` with a lean ``_prepare`` for axis-aligned boxes, or ``None`` when the installed
    faster-coco-eval lacks the internals it relies on (then the stock class is used).

    The stock ``_prepare`` spends about half of the whole evaluation in Python (annotation look-ups through the
    COCO index, RLE bookkeeping that boxes do not need). This one hands every annotation straight to the C++
    datasets, with the same ``ignore = iscrowd`` rule and the same non-empty (image, category) pairs, so the
    accumulated arrays are unchanged (tests compare them with pycocotools).
    """
    global _LEAN_CLASS
    if _LEAN_CLASS is not None:
        return _LEAN_CLASS or None
    try:
        from faster_coco_eval.core.faster_eval_api import COCOeval_faster
        import faster_coco_eval.faster_eval_api_cpp as cpp

        if not (hasattr(cpp.Dataset, "append_ref") and hasattr(cpp.Dataset, "clean")
                and hasattr(COCOeval_faster, "_prepare")):
            raise ImportError("faster_coco_eval internals changed")
    except ImportError:
        _LEAN_CLASS = False
        return None

    class _LeanCOCOevalFaster(COCOeval_faster):
        def __init__(self, gt_annotations: List[Dict[str, Any]], dt_annotations: List[Dict[str, Any]], *args, **kwargs):
            self._gt_annotations = gt_annotations
            self._dt_annotations = dt_annotations
            super().__init__(*args, **kwargs)

        def _prepare(self) -> None:
            p = self.params
            if p.iouType != "bbox" or p.compute_rle or p.compute_boundary or self.lvis_style:
                raise RuntimeError("the lean evaluator handles bbox evaluation only")
            self.gt_dataset.clean()
            self.dt_dataset.clean()
            image_ids, category_ids = set(p.imgIds), set(p.catIds)
            gt_pairs, dt_pairs = set(), set()
            for dataset, annotations, pairs, is_gt in (
                (self.gt_dataset, self._gt_annotations, gt_pairs, True),
                (self.dt_dataset, self._dt_annotations, dt_pairs, False),
            ):
                append = dataset.append_ref
                for annotation in annotations:
                    pair = (annotation["image_id"], annotation["category_id"])
                    if pair[0] not in image_ids or pair[1] not in category_ids:
                        continue
                    if is_gt:
                        annotation["ignore"] = int(annotation.get("iscrowd", 0))
                    append(pair[0], pair[1], annotation)
                    pairs.add(pair)
            self._nonempty_iou_pairs = gt_pairs & dt_pairs

    _LEAN_CLASS = _LeanCOCOevalFaster
    return _LEAN_CLASS


@contextlib.contextmanager
def _gc_paused():
    """Building hundreds of thousands of small dicts triggers the cyclic GC over and over (it rescans every
    container each time): pausing it makes input building ~5x faster. Nothing here creates cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def run_coco_engine(
    gt: Dict[str, Any],
    dt: Dict[str, Any],
    *,
    engine: str = "faster_coco_eval",
    max_dets: Sequence[int] = AITOD_MAX_DETS,
    area_ranges: Mapping[str, Tuple[float, float]] = AITOD_AREA_RANGES,
) -> Dict[str, Any]:
    """Evaluate + accumulate with ``engine`` on the COCO dicts of :func:`build_coco_inputs`.

    Returns ``{"precision": [T, R, K, A, M], "recall": [T, K, A, M], "scores": [T, R, K, A, M], "params": {...}}``
    (arrays of -1 where a (class, area) cell has no ground truth).
    """
    if engine == "faster_coco_eval":
        from faster_coco_eval import COCO

        lean = _lean_faster_evaluator_class()
        if lean is not None:
            # Index only images and categories; the lean _prepare feeds the annotations to the C++ side directly.
            def make(dataset: Dict[str, Any]):
                return COCO({"images": dataset["images"], "categories": dataset["categories"], "annotations": []})

            def COCOeval(coco_gt, coco_dt, **kwargs):  # noqa: N802 (mirrors the engines' class name)
                return lean(gt["annotations"], dt["annotations"], coco_gt, coco_dt, **kwargs)
        else:
            from faster_coco_eval.core.faster_eval_api import COCOeval_faster as COCOeval

            def make(dataset: Dict[str, Any]):
                return COCO(copy.copy(dataset))

        evaluator_kwargs = {"print_function": logger.debug}
    elif engine == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        def make(dataset: Dict[str, Any]):
            coco = COCO()
            coco.dataset = copy.copy(dataset)
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            return coco

        evaluator_kwargs = {}
    else:
        raise ValueError(f"unknown evaluation engine {engine!r}; expected one of {ENGINES}")

    coco_gt, coco_dt = make(gt), make(dt)
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox", **evaluator_kwargs)
    params = evaluator.params
    params.imgIds = [image["id"] for image in gt["images"]]
    params.catIds = [category["id"] for category in gt["categories"]]
    params.maxDets = sorted(int(m) for m in max_dets)
    params.areaRng = [list(r) for r in area_ranges.values()]
    params.areaRngLbl = list(area_ranges.keys())
    params.useCats = 1
    # pycocotools prints its progress: keep it out of the training log.
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    result = {
        "precision": np.asarray(evaluator.eval["precision"], dtype=np.float64),
        "recall": np.asarray(evaluator.eval["recall"], dtype=np.float64),
        "scores": np.asarray(evaluator.eval["scores"], dtype=np.float64),
        "params": {
            "iouThrs": np.asarray(params.iouThrs).tolist(),
            "recThrs": np.asarray(params.recThrs).tolist(),
            "maxDets": [int(m) for m in params.maxDets],
            "areaRng": [[float(lo), float(hi)] for lo, hi in params.areaRng],
            "areaRngLbl": [str(label) for label in params.areaRngLbl],
            "catIds": [int(c) for c in params.catIds],
        },
    }
    return result


# (gt, dt) handed to forked workers without pickling them (see run_coco_engine_parallel).
_FORK_SHARED: Optional[Tuple[Dict[str, Any], Dict[str, Any]]] = None


def _subset_by_categories(dataset: Dict[str, Any], category_ids: Iterable[int]) -> Dict[str, Any]:
    keep = set(category_ids)
    return {
        "images": dataset["images"],
        "categories": [c for c in dataset["categories"] if c["id"] in keep],
        "annotations": [a for a in dataset["annotations"] if a["category_id"] in keep],
    }


def _run_category_chunk(category_ids: List[int], engine: str, max_dets: Sequence[int],
                        area_ranges: Mapping[str, Tuple[float, float]]) -> Dict[str, Any]:
    gt, dt = _FORK_SHARED
    with _gc_paused():
        return run_coco_engine(_subset_by_categories(gt, category_ids), _subset_by_categories(dt, category_ids),
                               engine=engine, max_dets=max_dets, area_ranges=area_ranges)


def run_coco_engine_parallel(
    gt: Dict[str, Any],
    dt: Dict[str, Any],
    *,
    workers: int,
    engine: str = "faster_coco_eval",
    max_dets: Sequence[int] = AITOD_MAX_DETS,
    area_ranges: Mapping[str, Tuple[float, float]] = AITOD_AREA_RANGES,
) -> Dict[str, Any]:
    """:func:`run_coco_engine` split by category over ``workers`` forked processes.

    COCO evaluation with ``useCats`` is independent per category (matching, sorting and accumulation never mix
    classes), so each worker scores a group of categories and the arrays are concatenated along the class axis:
    the result equals the single-process one (tests check it). Falls back to one process when ``workers <= 1``,
    with fewer than 2 categories, or where ``fork`` is unavailable.
    """
    global _FORK_SHARED
    category_ids = [c["id"] for c in gt["categories"]]
    if workers <= 1 or len(category_ids) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return run_coco_engine(gt, dt, engine=engine, max_dets=max_dets, area_ranges=area_ranges)
    # Balance the groups by their number of detections (the work is roughly proportional to it).
    load = Counter(a["category_id"] for a in dt["annotations"])
    groups: List[List[int]] = [[] for _ in range(min(workers, len(category_ids)))]
    totals = [0] * len(groups)
    for category in sorted(category_ids, key=lambda c: -load[c]):
        index = int(np.argmin(totals))
        groups[index].append(category)
        totals[index] += load[category] + 1
    groups = [[c for c in category_ids if c in set(group)] for group in groups if group]  # keep json order
    _FORK_SHARED = (gt, dt)
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=len(groups), mp_context=context) as pool:
            parts = list(pool.map(_run_category_chunk, groups, [engine] * len(groups),
                                  [tuple(max_dets)] * len(groups), [area_ranges] * len(groups)))
    finally:
        _FORK_SHARED = None
    concatenated_ids = [c for group in groups for c in group]
    order = [concatenated_ids.index(c) for c in category_ids]
    result = {
        "precision": np.concatenate([p["precision"] for p in parts], axis=2)[:, :, order],
        "recall": np.concatenate([p["recall"] for p in parts], axis=1)[:, order],
        "scores": np.concatenate([p["scores"] for p in parts], axis=2)[:, :, order],
        "params": dict(parts[0]["params"], catIds=[int(c) for c in category_ids]),
    }
    return result


def _empty_eval(num_classes: int, max_dets: Sequence[int]) -> Dict[str, Any]:
    """The arrays of an evaluation with nothing to score (all -1), in the engines' layout."""
    params = dict(coco_params(max_dets), catIds=list(range(1, num_classes + 1)))
    shape = (len(params["iouThrs"]), len(params["recThrs"]), num_classes, len(params["areaRng"]),
             len(params["maxDets"]))
    return {"precision": -np.ones(shape), "recall": -np.ones((shape[0],) + shape[2:]), "scores": -np.ones(shape),
            "params": params}


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) * 100.0 if valid.size else float("nan")


def summarize_aitod(coco_eval: Mapping[str, Any], class_names: Sequence[str]) -> "OrderedDict[str, float]":
    """AI-TOD metrics (in %) from the accumulated arrays of :func:`run_coco_engine`."""
    precision, recall = coco_eval["precision"], coco_eval["recall"]
    params = coco_eval["params"]
    iou_thrs = np.asarray(params["iouThrs"])
    labels = list(params["areaRngLbl"])
    max_dets = list(params["maxDets"])
    last = len(max_dets) - 1  # AP uses the largest maxDets (1500)
    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
    t75 = int(np.argmin(np.abs(iou_thrs - 0.75)))
    a_all = labels.index("all")
    results: "OrderedDict[str, float]" = OrderedDict()
    results["AP"] = _mean_valid(precision[:, :, :, a_all, last])
    results["AP50"] = _mean_valid(precision[t50, :, :, a_all, last])
    results["AP75"] = _mean_valid(precision[t75, :, :, a_all, last])
    for a, label in enumerate(labels):
        if label != "all":
            results[f"AP_{label}"] = _mean_valid(precision[:, :, :, a, last])
    for m, max_det in enumerate(max_dets):
        results[f"AR@{max_det}"] = _mean_valid(recall[:, :, a_all, m])
    for a, label in enumerate(labels):
        if label != "all":
            results[f"AR_{label}@{max_dets[last]}"] = _mean_valid(recall[:, :, a, last])
    for k, name in enumerate(class_names):
        results[f"AP-{name}"] = _mean_valid(precision[:, :, k, a_all, last])
    return results


def dump_eval_arrays(coco_eval: Mapping[str, Any], metrics: Mapping[str, float], class_names: Sequence[str],
                     output_dir: str, prefix: str = "aitod_eval") -> List[str]:
    """Write ``<prefix>.npz`` (precision, recall, scores arrays) and ``<prefix>.json`` (metrics, params, class
    names and the precision array as nested lists) for plots. Returns the paths written."""
    os.makedirs(output_dir, exist_ok=True)
    npz_path = os.path.join(output_dir, f"{prefix}.npz")
    np.savez_compressed(npz_path, precision=coco_eval["precision"], recall=coco_eval["recall"],
                        scores=coco_eval["scores"], class_names=np.asarray(list(class_names)),
                        area_labels=np.asarray(coco_eval["params"]["areaRngLbl"]),
                        max_dets=np.asarray(coco_eval["params"]["maxDets"]),
                        iou_thrs=np.asarray(coco_eval["params"]["iouThrs"]),
                        rec_thrs=np.asarray(coco_eval["params"]["recThrs"]))
    json_path = os.path.join(output_dir, f"{prefix}.json")
    with open(json_path, "w") as f:
        json.dump({
            "metrics": {k: (None if np.isnan(v) else v) for k, v in metrics.items()},
            "class_names": list(class_names),
            "params": coco_eval["params"],
            "precision_shape": "[iou T, recall R, class K, area A, maxDets M]; -1 = no ground truth",
            "precision": coco_eval["precision"].tolist(),
        }, f)
    return [npz_path, json_path]


_WARNED_NO_NATIVE = False


def evaluate_detections(
    gt_dicts: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    *,
    engine: str = "sarl",
    max_dets: Sequence[int] = AITOD_MAX_DETS,
    max_dets_per_image: int = 3000,
    ignore_ioa_thresh: float = 0.5,
    output_dir: Optional[str] = None,
    return_arrays: bool = False,
    workers: int = 1,
) -> Any:
    """Score detections with the AI-TOD protocol, without a model or a DatasetCatalog entry.

    Args:
        gt_dicts: detectron2 dataset dicts (``image_id``, ``height``, ``width``, ``annotations`` with ``bbox``,
            ``bbox_mode``, ``category_id`` 0-based, optional ``iscrowd``/``difficult``/``ignore``/``area``; optional
            ``ignore_regions`` [[x1, y1, x2, y2], ...]). Every image in it is scored.
        predictions: one entry per image: ``{"image_id", "instances": Instances}`` (``pred_boxes`` XYXY in original
            pixels, ``scores``, ``pred_classes``) or ``{"image_id", "boxes" [N, 4] XYXY, "scores" [N], "classes" [N]}``.
        class_names: names in contiguous-id order (``AP-<name>`` keys).
        engine: "sarl" (this project's C++ kernel, multi-threaded; falls back to faster_coco_eval with a warning
            when ``sarl._C`` is not built), "faster_coco_eval" or "pycocotools". All three give the same arrays.
        max_dets: maxDets of the protocol; AP uses the largest.
        max_dets_per_image: keep this many top-scoring detections per image before scoring (<= 0: all).
        ignore_ioa_thresh: drop detections / GT whose area lies in ignore regions for at least this fraction.
        output_dir: when set, write the raw arrays there (:func:`dump_eval_arrays`).
        return_arrays: also return the engine's arrays (``(metrics, coco_eval)``).
        workers: faster_coco_eval / pycocotools: score groups of categories in this many forked processes (same
            result; for multi-core hosts). The "sarl" engine uses torch's threads instead.

    Returns:
        ordered dict of metrics in % (AP, AP50, AP75, AP_vt, AP_t, AP_s, AP_m, AR@..., AR_<area>@..., AP-<class>).
    """
    start = time.perf_counter()
    if engine not in ENGINES:
        raise ValueError(f"unknown evaluation engine {engine!r}; expected one of {ENGINES}")
    if engine == "sarl" and not native_engine_available():
        global _WARNED_NO_NATIVE
        if not _WARNED_NO_NATIVE:
            logger.warning("AI-TOD eval: sarl._C is not built, or was built from sources without coco_eval_bbox "
                           "(rebuild: make build); using the faster_coco_eval engine (same results)")
            _WARNED_NO_NATIVE = True
        engine = "faster_coco_eval"
    arrays, counts = build_eval_arrays(gt_dicts, predictions, len(class_names),
                                       max_dets_per_image=max_dets_per_image, ignore_ioa_thresh=ignore_ioa_thresh)
    if counts["dt_capped"]:
        logger.info(f"AI-TOD eval: dropped {counts['dt_capped']} detections beyond {max_dets_per_image} per image")
    if counts["dt_ignored_by_region"] or counts["gt_ignored_by_region"]:
        logger.info(
            f"AI-TOD eval: removed {counts['dt_ignored_by_region']} detections and {counts['gt_ignored_by_region']} "
            f"ground-truth boxes lying in ignore regions (covered >= {ignore_ioa_thresh})"
        )
    if not arrays.image_sizes:
        logger.warning("AI-TOD eval: no images in the ground truth; every metric is NaN")
        coco_eval = _empty_eval(len(class_names), max_dets)
    elif engine == "sarl":
        coco_eval = run_native_engine(arrays, max_dets=max_dets)
    else:
        with _gc_paused():
            gt, dt = coco_dicts_from_arrays(arrays)
            coco_eval = run_coco_engine_parallel(gt, dt, workers=workers, engine=engine, max_dets=max_dets)
    metrics = summarize_aitod(coco_eval, class_names)
    logger.info(
        f"AI-TOD eval ({engine}): {len(arrays.image_sizes)} images, {len(arrays.gt_image)} GT, "
        f"{len(arrays.dt_image)} detections, {time.perf_counter() - start:.2f} s"
    )
    if output_dir:
        dump_eval_arrays(coco_eval, metrics, class_names, output_dir)
    if return_arrays:
        return metrics, coco_eval
    return metrics


def format_aitod_table(metrics: Mapping[str, float]) -> str:
    """Two small tables: the summary metrics and the per-class AP."""
    summary = {k: v for k, v in metrics.items() if not k.startswith("AP-")}
    per_class = {k[3:]: v for k, v in metrics.items() if k.startswith("AP-")}
    text = "AI-TOD evaluation results (%):\n" + create_small_table(summary)
    if per_class:
        text += "\nPer-class AP (%):\n" + create_small_table(per_class)
    return text


class AITODEvaluator(DatasetEvaluator):
    """detectron2 ``DatasetEvaluator`` for the AI-TOD protocol (see the module docstring).

    Works for every registered dataset whose dicts follow the ``sarl.data`` contract. Under DDP the per-image
    predictions are gathered on the main process (``comm.gather``), which scores them; other ranks return ``{}``.
    Results: ``{"bbox": {"AP": ..., "AP50": ..., ..., "AP-<class>": ...}}`` in %.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        engine: str = "sarl",
        max_dets: Sequence[int] = AITOD_MAX_DETS,
        max_dets_per_image: int = 3000,
        ignore_ioa_thresh: float = 0.5,
        dump_arrays: bool = True,
        num_workers: int = 1,
    ):
        """
        Args:
            dataset_name: a name in DatasetCatalog; its dicts give the ground truth, its metadata ``thing_classes``.
            distributed: gather predictions from all ranks.
            output_dir: where to write ``aitod_eval.{npz,json}`` (raw precision array) when ``dump_arrays``.
            engine, max_dets, max_dets_per_image, ignore_ioa_thresh: see :func:`evaluate_detections`.
            num_workers: processes scoring groups of categories (``workers`` of :func:`evaluate_detections`).
        """
        if engine not in ENGINES:
            raise ValueError(f"unknown evaluation engine {engine!r}; expected one of {ENGINES}")
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._engine = engine
        self._max_dets = tuple(max_dets)
        self._max_dets_per_image = max_dets_per_image
        self._ignore_ioa_thresh = ignore_ioa_thresh
        self._dump_arrays = dump_arrays
        self._num_workers = int(num_workers)
        self._metadata = MetadataCatalog.get(dataset_name)
        self._predictions: List[Dict[str, Any]] = []

    @classmethod
    def from_config(cls, cfg, dataset_name: str, output_dir: Optional[str] = None) -> "AITODEvaluator":
        """Evaluator with ``cfg.TEST.AITOD.{ENGINE, MAX_DETS}`` and ``cfg.TEST.DETECTIONS_PER_IMAGE``."""
        return cls(dataset_name, output_dir=output_dir, engine=cfg.TEST.AITOD.ENGINE,
                   max_dets=cfg.TEST.AITOD.MAX_DETS, max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE)

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        for model_input, output in zip(inputs, outputs):
            if "instances" not in output:
                continue
            prediction = instances_to_prediction(model_input["image_id"], output["instances"].to("cpu"))
            # Cap now: keeps the gather under DDP small.
            self._predictions.append(cap_per_image(prediction, self._max_dets_per_image))

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(self._predictions, dst=0)
            predictions = list(itertools.chain(*gathered))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        if not predictions:
            logger.warning(f"[AITODEvaluator] no predictions received for {self._dataset_name}")
            return {}
        gt_dicts = DatasetCatalog.get(self._dataset_name)
        class_names = list(self._metadata.get("thing_classes"))
        metrics = evaluate_detections(
            gt_dicts, predictions, class_names,
            engine=self._engine, max_dets=self._max_dets, max_dets_per_image=self._max_dets_per_image,
            ignore_ioa_thresh=self._ignore_ioa_thresh, workers=self._num_workers,
            output_dir=self._output_dir if (self._output_dir and self._dump_arrays) else None,
        )
        logger.info(f"[AITODEvaluator] {self._dataset_name}\n" + format_aitod_table(metrics))
        return {"bbox": dict(metrics)}
