"""The paper's ablation grid (Tables V-VII) in miniature (``tools/ablation.py``): the cells, the config overrides of
each, and one training run per cell and seed (``tools/train_net.py`` in its own process and folder, resumable).

``args`` are the tool's parsed arguments (the budget: ``epochs``, ``img_size``, ``width``, ...; ``output``,
``config``, ``num_gpus``, ``device``, ``jobs``, ``dry_run``, ``opts``); ``repo`` is the repository holding
``tools/`` and ``configs/``.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections import OrderedDict
from typing import Dict, List, Sequence

from .metrics_json import last_evaluation

__all__ = ["BETAS", "BASE_CONFIGS", "SUMMARY_KEYS", "grid", "cell_overrides", "run_cell"]

BETAS = OrderedDict([("1", 1.0), ("1/ln2", 1.0 / math.log(2.0)), ("2/ln2", 2.0 / math.log(2.0))])
BASE_CONFIGS = {"yolox": "configs/Base-YOLOX.yaml", "yolov5": "configs/Base-YOLOv5.yaml"}
SUMMARY_KEYS = ["AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m"]


def grid(detectors: Sequence[str], beta_detectors: Sequence[str]) -> List[Dict]:
    """The cells to run, in table order."""
    cells = []
    for det in detectors:
        for name, sarl, sal in (("baseline", False, False), ("sarl", True, False), ("sal", False, True),
                                ("sarl_sal", True, True)):
            cells.append({"detector": det, "cell": name, "sarl": sarl, "sal": sal, "beta": "2/ln2"})
        if det in beta_detectors:
            for beta in ("1", "1/ln2"):
                cells.append({"detector": det, "cell": f"sarl_sal_beta_{beta.replace('/', '_')}", "sarl": True,
                              "sal": True, "beta": beta})
    return cells


def cell_overrides(cell: Dict, args, seed: int) -> List[str]:
    opts = [
        "MODEL.SARL.ENABLED", str(cell["sarl"]), "MODEL.SAL.ENABLED", str(cell["sal"]),
        "MODEL.SAL.BETA", repr(BETAS[cell["beta"]]),
        "MODEL.YOLO.NUM_CLASSES", str(args.num_classes),
        "MODEL.CSPDARKNET.WIDTH_MULTIPLIER", str(args.width), "MODEL.CSPDARKNET.DEPTH_MULTIPLIER", str(args.depth),
        "MODEL.DEVICE", args.device,
        "INPUT.YOLO.IMG_SIZE", str(args.img_size), "INPUT.YOLO.MIXUP_PROB", str(args.mixup),
        "INPUT.YOLO.MOSAIC_SCALE", f"[{args.mosaic_scale[0]}, {args.mosaic_scale[1]}]",
        "DATASETS.TRAIN", f"('{args.train}',)", "DATASETS.TEST", f"('{args.test}',)",
        "DATALOADER.NUM_WORKERS", str(args.num_workers),
        "SOLVER.IMS_PER_BATCH", str(args.ims_per_batch), "SOLVER.YOLO.EPOCHS", str(args.epochs),
        "SOLVER.YOLO.WARMUP_EPOCHS", str(args.warmup_epochs), "SOLVER.YOLO.NO_AUG_EPOCHS", str(args.no_aug_epochs),
        # One recipe for both detectors (YOLOX's, per-image lr): at these budgets YOLOv5's own recipe
        # (64-image nominal batch, 100+ warmup iterations) would barely step. Override with
        # `SOLVER.YOLO.RECIPE yolov5` after the options to use it.
        "SOLVER.YOLO.RECIPE", "yolox",
        "SOLVER.YOLO.BASE_LR_PER_IMAGE", str(args.lr_per_image), "SOLVER.EMA.RAMP", str(args.ema_ramp),
        "SOLVER.CHECKPOINT_PERIOD", str(args.checkpoint_period), "TEST.EVAL_PERIOD", "0",
        "TEST.DETECTIONS_PER_IMAGE", str(args.detections_per_image), "SEED", str(seed),
    ]
    return opts + list(args.opts)


def run_cell(cell: Dict, seed: int, args, repo: str) -> Dict:
    """Train and score one cell with one seed (or read its earlier ``result.json``)."""
    name = f"{cell['detector']}/{cell['cell']}/seed{seed}"
    out = os.path.join(args.output, cell["detector"], cell["cell"], f"seed{seed}")
    result_path = os.path.join(out, "result.json")
    if os.path.isfile(result_path):
        with open(result_path) as f:
            return json.load(f)
    cmd = [sys.executable, os.path.join(repo, "tools", "train_net.py"), "--config-file",
           os.path.join(repo, args.config or BASE_CONFIGS[cell["detector"]]), "--num-gpus", str(args.num_gpus),
           "--resume"] + cell_overrides(cell, args, seed) + ["OUTPUT_DIR", out]
    if args.dry_run:
        print(f"[ablation] {name}:\n  " + " ".join(cmd))
        return {}
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ)
    if args.device == "cpu" and "OMP_NUM_THREADS" not in env:
        # N runs at once on one CPU: share the cores (oversubscribed OpenMP threads are far slower).
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, args.jobs)))
    print(f"[ablation] {name}: training ({out}/stdout.log)", flush=True)
    start = time.perf_counter()
    with open(os.path.join(out, "stdout.log"), "a") as log:
        status = subprocess.call(cmd, cwd=repo, stdout=log, stderr=subprocess.STDOUT, env=env)
    if status != 0:
        raise RuntimeError(f"[ablation] {name} failed (exit {status}); see {out}/stdout.log")
    metrics = last_evaluation(os.path.join(out, "metrics.json"))
    if metrics is None:
        raise RuntimeError(f"[ablation] {name}: no evaluation in {out}/metrics.json")
    result = dict(cell, seed=seed, metrics=metrics, seconds=round(time.perf_counter() - start, 1))
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"[ablation] {name}: AP {metrics['AP']:.1f} in {result['seconds'] / 60:.1f} min", flush=True)
    return result
