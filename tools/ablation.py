#!/usr/bin/env python
"""The paper's ablation grid (Tables V-VII) in miniature, under one fixed budget and the same seeds.

Cells, for each detector (YOLOX anchor-free, YOLOv5 anchor-based):
    baseline            SARL off, SAL off
    +SARL               SARL on,  SAL off
    +SAL                SARL off, SAL on (beta 2/ln2)
    +SARL +SAL          both on (beta 2/ln2)
and for the beta table (Table VII; YOLOX by default): both on with beta in {1, 1/ln2} (2/ln2 is the cell above).

Every cell trains with ``tools/train_net.py`` once per seed, each run in its own process and folder
(``<output>/<detector>/<cell>/seed<k>``), all with the same budget, then is scored by the AI-TOD evaluator.
The tables give the mean over the seeds and, with more than one seed, the spread (max - min) of AP, so a
difference between cells can be read against the run-to-run noise. The script is resumable: a run with a
``result.json`` is skipped, an interrupted one continues from its last checkpoint. ``--jobs N`` trains N runs at
once (on a CPU each gets cores/N threads). It writes ``<output>/ablation.md`` (tables in the paper's format),
``<output>/ablation.json`` (every run) and ``<output>/ablation.png`` (bar chart of AP).

    python tools/ablation.py                                   # synthetic_tiny, demo-sized budget
    python tools/ablation.py --seeds 0,1 --jobs 2 --epochs 8 --no-aug-epochs 2
    python tools/ablation.py --epochs 30 --detectors yolox
    python tools/ablation.py --train aitod_trainval --test aitod_test --num-classes 8 --img-size 800 \
        --width 0.5 --epochs 36 --ims-per-batch 16 --num-gpus 2
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
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


def final_metrics(metrics_json: str) -> Optional[Dict[str, float]]:
    """The last evaluation in a detectron2 ``metrics.json`` (keys ``bbox/...``)."""
    last = None
    if not os.path.isfile(metrics_json):
        return None
    with open(metrics_json) as f:
        for line in f:
            line = line.strip()
            if line:
                row = json.loads(line)
                if "bbox/AP" in row:
                    last = row
    if last is None:
        return None
    return {k[len("bbox/"):]: v for k, v in last.items() if k.startswith("bbox/")}


def run_cell(cell: Dict, seed: int, args) -> Dict:
    """Train and score one cell with one seed (or read its earlier ``result.json``)."""
    name = f"{cell['detector']}/{cell['cell']}/seed{seed}"
    out = os.path.join(args.output, cell["detector"], cell["cell"], f"seed{seed}")
    result_path = os.path.join(out, "result.json")
    if os.path.isfile(result_path):
        with open(result_path) as f:
            return json.load(f)
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
           os.path.join(REPO, args.config or BASE_CONFIGS[cell["detector"]]), "--num-gpus", str(args.num_gpus),
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
        status = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    if status != 0:
        raise RuntimeError(f"[ablation] {name} failed (exit {status}); see {out}/stdout.log")
    metrics = final_metrics(os.path.join(out, "metrics.json"))
    if metrics is None:
        raise RuntimeError(f"[ablation] {name}: no evaluation in {out}/metrics.json")
    result = dict(cell, seed=seed, metrics=metrics, seconds=round(time.perf_counter() - start, 1))
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"[ablation] {name}: AP {metrics['AP']:.1f} in {result['seconds'] / 60:.1f} min", flush=True)
    return result


def mean_over_seeds(cell: Dict, runs: List[Dict]) -> Dict:
    """One row per cell: every metric averaged over its seeds, plus the seeds and the AP of each."""
    keys = list(dict.fromkeys(k for r in runs for k in r["metrics"]))
    metrics = {}
    for k in keys:
        values = [r["metrics"][k] for r in runs if k in r["metrics"] and not math.isnan(r["metrics"][k])]
        metrics[k] = statistics.fmean(values) if values else float("nan")
    return dict(cell, metrics=metrics, seeds=[r["seed"] for r in runs], ap_per_seed=[r["metrics"]["AP"] for r in runs])


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def _row_values(r: Dict, classes: List[str], with_spread: bool) -> List[str]:
    m = r["metrics"]
    values = [_fmt(m.get(k)) for k in SUMMARY_KEYS]
    if with_spread:
        aps = r["ap_per_seed"]
        values.insert(1, _fmt(max(aps) - min(aps)))
    return values + [_fmt(m.get(f"AP-{c}")) for c in classes]


def markdown_tables(results: List[Dict], args) -> str:
    """Tables V/VI (per detector: SARL x SAL) and VII (beta), AP in %, per-class AP columns as the paper.

    ``results`` are rows from :func:`mean_over_seeds`; with more than one seed an "AP spread" column
    (max - min of AP over the seeds) follows AP.
    """
    classes = []
    for r in results:
        classes += [k[3:] for k in r["metrics"] if k.startswith("AP-") and k[3:] not in classes]
    seeds = args.seed_list
    with_spread = len(seeds) > 1
    header_metrics = ["AP", "AP<sub>50</sub>", "AP<sub>75</sub>", "AP<sub>vt</sub>", "AP<sub>t</sub>",
                      "AP<sub>s</sub>", "AP<sub>m</sub>"] + classes
    if with_spread:
        header_metrics.insert(1, "AP spread")
    seed_text = (f"seeds {', '.join(map(str, seeds))} (every value is the mean over the seeds; AP spread = "
                 f"max - min of AP over the seeds)" if with_spread else f"seed {seeds[0]}")
    lines = [f"Budget: {args.epochs} epochs ({args.no_aug_epochs} without mosaic) of `{args.train}` at "
             f"{args.img_size} px, batch {args.ims_per_batch}, width x{args.width}, depth x{args.depth}; "
             f"{seed_text}; scored on `{args.test}` (AI-TOD protocol, AP in %).", ""]
    for det in dict.fromkeys(r["detector"] for r in results):
        rows = [r for r in results if r["detector"] == det and r["beta"] == "2/ln2"]
        lines += [f"**{det.upper()}: SARL and SAL (Tables V/VI)**", "",
                  "| " + " | ".join([det.upper(), "SARL", "SAL"] + header_metrics) + " |",
                  "|" + "---|" * (3 + len(header_metrics))]
        for r in rows:
            marks = ["✓", "✓" if r["sarl"] else "", "✓" if r["sal"] else ""]
            lines.append("| " + " | ".join(marks + _row_values(r, classes, with_spread)) + " |")
        lines.append("")
        beta_rows = [r for r in results if r["detector"] == det and r["sarl"] and r["sal"]]
        if len(beta_rows) > 1:
            lines += [f"**{det.upper()} + SARL + SAL: the factor β (Table VII)**", "",
                      "| " + " | ".join(["β"] + header_metrics) + " |", "|" + "---|" * (1 + len(header_metrics))]
            for r in sorted(beta_rows, key=lambda r: BETAS[r["beta"]]):
                beta = r["beta"].replace("ln2", "ln 2")
                lines.append("| " + " | ".join([beta] + _row_values(r, classes, with_spread)) + " |")
            lines.append("")
    return "\n".join(lines)


def bar_chart(results: List[Dict], path: str) -> str:
    """AP per cell (mean over seeds), each seed's AP as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['detector']}\n{r['cell'].replace('sarl_sal_beta_', 'both β=').replace('_', '+')}" for r in results]
    values = [r["metrics"]["AP"] for r in results]
    colours = ["tab:blue" if r["detector"] == "yolox" else "tab:orange" for r in results]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(results)), 4))
    bars = ax.bar(range(len(results)), values, color=colours)
    for i, (bar, value, r) in enumerate(zip(bars, values, results)):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{value:.1f}", ha="center", va="bottom",
                fontsize=8)
        if len(r["ap_per_seed"]) > 1:
            ax.scatter([i] * len(r["ap_per_seed"]), r["ap_per_seed"], color="black", s=10, zorder=3)
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("AP (%)")
    seeds = sorted({s for r in results for s in r["seeds"]})
    ax.set_title(f"Ablation: SARL / SAL / β (same budget; seeds {', '.join(map(str, seeds))})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/ablation")
    p.add_argument("--detectors", default="yolox,yolov5")
    p.add_argument("--beta-detectors", default="yolox", help="detectors that also get the beta cells")
    p.add_argument("--config", default="", help="one base config for all detectors (default Base-YOLOX/YOLOv5)")
    p.add_argument("--train", default="synthetic_tiny_train")
    p.add_argument("--test", default="synthetic_tiny_val")
    p.add_argument("--num-classes", type=int, default=4)
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--depth", type=float, default=0.33)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--no-aug-epochs", type=int, default=3)
    p.add_argument("--ims-per-batch", type=int, default=8)
    p.add_argument("--lr-per-image", type=float, default=0.00125)
    p.add_argument("--ema-ramp", type=float, default=100.0)
    p.add_argument("--mixup", type=float, default=0.0)
    p.add_argument("--mosaic-scale", type=float, nargs=2, default=[0.5, 1.5])
    p.add_argument("--detections-per-image", type=int, default=1000)
    p.add_argument("--checkpoint-period", type=int, default=100)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--num-gpus", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; every cell is trained once per seed")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (CPU; each gets cores/jobs "
                   "threads)")
    p.add_argument("--only", default="", help="comma-separated cell names to run (default: the whole grid)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="extra config overrides for every cell")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    unknown = [d for d in detectors if d not in BASE_CONFIGS]
    if unknown:
        print(f"error: --detectors: unknown {unknown} (known: {sorted(BASE_CONFIGS)})", file=sys.stderr)
        return 2
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"error: --seeds: expected comma-separated integers, got {args.seeds!r}", file=sys.stderr)
        return 2
    if not args.seed_list or args.jobs < 1:
        print("error: --seeds needs at least one seed and --jobs at least 1", file=sys.stderr)
        return 2
    if args.jobs > 1 and args.device != "cpu":
        # Concurrent runs would all claim the same --num-gpus devices.
        print("error: --jobs > 1 is for CPU runs; on GPUs run one cell at a time with --num-gpus", file=sys.stderr)
        return 2
    cells = grid(detectors, [d.strip() for d in args.beta_detectors.split(",")])
    if args.only:
        wanted = {c.strip() for c in args.only.split(",")}
        cells = [c for c in cells if c["cell"] in wanted]
    runs = [(cell, seed) for seed in args.seed_list for cell in cells]
    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(lambda run: run_cell(run[0], run[1], args), runs))
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.dry_run:
        return 0
    rows = [mean_over_seeds(cell, [r for (c, _), r in zip(runs, results) if c is cell]) for cell in cells]
    os.makedirs(args.output, exist_ok=True)
    table = markdown_tables(rows, args)
    with open(os.path.join(args.output, "ablation.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output, "ablation.json"), "w") as f:
        json.dump({"runs": results, "cells": rows}, f, indent=1)
    chart = bar_chart(rows, os.path.join(args.output, "ablation.png"))
    print(table)
    print(f"[ablation] table: {os.path.join(args.output, 'ablation.md')}, chart: {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
