"""AI-TOD evaluation of detections: :func:`evaluate_detections` (dataset dicts + per-image predictions -> metrics,
no model needed) and :class:`AITODEvaluator`, the detectron2 ``DatasetEvaluator`` built on it.

The steps live in their own modules: :mod:`.arrays` (checks, ignore regions, the per-image cap -> columns),
:mod:`.engines` (evaluate + accumulate), :mod:`.protocol` (parameters, metrics, tables, dumps).
"""
from __future__ import annotations

import itertools
import logging
import time
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from .arrays import build_eval_arrays, cap_per_image, instances_to_prediction
from .engines import check_engine, resolve_engine, run_engine
from .protocol import (
    AITOD_MAX_DETS,
    DEFAULT_MAX_DETS_PER_IMAGE,
    dump_eval_arrays,
    format_aitod_table,
    summarize_aitod,
)

__all__ = ["accumulate_detections", "evaluate_detections", "AITODEvaluator"]

logger = logging.getLogger(__name__)


def accumulate_detections(
    gt_dicts: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    num_classes: int,
    *,
    engine: str = "sarl",
    max_dets: Sequence[int] = AITOD_MAX_DETS,
    max_dets_per_image: int = DEFAULT_MAX_DETS_PER_IMAGE,
    ignore_ioa_thresh: float = 0.5,
    workers: int = 1,
) -> Dict[str, Any]:
    """The accumulated arrays of the AI-TOD evaluation (``{"precision", "recall", "scores", "params"}``, see
    :func:`sarl.evaluation.engines.run_engine`); arguments as :func:`evaluate_detections`, ``num_classes`` =
    ``len(class_names)``. :func:`sarl.evaluation.protocol.summarize_aitod` turns them into metrics."""
    start = time.perf_counter()
    engine = resolve_engine(engine)
    arrays, counts = build_eval_arrays(gt_dicts, predictions, num_classes,
                                       max_dets_per_image=max_dets_per_image, ignore_ioa_thresh=ignore_ioa_thresh)
    if counts["dt_capped"]:
        logger.info(f"AI-TOD eval: dropped {counts['dt_capped']} detections beyond {max_dets_per_image} per image")
    if counts["dt_ignored_by_region"] or counts["gt_ignored_by_region"]:
        logger.info(
            f"AI-TOD eval: removed {counts['dt_ignored_by_region']} detections and {counts['gt_ignored_by_region']} "
            f"ground-truth boxes lying in ignore regions (covered >= {ignore_ioa_thresh})"
        )
    accumulated = run_engine(arrays, engine=engine, max_dets=max_dets, workers=workers)
    logger.info(
        f"AI-TOD eval ({engine}): {len(arrays.image_sizes)} images, {len(arrays.gt_image)} GT, "
        f"{len(arrays.dt_image)} detections, {time.perf_counter() - start:.2f} s"
    )
    return accumulated


