"""Evaluation: the AI-TOD protocol (area ranges vt/t/s/m, maxDets 100/300/1500) for every aerial dataset.

    protocol.py    constants, COCOeval parameters, metrics from the accumulated arrays, tables, dumps
    arrays.py      ground truth + predictions -> checked columns (EvalArrays), ignore regions, per-image cap
    engines.py     run_engine: the project's C++ engine (default) or the pycocotools / faster-coco-eval oracles
    evaluator.py   evaluate_detections (no model needed) and the DatasetEvaluator AITODEvaluator
    dota_merge.py  DOTAMergeEvaluator: patch detections merged back to whole images, then scored
"""
from .arrays import EvalArrays, build_eval_arrays, ignored_fraction
from .dota_merge import DOTAMergeEvaluator, merge_patch_predictions
from .engines import ENGINES, run_engine
from .evaluator import AITODEvaluator, accumulate_detections, evaluate_detections
from .protocol import AITOD_AREA_RANGES, AITOD_MAX_DETS, format_aitod_table, summarize_aitod

__all__ = [
    "AITOD_AREA_RANGES",
    "AITOD_MAX_DETS",
    "AITODEvaluator",
    "DOTAMergeEvaluator",
    "ENGINES",
    "EvalArrays",
    "accumulate_detections",
    "build_eval_arrays",
    "evaluate_detections",
    "format_aitod_table",
    "ignored_fraction",
    "merge_patch_predictions",
    "run_engine",
    "summarize_aitod",
]
