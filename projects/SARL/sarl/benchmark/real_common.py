"""What both sides of the real-data benchmark (``tools/benchmark_real.py``) share: the progress line, the child
processes' environment and the scoring (the same evaluator on the same dataset dicts)."""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Sequence

from .peer_results import class_agnostic

METRICS = ("AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m", "AP50_agnostic")


def log(message: str) -> None:
    print(f"[benchmark_real] {message}", flush=True)


def child_env(datasets: str, threads: int) -> Dict[str, str]:
    """This process's environment for a side's process: the datasets folder and ``threads`` OpenMP/MKL threads."""
    env = dict(os.environ)
    env.update({"DETECTRON2_DATASETS": datasets, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return env


def score(val_dicts: List[Dict[str, Any]], predictions: List[Dict[str, Any]], class_names: Sequence[str]
          ) -> Dict[str, Optional[float]]:
    """AI-TOD metrics of ``predictions`` on ``val_dicts`` (None where undefined), the class-agnostic AP50 and the
    per-class AP."""
    from sarl.evaluation import evaluate_detections

    metrics = evaluate_detections(val_dicts, predictions, class_names)
    gt, dt = class_agnostic(val_dicts, predictions)
    agnostic = evaluate_detections(gt, dt, ["object"])
    out = {k: finite(metrics.get(k)) for k in METRICS if k != "AP50_agnostic"}
    out["AP50_agnostic"] = finite(agnostic["AP50"])
    out["per_class_AP"] = {k[3:]: finite(v) for k, v in metrics.items() if k.startswith("AP-")}
    return out


def finite(value: Any) -> Optional[float]:
    """``value`` as a float, None when it is None, NaN or infinite (JSON has no NaN)."""
    return None if value is None or not math.isfinite(float(value)) else float(value)
