"""The peer in the real-data benchmark (``tools/benchmark_real.py``): Ultralytics YOLOv8n from scratch, trained for
the wall-clock budget by :mod:`sarl.benchmark.peer_worker` in the peer environment (:mod:`sarl.benchmark.peer_env`)
on the YOLO layout of the same split (:mod:`sarl.benchmark.yolo_layout`), scored here like ours.

``args`` are the tool's parsed arguments (``output``, ``budget_min``, ``threads``, ``seed``, ``datasets``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any, Dict, List

from .peer_env import ensure_peer_env, offline_env
from .peer_results import raw_to_predictions
from .peer_worker import PEER_IMGSZ, PEER_MODEL
from .real_common import child_env, log, score
from .subprocess_run import log_tail, run_measured
from .yolo_layout import export_yolo_layout

__all__ = ["prepare_peer", "run_peer"]


def prepare_peer(args: argparse.Namespace, train_dicts: List[Dict[str, Any]], val_dicts: List[Dict[str, Any]],
                 class_names: List[str]) -> Dict[str, str]:
    """The peer's environment and data, before any training (a failed install costs no training time)."""
    env_dir = os.path.abspath(os.environ.get("SARL_PEER_ENV") or os.path.join(args.output, "peer_env"))
    python = ensure_peer_env(env_dir, sys.executable, log=lambda m: log(f"peer: {m}"))
    data_yaml = export_yolo_layout({"train": train_dicts, "val": val_dicts}, class_names,
                                   os.path.join(args.output, "peer_data"))
    return {"env_dir": env_dir, "python": python, "data_yaml": data_yaml}


def run_peer(args: argparse.Namespace, prepared: Dict[str, str], val_dicts: List[Dict[str, Any]],
             class_names: List[str]) -> Dict[str, Any]:
    """Train and predict with the peer's worker in its environment (killed past budget + 30 min), then score its
    boxes on ``val_dicts``; with its timings, peak memory and settings."""
    env_dir, python, data_yaml = prepared["env_dir"], prepared["python"], prepared["data_yaml"]
    peer_dir = os.path.join(args.output, "peer")
    shutil.rmtree(peer_dir, ignore_errors=True)
    os.makedirs(peer_dir)
    result_path = os.path.join(peer_dir, "peer_result.json")
    cmd = [python, "-m", "sarl.benchmark.peer_worker", "--data", data_yaml,
           "--val-images", os.path.join(os.path.dirname(data_yaml), "images", "val"),
           "--project", os.path.join(peer_dir, "runs"), "--result", result_path,
           "--budget-min", str(args.budget_min), "--threads", str(args.threads), "--seed", str(args.seed)]
    env = child_env(args.datasets, args.threads)
    env.update(offline_env(os.path.join(env_dir, "ultralytics_config"), args.threads))
    log(f"peer: training Ultralytics YOLOv8n for {args.budget_min:g} min, log {peer_dir}/peer.log")
    budget_s = args.budget_min * 60
    run = run_measured(cmd, env, os.path.join(peer_dir, "peer.log"), timeout_s=budget_s + 1800, cwd=peer_dir)
    if run["rc"] != 0:
        raise RuntimeError(f"peer: the Ultralytics run failed (exit {run['rc']}); last lines:\n"
                           f"{log_tail(os.path.join(peer_dir, 'peer.log'))}")
    with open(result_path) as f:
        worker = json.load(f)
    predictions = raw_to_predictions(worker.pop("raw"), val_dicts)
    result: Dict[str, Any] = score(val_dicts, predictions, class_names)
    result.update(worker)
    result.update({"model": f"Ultralytics YOLOv8n ({PEER_MODEL}, from scratch)",
                   "input_size": PEER_IMGSZ, "process_wall_s": run["wall_s"],
                   "peak_rss_mib": run["peak_rss_mib"], "load_avg_1min_before_after": run["load_avg_1min"],
                   "budget_enforced": True, "env": env_dir})
    return result