def evaluate_detections(
    gt_dicts: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    *,
    engine: str = "sarl",
    max_dets: Sequence[int] = AITOD_MAX_DETS,
    max_dets_per_image: int = DEFAULT_MAX_DETS_PER_IMAGE,
    ignore_ioa_thresh: float = 0.5,
    output_dir: Optional[str] = None,
    workers: int = 1,
) -> "OrderedDict[str, float]":
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
        output_dir: when set, write the accumulated arrays there (:func:`sarl.evaluation.protocol.dump_eval_arrays`).
        workers: faster_coco_eval / pycocotools: score groups of categories in this many forked processes (same
            result; for multi-core hosts). The "sarl" engine uses torch's threads instead.

    Returns:
        ordered dict of metrics in % (AP, AP50, AP75, AP_vt, AP_t, AP_s, AP_m, AR@..., AR_<area>@..., AP-<class>).
        The arrays behind them: :func:`accumulate_detections`.
    """
    accumulated = accumulate_detections(
        gt_dicts, predictions, len(class_names), engine=engine, max_dets=max_dets,
        max_dets_per_image=max_dets_per_image, ignore_ioa_thresh=ignore_ioa_thresh, workers=workers,
    )
    metrics = summarize_aitod(accumulated, class_names)
    if output_dir:
        dump_eval_arrays(accumulated, metrics, class_names, output_dir)
    return metrics


class AITODEvaluator(DatasetEvaluator):
    """detectron2 ``DatasetEvaluator`` for the AI-TOD protocol (see :mod:`sarl.evaluation.protocol`).

    Works for every registered dataset whose dicts follow the ``sarl.data`` contract. Under DDP the per-image
    predictions are gathered on the main process (``comm.gather``), which scores them; other ranks return ``{}``.
    Results: ``{"bbox": {"AP": ..., "AP50": ..., ..., "AP-<class>": ...}}`` in %.

    Subclasses that score on other images than the model saw (``DOTAMergeEvaluator``) set ``_gt_dataset`` and
    override the two hooks: :meth:`_prepare` (each image's prediction, in ``process``) and :meth:`_merge` (all of
    them, on the main process, before scoring).
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        engine: str = "sarl",
        max_dets: Sequence[int] = AITOD_MAX_DETS,
        max_dets_per_image: int = DEFAULT_MAX_DETS_PER_IMAGE,
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
        check_engine(engine)
        self._dataset_name = dataset_name
        self._gt_dataset = dataset_name  # the dataset scored: ground truth and class names
        self._distributed = distributed
        self._output_dir = output_dir
        self._engine = engine
        self._max_dets = tuple(max_dets)
        self._max_dets_per_image = max_dets_per_image
        self._ignore_ioa_thresh = ignore_ioa_thresh
        self._dump_arrays = dump_arrays
        self._num_workers = int(num_workers)
        self._predictions: List[Dict[str, Any]] = []
        # (image_id, file_name) of the images the loader could not read (``"unreadable"`` inputs): not scored.
        self._unreadable: List[Tuple[Any, str]] = []

    @classmethod
    def from_config(cls, cfg, dataset_name: str, output_dir: Optional[str] = None) -> "AITODEvaluator":
        """Evaluator with ``cfg.TEST.AITOD.{ENGINE, MAX_DETS}`` and ``cfg.TEST.DETECTIONS_PER_IMAGE``."""
        return cls(dataset_name, output_dir=output_dir, engine=cfg.TEST.AITOD.ENGINE,
                   max_dets=cfg.TEST.AITOD.MAX_DETS, max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE)

    def _prepare(self, prediction: Dict[str, Any]) -> Dict[str, Any]:
        """One image's prediction as kept until ``evaluate``: capped now, which keeps the gather under DDP small."""
        return cap_per_image(prediction, self._max_dets_per_image)

    def _merge(self, predictions: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """All images' predictions (main process) -> the per-image predictions of ``_gt_dataset``."""
        return predictions

    def reset(self) -> None:
        self._predictions = []
        self._unreadable = []

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        for model_input, output in zip(inputs, outputs):
            if model_input.get("unreadable"):
                self._unreadable.append((model_input["image_id"], str(model_input.get("file_name", ""))))
                continue
            if "instances" not in output:
                continue
            prediction = instances_to_prediction(model_input["image_id"], output["instances"].to("cpu"))
            self._predictions.append(self._prepare(prediction))

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        name = type(self).__name__
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather((self._predictions, self._unreadable), dst=0)
            predictions = list(itertools.chain(*(g[0] for g in gathered)))
            unreadable = list(itertools.chain(*(g[1] for g in gathered)))
            if not comm.is_main_process():
                return {}
        else:
            predictions, unreadable = self._predictions, self._unreadable
        if unreadable:
            shown = ", ".join(f for _, f in unreadable[:3]) + (", ..." if len(unreadable) > 3 else "")
            logger.warning(f"[{name}] {self._dataset_name}: {len(unreadable)} images unreadable, skipped (not "
                           f"scored): {shown}")
        if not predictions:
            logger.warning(f"[{name}] no predictions received for {self._dataset_name}")
            return {}
        predictions = self._merge(predictions)
        class_names = list(MetadataCatalog.get(self._gt_dataset).get("thing_classes"))
        gt_dicts = DatasetCatalog.get(self._gt_dataset)
        if unreadable and self._gt_dataset == self._dataset_name:
            # Images the model never saw are left out: their objects would count as misses.
            skipped_ids = {image_id for image_id, _ in unreadable}
            gt_dicts = [record for record in gt_dicts if record["image_id"] not in skipped_ids]
        metrics = evaluate_detections(
            gt_dicts, predictions, class_names,
            engine=self._engine, max_dets=self._max_dets, max_dets_per_image=self._max_dets_per_image,
            ignore_ioa_thresh=self._ignore_ioa_thresh, workers=self._num_workers,
            output_dir=self._output_dir if (self._output_dir and self._dump_arrays) else None,
        )
        if unreadable:
            metrics["unreadable_images"] = float(len(unreadable))  # in the table and the results: not scored
        source = "" if self._gt_dataset == self._dataset_name else f" (predictions on {self._dataset_name})"
        table = format_aitod_table(metrics)
        if unreadable:
            table += f"\n{len(unreadable)} images unreadable, skipped (not scored; see the warnings naming them)"
        logger.info(f"[{name}] {self._gt_dataset}{source}\n" + table)
        return {"bbox": dict(metrics)}
