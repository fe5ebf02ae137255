"""The AI-TOD protocol (REFERENCE.md section 4): its constants, the COCOeval parameters, the metrics read from the
accumulated arrays, and how they are shown and saved.

Protocol:
    COCO-style AP over IoU 0.50:0.05:0.95; area ranges
        all [0, 1e10], vt (very tiny) [0, 8^2], t (tiny) [8^2, 16^2], s (small) [16^2, 32^2], m (medium) [32^2, 1e10];
    maxDets [100, 300, 1500]; AP uses maxDets 1500 (as in COCO, the cap counts per image and category);
    at most 3000 detections per image (top scores, over all classes) are kept before scoring.

Metrics are read from the accumulated ``precision`` / ``recall`` arrays (COCOeval's ``summarize()`` is hard-wired to
COCO's area labels) and reported in %: AP, AP50, AP75, AP_vt, AP_t, AP_s, AP_m, AR@100, AR@300, AR@1500, AR_vt/t/s/m
(maxDets 1500) and ``AP-<class>``. A metric with no ground truth to score is NaN (detectron2's convention).
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from detectron2.utils.logger import create_small_table

__all__ = ["AITOD_AREA_RANGES", "AITOD_MAX_DETS", "DEFAULT_MAX_DETS_PER_IMAGE", "coco_params", "empty_accumulation",
           "summarize_aitod", "format_aitod_table", "dump_eval_arrays"]

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
DEFAULT_MAX_DETS_PER_IMAGE = 3000


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


def empty_accumulation(num_classes: int, max_dets: Sequence[int] = AITOD_MAX_DETS) -> Dict[str, Any]:
    """The accumulated arrays of an evaluation with nothing to score (all -1), in the engines' layout."""
    params = dict(coco_params(max_dets), catIds=list(range(1, num_classes + 1)))
    shape = (len(params["iouThrs"]), len(params["recThrs"]), num_classes, len(params["areaRng"]),
             len(params["maxDets"]))
    return {"precision": -np.ones(shape), "recall": -np.ones((shape[0],) + shape[2:]), "scores": -np.ones(shape),
            "params": params}


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) * 100.0 if valid.size else float("nan")


def summarize_aitod(accumulated: Mapping[str, Any], class_names: Sequence[str]) -> "OrderedDict[str, float]":
    """AI-TOD metrics (in %) from the accumulated arrays of :func:`sarl.evaluation.engines.run_engine`."""
    precision, recall = accumulated["precision"], accumulated["recall"]
    params = accumulated["params"]
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


def format_aitod_table(metrics: Mapping[str, float]) -> str:
    """Two small tables: the summary metrics and the per-class AP."""
    summary = {k: v for k, v in metrics.items() if not k.startswith("AP-")}
    per_class = {k[3:]: v for k, v in metrics.items() if k.startswith("AP-")}
    text = "AI-TOD evaluation results (%):\n" + create_small_table(summary)
    if per_class:
        text += "\nPer-class AP (%):\n" + create_small_table(per_class)
    return text


def dump_eval_arrays(accumulated: Mapping[str, Any], metrics: Mapping[str, float], class_names: Sequence[str],
                     output_dir: str, prefix: str = "aitod_eval") -> List[str]:
    """Write ``<prefix>.npz`` (precision, recall, scores arrays) and ``<prefix>.json`` (metrics, params, class
    names and the precision array as nested lists) for plots. Returns the paths written."""
    os.makedirs(output_dir, exist_ok=True)
    npz_path = os.path.join(output_dir, f"{prefix}.npz")
    np.savez_compressed(npz_path, precision=accumulated["precision"], recall=accumulated["recall"],
                        scores=accumulated["scores"], class_names=np.asarray(list(class_names)),
                        area_labels=np.asarray(accumulated["params"]["areaRngLbl"]),
                        max_dets=np.asarray(accumulated["params"]["maxDets"]),
                        iou_thrs=np.asarray(accumulated["params"]["iouThrs"]),
                        rec_thrs=np.asarray(accumulated["params"]["recThrs"]))
    json_path = os.path.join(output_dir, f"{prefix}.json")
    with open(json_path, "w") as f:
        json.dump({
            "metrics": {k: (None if np.isnan(v) else v) for k, v in metrics.items()},
            "class_names": list(class_names),
            "params": accumulated["params"],
            "precision_shape": "[iou T, recall R, class K, area A, maxDets M]; -1 = no ground truth",
            "precision": accumulated["precision"].tolist(),
        }, f)
    return [npz_path, json_path]
