#!/usr/bin/env python
"""Real-data benchmark: this project's recipe vs Ultralytics YOLOv8n on the KIT AIS frames, side by side.

    python tools/benchmark_real.py                              # 12 min of training each, CPU
    python tools/benchmark_real.py --budget-min 1 --skip-ours   # the peer alone (re-uses "ours" from --json)

Both sides train in this run, on this machine, on the same split (validation = frames MOS155..MOS179, the other
20 frames train: ``sarl.benchmark.kit_split``), with the same threads and the same wall-clock budget, and both
are scored by this project's AI-TOD evaluator (``sarl.evaluation.evaluate_detections``) on the same
``kit_ais_cars_val`` dataset dicts.

- ours: ``tools/train_net.py --config-file <--config> OUTPUT_DIR <output>/sarl`` in a subprocess. train_net has no
  time budget: the config's schedule (SOLVER.YOLO.EPOCHS) runs in full and the measured time is reported (the
  run is stopped only past max(3 x budget, budget + 20 min)). Its AI-TOD results are those of train_net's final
  evaluation (``<output>/sarl/inference/kit_ais_cars_val/aitod_eval.json``); images/s = SOLVER.IMS_PER_BATCH /
  median iteration ``time`` of metrics.json. ``tools/predict.py`` then re-predicts the validation frames with
  ``model_final.pth`` for the class-agnostic AP50 (and a re-scored AP, a check of the scoring path).
- peer: Ultralytics YOLOv8n from scratch (``yolov8n.yaml``, ``pretrained=False``), imgsz 640, batch 8, nbs 8,
  optimizer auto, ``time=`` budget, ``amp=False``, ``val=False``, ``plots=False``, seed, deterministic, CPU, in a
  scratch virtual environment (``$SARL_PEER_ENV``, default ``<output>/peer_env``) that re-uses the project's torch
  (created on first use: pip needs the package index); no other network access (``YOLO_OFFLINE=1``, a local
  font). Predicts the validation frames (imgsz 640 letterboxed rect, conf 0.001, NMS IoU 0.65, max_det 3000)
  with ``last.pt``; the boxes are scored here.

Prints a table and writes ``--json`` (default ``<output>/benchmark_real.json``): AI-TOD metrics, class-agnostic
AP50, training images/s, wall times, iterations/epochs, peak memory (max RSS of each side's process), the ratios
ours/peer, the machine and the versions. Peak memory and wall time include each side's final evaluation.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Dict, Optional, Sequence

from sarl.benchmark.common import machine_description, write_json
from sarl.benchmark.kit_split import frame_name, load_kit_ais_split
from sarl.benchmark.real_common import log
from sarl.benchmark.real_ours import run_ours
from sarl.benchmark.real_peer import prepare_peer, run_peer
from sarl.benchmark.real_report import ratios, report_table, versions
from sarl.config import UserError, run_reporting_user_errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = "configs/kit_ais/sarl_yolox_kit_cpu.yaml"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-min", type=float, default=12.0, help="wall-clock training budget of each side")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="this project's config (tools/train_net.py)")
    parser.add_argument("--output", default="output/benchmark_real", help="folder for both runs and the JSON")
    parser.add_argument("--json", default=None, help="results JSON (default <output>/benchmark_real.json)")
    parser.add_argument("--datasets", default=None,
                        help="folder holding kit_ais_cars/ (default $DETECTRON2_DATASETS, else ../shared/data "
                             "beside the repository if it has it, else ./datasets)")
    parser.add_argument("--skip-ours", action="store_true",
                        help="do not train ours: re-use its results from --json (if there are any)")
    parser.add_argument("--skip-peer", action="store_true",
                        help="do not train the peer: re-use its results from --json (if there are any)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides KEY VALUE ... for ours (e.g. a smoke-test schedule)")
    return parser


def validate(args: argparse.Namespace) -> None:
    if not math.isfinite(args.budget_min) or args.budget_min <= 0:
        raise UserError(f"--budget-min must be > 0 minutes (got {args.budget_min:g})")
    if args.threads < 1:
        raise UserError(f"--threads must be >= 1 (got {args.threads})")
    if args.skip_ours and args.skip_peer:
        raise UserError("--skip-ours and --skip-peer together leave nothing to run")
    args.config = args.config if os.path.isabs(args.config) or os.path.exists(args.config) \
        else os.path.join(REPO, args.config)
    if not args.skip_ours and not os.path.isfile(args.config):
        raise UserError(f"--config: no such config file {args.config}")
    args.datasets = os.path.abspath(os.path.expanduser(args.datasets or default_datasets()))
    if not os.path.isdir(os.path.join(args.datasets, "kit_ais_cars")):
        raise UserError(f"--datasets: no kit_ais_cars folder in {args.datasets} (pass --datasets or set "
                        f"DETECTRON2_DATASETS to the folder that holds it)")
    args.output = os.path.abspath(args.output)
    args.json = os.path.abspath(args.json or os.path.join(args.output, "benchmark_real.json"))


def default_datasets() -> str:
    """$DETECTRON2_DATASETS; unset: ../shared/data beside the repository when it holds kit_ais_cars/ (as the
    tests find it), else ./datasets (detectron2's default)."""
    if os.environ.get("DETECTRON2_DATASETS"):
        return os.environ["DETECTRON2_DATASETS"]
    shared = os.path.join(os.path.dirname(REPO), "shared", "data")
    return shared if os.path.isdir(os.path.join(shared, "kit_ais_cars")) else "datasets"


def read_previous(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    return run_reporting_user_errors(lambda: validate(args) or run(args),
                                     failures=(RuntimeError, subprocess.CalledProcessError))


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)  # scoring here; the sides get OMP_NUM_THREADS
    os.makedirs(args.output, exist_ok=True)
    train_dicts, class_names, train_source = load_kit_ais_split(args.datasets, "train")
    val_dicts, _, val_source = load_kit_ais_split(args.datasets, "val")
    if not args.skip_ours and train_source != "kit_ais_cars_train":
        raise UserError("--datasets: this project does not register kit_ais_cars_train/kit_ais_cars_val (sarl.data); "
                        "train_net needs them (run the peer alone with --skip-ours)")
    log(f"split: {len(train_dicts)} training frames ({train_source}), {len(val_dicts)} validation frames "
        f"({val_source}); classes {class_names}")
    previous = read_previous(args.json)
    for flag, side in (("--skip-ours", "ours"), ("--skip-peer", "peer")):
        if getattr(args, flag[2:].replace("-", "_")):
            found = isinstance(previous.get(side), dict) and previous[side]
            log(f"{flag}: re-using '{side}' of {args.json}" if found else
                f"{flag}: {args.json} holds no earlier results of '{side}': reported as not run")
    prepared = None if args.skip_peer else prepare_peer(args, train_dicts, val_dicts, class_names)
    ours = (previous.get("ours") or {}) if args.skip_ours else run_ours(args, REPO, val_dicts, class_names)
    peer = (previous.get("peer") or {}) if args.skip_peer else run_peer(args, prepared, val_dicts, class_names)
    machine = machine_description("cpu")
    machine.update({"threads_per_side": args.threads, "cores": os.cpu_count()})
    payload = {
        "benchmark": "KIT AIS cars: this project's recipe vs Ultralytics YOLOv8n, same split, budget and evaluator",
        "settings": {"budget_min": args.budget_min, "threads": args.threads, "seed": args.seed,
                     "config": os.path.relpath(args.config, REPO), "datasets": args.datasets,
                     "train_frames": sorted(frame_name(r["file_name"]) for r in train_dicts),
                     "val_frames": sorted(frame_name(r["file_name"]) for r in val_dicts),
                     "reused": [s for s, skip in (("ours", args.skip_ours), ("peer", args.skip_peer)) if skip]},
        "machine": machine,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "versions": {**versions(), "ultralytics": peer.get("ultralytics")},
        "ours": ours,
        "peer": peer,
        "ratios": ratios(ours, peer),
    }
    print(report_table(payload), flush=True)
    write_json(args.json, payload)
    log(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
