"""The engines that evaluate + accumulate :class:`~sarl.evaluation.arrays.EvalArrays`, behind one function,
:func:`run_engine`.

    ``sarl`` (default): ``torch.ops.sarl.coco_eval_bbox``, this project's C++ kernel over columns of boxes
        (multi-threaded); when ``sarl._C`` is not built it falls back to faster_coco_eval, with one warning.
    ``faster_coco_eval`` (C++ over COCO dicts) and ``pycocotools``: the oracles, kept selectable to check the
        kernel; optionally split by category over forked processes (``workers``).
All get the same inputs and parameters and give the same accumulated arrays (tests/test_evaluator.py: ``sarl``
equals pycocotools to the bit, faster_coco_eval to 1e-6).
"""
from __future__ import annotations

import contextlib
import copy
import gc
import io
import logging
import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .arrays import EvalArrays, coco_dicts_from_arrays
from .protocol import AITOD_AREA_RANGES, AITOD_MAX_DETS, coco_params, empty_accumulation

__all__ = ["ENGINES", "check_engine", "resolve_engine", "native_engine_available", "run_engine", "gc_paused"]

logger = logging.getLogger(__name__)

ENGINES = ("sarl", "faster_coco_eval", "pycocotools")

_WARNED_NO_NATIVE = False


def check_engine(engine: str) -> None:
    """Raise ValueError unless ``engine`` is one of :data:`ENGINES`."""
    if engine not in ENGINES:
        raise ValueError(f"unknown evaluation engine {engine!r}; expected one of {ENGINES}")


def resolve_engine(engine: str) -> str:
    """The engine that will run: ``engine``, or faster_coco_eval for "sarl" when ``sarl._C`` is not built (warned
    once per process)."""
    global _WARNED_NO_NATIVE
    check_engine(engine)
    if engine == "sarl" and not native_engine_available():
        if not _WARNED_NO_NATIVE:
            logger.warning("AI-TOD eval: sarl._C is not built, or was built from sources without coco_eval_bbox "
                           "(rebuild: make build); using the faster_coco_eval engine (same results)")
            _WARNED_NO_NATIVE = True
        return "faster_coco_eval"
    return engine


def run_engine(
    arrays: EvalArrays,
    *,
    engine: str = "sarl",
    max_dets: Sequence[int] = AITOD_MAX_DETS,
    area_ranges: Mapping[str, Tuple[float, float]] = AITOD_AREA_RANGES,
    workers: int = 1,
    coco_dicts: Optional[Tuple[Dict[str, Any], Dict[str, Any]]] = None,
) -> Dict[str, Any]:
    """COCOeval evaluate + accumulate of ``arrays`` with ``engine`` (see the module docstring).

    Args:
        arrays: the columns of :func:`sarl.evaluation.arrays.build_eval_arrays`.
        engine: "sarl", "faster_coco_eval" or "pycocotools" (:func:`resolve_engine` applies the fallback).
        max_dets, area_ranges: the protocol's maxDets and area ranges.
        workers: oracles only: score groups of categories in this many forked processes (same result; for
            multi-core hosts). The "sarl" engine uses torch's threads instead.
        coco_dicts: oracles only: ``coco_dicts_from_arrays(arrays)`` when the caller already built them
            (tools/benchmark_eval.py times the engines without it).
    Returns:
        ``{"precision": [T, R, K, A, M], "recall": [T, K, A, M], "scores": [T, R, K, A, M], "params": {...}}``
        (float64; -1 where a (class, area) cell has no ground truth), as ``COCOeval.eval``.
    """
    engine = resolve_engine(engine)
    if not arrays.image_sizes:
        logger.warning("AI-TOD eval: no images in the ground truth; every metric is NaN")
        return empty_accumulation(arrays.num_classes, max_dets)
    if engine == "sarl":
        return _run_native(arrays, max_dets=max_dets, area_ranges=area_ranges)
    with gc_paused():
        gt, dt = coco_dicts if coco_dicts is not None else coco_dicts_from_arrays(arrays)
        return _run_coco_oracle_by_category_groups(gt, dt, workers=workers, engine=engine, max_dets=max_dets,
                                                   area_ranges=area_ranges)


# ----------------------------------------------------------------------------------------------------------------
# The project's C++ engine
# ----------------------------------------------------------------------------------------------------------------
def _run_native(
    arrays: EvalArrays,
    *,
    max_dets: Sequence[int],
    area_ranges: Mapping[str, Tuple[float, float]],
) -> Dict[str, Any]:
    """Evaluate + accumulate in :func:`sarl.ops.coco_eval_bbox` (threads over images and cells)."""
    params = coco_params(max_dets, area_ranges)

    def t(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values))

    from sarl.ops import coco_eval_bbox  # raises when sarl._C is not built

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


# ----------------------------------------------------------------------------------------------------------------
# The oracles: faster-coco-eval and pycocotools on COCO dicts
# ----------------------------------------------------------------------------------------------------------------
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
def gc_paused():
    """Building hundreds of thousands of small dicts triggers the cyclic GC over and over (it rescans every
    container each time): pausing it makes input building ~5x faster. Nothing here creates cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _run_coco_oracle(
    gt: Dict[str, Any],
    dt: Dict[str, Any],
    *,
    engine: str = "faster_coco_eval",
    max_dets: Sequence[int] = AITOD_MAX_DETS,
    area_ranges: Mapping[str, Tuple[float, float]] = AITOD_AREA_RANGES,
) -> Dict[str, Any]:
    """Evaluate + accumulate with the oracle ``engine`` on the COCO dicts of :func:`coco_dicts_from_arrays`.

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


# (gt, dt) handed to forked workers without pickling them (see _run_coco_oracle_by_category_groups).
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
    with gc_paused():
        return _run_coco_oracle(_subset_by_categories(gt, category_ids), _subset_by_categories(dt, category_ids),
                                engine=engine, max_dets=max_dets, area_ranges=area_ranges)


def _run_coco_oracle_by_category_groups(
    gt: Dict[str, Any],
    dt: Dict[str, Any],
    *,
    workers: int,
    engine: str = "faster_coco_eval",
    max_dets: Sequence[int] = AITOD_MAX_DETS,
    area_ranges: Mapping[str, Tuple[float, float]] = AITOD_AREA_RANGES,
) -> Dict[str, Any]:
    """:func:`_run_coco_oracle` split by category over ``workers`` forked processes.

    COCO evaluation with ``useCats`` is independent per category (matching, sorting and accumulation never mix
    classes), so each worker scores a group of categories and the arrays are concatenated along the class axis:
    the result equals the single-process one (tests check it). Falls back to one process when ``workers <= 1``,
    with fewer than 2 categories, or where ``fork`` is unavailable.
    """
    global _FORK_SHARED
    category_ids = [c["id"] for c in gt["categories"]]
    if workers <= 1 or len(category_ids) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return _run_coco_oracle(gt, dt, engine=engine, max_dets=max_dets, area_ranges=area_ranges)
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
