"""Evaluation: the AI-TOD protocol (area ranges vt/t/s/m, maxDets 100/300/1500) for every aerial dataset."""
from .aitod_evaluator import (
    AITOD_AREA_RANGES,
    AITOD_MAX_DETS,
    AITODEvaluator,
    evaluate_detections,
    format_aitod_table,
    ignored_fraction,
    summarize_aitod,
)
from .dota_merge import DOTAMergeEvaluator, merge_patch_predictions

__all__ = [
    "AITOD_AREA_RANGES",
    "AITOD_MAX_DETS",
    "AITODEvaluator",
    "DOTAMergeEvaluator",
    "merge_patch_predictions",
    "evaluate_detections",
    "format_aitod_table",
    "ignored_fraction",
    "summarize_aitod",
]
