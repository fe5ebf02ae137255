"""The paper's ablation grid (Tables V-VII) in miniature (``tools/ablation.py``): the cells, the config overrides of
each, and one training run per cell and seed (``tools/train_net.py`` in its own process and folder, resumable).

Besides the paper's cells, ``variants`` add this project's one-change rows (:data:`VARIANTS`), each naming the cell
it differs from by exactly one setting: on YOLOv5, switching SAL on changes three things at once (the base loss
CIoU -> 1 - IoU^2, the objectness target CIoU -> IoU, and the SAL weight), which "loss_parts" separates;
"weight_norm" and "per_object" run SAL with ``MODEL.SAL.WEIGHT_NORM "mean"`` / ``PER_OBJECT`` (this project's
options; the paper's cells keep the defaults "none" / False).

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

from sarl.ops import PAPER_SAL_BETA

from .metrics_json import last_evaluation

__all__ = ["BETAS", "BASE_CONFIGS", "SUMMARY_KEYS", "PAPER_CELLS", "VARIANTS", "grid", "cell_loss_overrides",
           "cell_overrides", "effective_settings", "describe_cell", "run_cell"]

BETAS = OrderedDict([("1", 1.0), ("1/ln2", 1.0 / math.log(2.0)), ("2/ln2", PAPER_SAL_BETA)])
BASE_CONFIGS = {"yolox": "configs/Base-YOLOX.yaml", "yolov5": "configs/Base-YOLOv5.yaml"}
SUMMARY_KEYS = ["AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m"]
PAPER_CELLS = ("baseline", "sarl", "sal", "sarl_sal")
# This project's one-change rows: variant -> detectors it applies to, and per cell (name, the cell it differs from
# by one setting, that setting, the cell's settings). SARL is off in all of them, as in "baseline" and "sal".
VARIANTS: Dict[str, Dict] = {
    "loss_parts": {"detectors": ("yolov5",), "cells": [
        ("base_iou2", "baseline", "base loss", dict(sal=False, base_loss="iou2", obj_target="ciou")),
        ("obj_iou", "baseline", "objectness target", dict(sal=False, base_loss="ciou", obj_target="iou")),
        ("sal_ciou", "baseline", "SAL weight", dict(sal=True, base_loss="ciou", obj_target="ciou")),
        ("iou2_obj_iou", "sal", "SAL weight", dict(sal=False, base_loss="iou2", obj_target="iou")),
    ]},
    "weight_norm": {"detectors": ("yolox", "yolov5"), "cells": [
        ("sal_mean", "sal", "weight normalisation", dict(sal=True, weight_norm="mean")),
    ]},
    "per_object": {"detectors": ("yolox", "yolov5"), "cells": [
        ("sal_mean_per_object", "sal_mean", "per-object counting",
         dict(sal=True, weight_norm="mean", per_object=True)),
    ]},
}


def _cell(det: str, name: str, sarl: bool, sal: bool, beta: str = "2/ln2", **settings) -> Dict:
    """One cell; ``base_loss`` None and ``obj_target`` "auto" keep the detector's defaults (the paper's cells)."""
    cell = {"detector": det, "cell": name, "sarl": sarl, "sal": sal, "beta": beta, "base_loss": None,
            "obj_target": "auto", "weight_norm": "none", "per_object": False, "variant": None,
            "compare_with": None, "change": None}
    cell.update(settings)
    return cell


def grid(detectors: Sequence[str], beta_detectors: Sequence[str], variants: Sequence[str] = ()) -> List[Dict]:
    """The cells to run, in table order: the paper's, then those of each of ``variants`` (keys of VARIANTS)."""
    cells = []
    for det in detectors:
        for name, sarl, sal in (("baseline", False, False), ("sarl", True, False), ("sal", False, True),
                                ("sarl_sal", True, True)):
            cells.append(_cell(det, name, sarl, sal))
        if det in beta_detectors:
            for beta in ("1", "1/ln2"):
                cells.append(_cell(det, f"sarl_sal_beta_{beta.replace('/', '_')}", True, True, beta))
        for variant in variants:
            if det in VARIANTS[variant]["detectors"]:
                for name, compare_with, change, settings in VARIANTS[variant]["cells"]:
                    cells.append(_cell(det, name, False, variant=variant, compare_with=compare_with, change=change,
                                       **settings))
    return cells


def cell_loss_overrides(cell: Dict) -> List[str]:
    """The loss keys of a cell (``KEY VALUE`` pairs): SAL, its weight options, the base loss, the objectness target."""
    opts = ["MODEL.SAL.ENABLED", str(cell["sal"]), "MODEL.SAL.BETA", repr(BETAS[cell["beta"]]),
            "MODEL.SAL.WEIGHT_NORM", cell["weight_norm"], "MODEL.SAL.PER_OBJECT", str(cell["per_object"])]
    if cell["base_loss"]:
        # The base loss is MODEL.SAL.LOSS_TYPE with SAL on, MODEL.YOLOV5.BOX_LOSS_TYPE with it off: both are set.
        opts += ["MODEL.SAL.LOSS_TYPE", cell["base_loss"], "MODEL.YOLOV5.BOX_LOSS_TYPE", cell["base_loss"]]
    if cell["obj_target"] != "auto":
        opts += ["MODEL.YOLOV5.OBJ_TARGET", cell["obj_target"]]
    return opts


def effective_settings(cell: Dict) -> Dict:
    """What a cell trains with, its defaults resolved: SARL, SAL weight (beta, weight norm, per object), base loss
    ("ciou" | "iou2") and, on YOLOv5, the objectness target ("ciou" | "iou"; YOLOv5's rule for "auto")."""
    yolov5 = cell["detector"] == "yolov5"
    base = cell["base_loss"] or ("ciou" if yolov5 and not cell["sal"] else "iou2")
    obj = cell["obj_target"] if cell["obj_target"] != "auto" else ("ciou" if base == "ciou" else "iou")
    weight = (cell["beta"], cell["weight_norm"], cell["per_object"]) if cell["sal"] else None
    return {"sarl": cell["sarl"], "sal_weight": weight, "base_loss": base, "obj_target": obj if yolov5 else None}


def describe_cell(cell: Dict) -> str:
    """One line: the cell's settings and, for a one-change row, the cell it differs from."""
    s = effective_settings(cell)
    weight = s["sal_weight"]
    text = (f"{cell['detector']}/{cell['cell']}: SARL {'on' if s['sarl'] else 'off'}, base loss "
            f"{'CIoU' if s['base_loss'] == 'ciou' else '1 - IoU^2'}, SAL weight "
            + (f"beta {weight[0]} (weight norm {weight[1]}, per object {weight[2]})" if weight else "off"))
    if s["obj_target"]:
        text += f", objectness target {'CIoU' if s['obj_target'] == 'ciou' else 'IoU'}"
    if cell["compare_with"]:
        text += f"; vs {cell['compare_with']}: the {cell['change']} only"
    return text


def cell_overrides(cell: Dict, args, seed: int) -> List[str]:
    """The ``KEY VALUE`` overrides of one run: the cell's settings, the budget options (unless
    ``args.budget_from_config``: then the config's own recipe), the seed, then ``args.opts``."""
    if getattr(args, "budget_from_config", False):
        opts = ["MODEL.SARL.ENABLED", str(cell["sarl"]), *cell_loss_overrides(cell), "SEED", str(seed)]
        return opts + list(args.opts)
    opts = [
        "MODEL.SARL.ENABLED", str(cell["sarl"]), *cell_loss_overrides(cell),
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
