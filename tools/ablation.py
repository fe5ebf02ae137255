#!/usr/bin/env python
r"""The paper's ablation grid (Tables V-VII) in miniature, under one fixed budget and the same seeds.

Cells, for each detector (YOLOX anchor-free, YOLOv5 anchor-based):
    baseline            SARL off, SAL off
    +SARL               SARL on,  SAL off
    +SAL                SARL off, SAL on (beta 2/ln2)
    +SARL +SAL          both on (beta 2/ln2)
and for the beta table (Table VII; YOLOX by default): both on with beta in {1, 1/ln2} (2/ln2 is the cell above).

``--variants`` adds this project's rows, each differing from one cell above by one setting (SARL off):
    loss_parts   YOLOv5, where switching SAL on changes three things: base_iou2 (base loss 1 - IoU^2), obj_iou
                 (objectness target IoU), sal_ciou (SAL weight on CIoU), each vs baseline; iou2_obj_iou (vs +SAL:
                 everything but the SAL weight)
    weight_norm  sal_mean: SAL with MODEL.SAL.WEIGHT_NORM mean (loss scale of the unweighted loss), vs +SAL
    per_object   sal_mean_per_object: as sal_mean with MODEL.SAL.PER_OBJECT (each GT counts once), vs sal_mean
``--dry-run`` lists the rows (settings, and what each one-change row differs in) and the command of every run.

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
    python tools/ablation.py --variants loss_parts,weight_norm,per_object --dry-run
    python tools/ablation.py --config configs/kit_ais/yolox_kit_cpu.yaml --budget-from-config --detectors yolox \
        --beta-detectors "" --seeds 0,1                          # the real-data recipe (DETECTRON2_DATASETS set)
    python tools/ablation.py --train aitod_trainval --test aitod_test --num-classes 8 --img-size 800 \
        --width 0.5 --epochs 36 --ims-per-batch 16 --num-gpus 2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from sarl.benchmark.ablation import BASE_CONFIGS, VARIANTS, describe_cell, grid, run_cell
from sarl.benchmark.ablation_report import bar_chart, markdown_tables, mean_over_seeds

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/ablation")
    p.add_argument("--detectors", default="yolox,yolov5")
    p.add_argument("--beta-detectors", default="yolox", help="detectors that also get the beta cells")
    p.add_argument("--config", default="", help="one base config for all detectors (default Base-YOLOX/YOLOv5)")
    p.add_argument("--budget-from-config", action="store_true",
                   help="train with --config's own recipe (model size, input, data, schedule, solver): only the "
                        "cell's SARL/SAL settings and the seed are overridden, and the budget options below are "
                        "ignored (e.g. configs/kit_ais/yolox_kit_cpu.yaml, the real-data recipe)")
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
    p.add_argument("--variants", default="", help=f"comma-separated extra one-change rows: {', '.join(VARIANTS)}")
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
    if args.budget_from_config and not args.config:
        print("error: --budget-from-config needs --config (the config whose recipe the cells train with)",
              file=sys.stderr)
        return 2
    if args.config and not os.path.isfile(os.path.join(REPO, args.config)):
        print(f"error: --config: no such file {args.config!r}", file=sys.stderr)
        return 2
    if args.jobs > 1 and args.device != "cpu":
        # Concurrent runs would all claim the same --num-gpus devices.
        print("error: --jobs > 1 is for CPU runs; on GPUs run one cell at a time with --num-gpus", file=sys.stderr)
        return 2
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"error: --variants: unknown {unknown} (known: {', '.join(VARIANTS)})", file=sys.stderr)
        return 2
    cells = grid(detectors, [d.strip() for d in args.beta_detectors.split(",")], variants)
    if args.only:
        wanted = {c.strip() for c in args.only.split(",")}
        cells = [c for c in cells if c["cell"] in wanted]
    if args.dry_run:
        print(f"[ablation] {len(cells)} rows:")
        for cell in cells:
            print(f"  {describe_cell(cell)}")
    runs = [(cell, seed) for seed in args.seed_list for cell in cells]
    try:
        if args.dry_run:  # in order, one command after another (concurrent prints would interleave)
            results = [run_cell(cell, seed, args, REPO) for cell, seed in runs]
        else:
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                results = list(pool.map(lambda run: run_cell(run[0], run[1], args, REPO), runs))
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
