"""Ours in the real-data benchmark (``tools/benchmark_real.py``): ``tools/train_net.py`` trains the config in a
subprocess (its own schedule: train_net has no time budget), its final AI-TOD evaluation is read back, and
``tools/predict.py`` re-predicts the validation frames for the class-agnostic AP50.

``args`` are the tool's parsed arguments (``output``, ``config``, ``opts``, ``seed``, ``budget_min``,
``datasets``, ``threads``); ``repo`` is the repository holding ``tools/``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
from typing import Any, Dict, List

from sarl.config import UserError

from .metrics_json import read_metrics_json
from .peer_results import coco_results_to_raw, raw_to_predictions
from .real_common import METRICS, child_env, finite, log, score
from .subprocess_run import log_tail, run_measured

__all__ = ["run_ours"]


def _seconds(text: str) -> float:
    """A ``datetime.timedelta`` text (``0:01:02``, ``1 day, 0:01:02``) in seconds."""
    days = 0
    if "day" in text:
        head, text = text.split(",", 1)
        days = int(head.split()[0])
    h, m, s = (float(p) for p in text.strip().split(":"))
    return days * 86400 + h * 3600 + m * 60 + s


def run_ours(args: argparse.Namespace, repo: str, val_dicts: List[Dict[str, Any]], class_names: List[str]
             ) -> Dict[str, Any]:
    """Train ``args.config`` with ``tools/train_net.py`` in ``<output>/sarl`` (killed past max(3 x budget,
    budget + 20 min)); its official AI-TOD metrics, training speed, wall time and peak memory, and the
    class-agnostic AP50 of its re-predicted validation frames. A config that train_net rejects is a UserError."""
    import yaml

    out_dir = os.path.join(args.output, "sarl")
    shutil.rmtree(out_dir, ignore_errors=True)  # metrics.json is appended to: start clean
    os.makedirs(out_dir)
    overrides = ["DATASETS.TRAIN", '("kit_ais_cars_train",)', "DATASETS.TEST", '("kit_ais_cars_val",)',
                 "MODEL.YOLO.NUM_CLASSES", str(len(class_names)), "MODEL.DEVICE", "cpu"]
    overrides += list(args.opts or [])
    cmd = [sys.executable, os.path.join(repo, "tools", "train_net.py"), "--config-file", args.config,
           "OUTPUT_DIR", out_dir, "SEED", str(args.seed)] + overrides
    budget_s = args.budget_min * 60
    log(f"ours: training with {os.path.relpath(args.config, repo)} (the config's schedule; budget "
        f"{args.budget_min:g} min is not enforced by train_net), log {out_dir}/train_net.log")
    run = run_measured(cmd, child_env(args.datasets, args.threads), os.path.join(out_dir, "train_net.log"),
                       timeout_s=max(3 * budget_s, budget_s + 1200), cwd=repo)
    text = log_tail(os.path.join(out_dir, "train_net.log"), 10**6)
    if run["rc"] != 0:
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        if errors and run["rc"] == 2:
            raise UserError(f"--config (or the overrides): tools/train_net.py rejected it: {errors[-1][6:].strip()}")
        raise RuntimeError(f"ours: tools/train_net.py failed (exit {run['rc']}"
                           f"{', killed past the time limit' if run['timed_out'] else ''}); last lines:\n"
                           f"{log_tail(os.path.join(out_dir, 'train_net.log'))}")
    with open(os.path.join(out_dir, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    batch = int(cfg["SOLVER"]["IMS_PER_BATCH"])
    rows = read_metrics_json(os.path.join(out_dir, "metrics.json"))
    times = [r["time"] for r in rows if "time" in r]
    step = statistics.median(times) if times else None
    # detectron2's IterationTimer: "Total training time: 0:01:02 (0:00:01 on hooks)" (the loop, with its hooks,
    # without the final evaluation); its "Overall training speed" line leaves out the first iterations.
    total = re.findall(r"Total training time: ([^(]+?) \(", text)
    loop_s = _seconds(total[-1]) if total else None
    iterations = max((int(r["iteration"]) + 1 for r in rows if "time" in r), default=None)
    plan = re.findall(r"YOLO schedule[^:]*: (\d+) iterations/epoch", text)
    per_epoch = int(plan[-1]) if plan else None
    if loop_s is not None and loop_s > 1.25 * budget_s:
        log(f"ours: the config's schedule trained for {loop_s / 60:.1f} min, over the {args.budget_min:g} min budget")
    eval_json = os.path.join(out_dir, "inference", "kit_ais_cars_val", "aitod_eval.json")
    with open(eval_json) as f:
        official = json.load(f)["metrics"]
    result: Dict[str, Any] = {k: finite(official.get(k)) for k in METRICS if k != "AP50_agnostic"}
    result["per_class_AP"] = {k[3:]: finite(v) for k, v in official.items() if k.startswith("AP-")}
    result.update({
        "config": os.path.relpath(args.config, repo),
        "input_size": cfg.get("INPUT", {}).get("YOLO", {}).get("IMG_SIZE"),
        "images_per_iteration": batch,
        "step_time_median_s": step,
        "train_images_per_s": batch / step if step else None,
        "iterations_done": iterations,
        "train_images_seen": iterations * batch if iterations is not None else None,
        "epochs_done": (iterations / per_epoch) if iterations is not None and per_epoch else None,
        "train_loop_s": loop_s,
        "process_wall_s": run["wall_s"],
        "peak_rss_mib": run["peak_rss_mib"],
        "load_avg_1min_before_after": run["load_avg_1min"],
        "overrides": list(args.opts or []),
        "budget_enforced": False,
        "results_file": eval_json,
    })
    result.update(_ours_agnostic(args, repo, out_dir, cfg, overrides, val_dicts, class_names))
    return result


def _ours_agnostic(args: argparse.Namespace, repo: str, out_dir: str, cfg: Dict[str, Any], overrides: List[str],
                   val_dicts: List[Dict[str, Any]], class_names: List[str]) -> Dict[str, Any]:
    """Class-agnostic AP50 of ours: tools/predict.py on the validation frames with model_final.pth (tiled as the
    config's evaluation when TEST.SLICED.ENABLED), scored here."""
    predict_dir = os.path.join(args.output, "sarl_predict")
    shutil.rmtree(predict_dir, ignore_errors=True)
    weights = os.path.join(out_dir, "model_final.pth")
    sliced = (cfg.get("TEST") or {}).get("SLICED") or {}
    slicing = []
    if sliced.get("ENABLED"):
        size = int(sliced.get("SLICE_SIZE") or 0) or int(cfg["INPUT"]["YOLO"]["IMG_SIZE"])
        slicing = ["--slice", str(size), "--overlap", str(sliced.get("OVERLAP", 0.2)),
                   "--batch", str(sliced.get("BATCH_SIZE", 4))]
    cmd = [sys.executable, os.path.join(repo, "tools", "predict.py"), "--config-file", args.config, "--input",
           *[r["file_name"] for r in val_dicts], "--output", predict_dir, "--no-vis", *slicing,
           "MODEL.WEIGHTS", weights, *overrides]
    os.makedirs(predict_dir, exist_ok=True)
    run = run_measured(cmd, child_env(args.datasets, args.threads), os.path.join(predict_dir, "predict.log"),
                       timeout_s=1800, cwd=repo)
    if run["rc"] != 0:
        log(f"ours: tools/predict.py failed (exit {run['rc']}): no class-agnostic AP50; see {predict_dir}")
        return {"AP50_agnostic": None}
    with open(os.path.join(predict_dir, "results.json")) as f:
        raw = coco_results_to_raw(json.load(f))
    rescored = score(val_dicts, raw_to_predictions(raw, val_dicts), class_names)
    return {"AP50_agnostic": rescored["AP50_agnostic"],
            "rescored_from_predict": {"AP": rescored["AP"], "AP50": rescored["AP50"]}}
