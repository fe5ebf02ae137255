#!/usr/bin/env python
"""The paper's ablation grid (Tables V-VII) in miniature, under one fixed budget and seed.

Cells, for each detector (YOLOX anchor-free, YOLOv5 anchor-based):
    baseline            SARL off, SAL off
    +SARL               SARL on,  SAL off
    +SAL                SARL off, SAL on (beta 2/ln2)
    +SARL +SAL          both on (beta 2/ln2)
and for the beta table (Table VII; YOLOX by default): both on with beta in {1, 1/ln2} (2/ln2 is the cell above).

Every cell trains with ``tools/train_net.py`` in its own process and folder (``<output>/<detector>/<cell>``),
from the same seed and with the same budget, then is scored by the AI-TOD evaluator. The script is resumable:
a cell with a ``result.json`` is skipped, an interrupted one continues from its last checkpoint. It writes
``<output>/ablation.md`` (tables in the paper's format) and ``<output>/ablation.png`` (bar chart of AP).

    python tools/ablation.py                                   # synthetic_tiny, demo-sized budget
    python tools/ablation.py --epochs 30 --detectors yolox
    python tools/ablation.py --train aitod_trainval --test aitod_test --num-classes 8 --img-size 800 \
        --width 0.5 --epochs 36 --ims-per-batch 16 --num-gpus 2
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections import OrderedDict
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


def cell_overrides(cell: Dict, args) -> List[str]:
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
        "SOLVER.YOLO.BASE_LR_PER_IMAGE", str(args.lr_per_image), "SOLVER.EMA.RAMP", str(args.ema_ramp),
        "SOLVER.CHECKPOINT_PERIOD", str(args.checkpoint_period), "TEST.EVAL_PERIOD", "0",
        "TEST.DETECTIONS_PER_IMAGE", str(args.detections_per_image), "SEED", str(args.seed),
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


def run_cell(cell: Dict, args) -> Dict:
    out = os.path.join(args.output, cell["detector"], cell["cell"])
    result_path = os.path.join(out, "result.json")
    if os.path.isfile(result_path):
        with open(result_path) as f:
            return json.load(f)
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
           os.path.join(REPO, args.config or BASE_CONFIGS[cell["detector"]]), "--num-gpus", str(args.num_gpus),
           "--resume"] + cell_overrides(cell, args) + ["OUTPUT_DIR", out]
    print(f"[ablation] {cell['detector']}/{cell['cell']}: training", flush=True)
    if args.dry_run:
        print("  " + " ".join(cmd))
        return {}
    start = time.perf_counter()
    with open(os.path.join(out, "stdout.log"), "a") as log:
        status = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if status != 0:
        raise SystemExit(f"[ablation] {cell['detector']}/{cell['cell']} failed (exit {status}); see {out}/stdout.log")
    metrics = final_metrics(os.path.join(out, "metrics.json"))
    if metrics is None:
        raise SystemExit(f"[ablation] {cell['detector']}/{cell['cell']}: no evaluation in {out}/metrics.json")
    result = dict(cell, metrics=metrics, seconds=round(time.perf_counter() - start, 1))
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def markdown_tables(results: List[Dict], args) -> str:
    """Tables V/VI (per detector: SARL x SAL) and VII (beta), AP in %, per-class AP columns as the paper."""
    classes = []
    for r in results:
        classes += [k[3:] for k in r["metrics"] if k.startswith("AP-") and k[3:] not in classes]
    header_metrics = ["AP", "AP<sub>50</sub>", "AP<sub>75</sub>", "AP<sub>vt</sub>", "AP<sub>t</sub>",
                      "AP<sub>s</sub>", "AP<sub>m</sub>"] + classes
    lines = [f"Budget: {args.epochs} epochs of `{args.train}` at {args.img_size} px, batch {args.ims_per_batch}, "
             f"width x{args.width}, seed {args.seed}; scored on `{args.test}` (AI-TOD protocol, AP in %).", ""]
    for det in dict.fromkeys(r["detector"] for r in results):
        rows = [r for r in results if r["detector"] == det and r["beta"] == "2/ln2"]
        lines += [f"**{det.upper()}: SARL and SAL (Tables V/VI)**", "",
                  "| " + " | ".join([det.upper(), "SARL", "SAL"] + header_metrics) + " |",
                  "|" + "---|" * (3 + len(header_metrics))]
        for r in rows:
            m = r["metrics"]
            values = [_fmt(m.get(k)) for k in SUMMARY_KEYS] + [_fmt(m.get(f"AP-{c}")) for c in classes]
            lines.append("| " + " | ".join(["✓", "✓" if r["sarl"] else "", "✓" if r["sal"] else ""] + values) + " |")
        lines.append("")
        beta_rows = [r for r in results if r["detector"] == det and r["sarl"] and r["sal"]]
        if len(beta_rows) > 1:
            lines += [f"**{det.upper()} + SARL + SAL: the factor β (Table VII)**", "",
                      "| " + " | ".join(["β"] + header_metrics) + " |", "|" + "---|" * (1 + len(header_metrics))]
            for r in sorted(beta_rows, key=lambda r: BETAS[r["beta"]]):
                m = r["metrics"]
                values = [_fmt(m.get(k)) for k in SUMMARY_KEYS] + [_fmt(m.get(f"AP-{c}")) for c in classes]
                lines.append("| " + " | ".join([r["beta"].replace("ln2", "ln 2")] + values) + " |")
            lines.append("")
    return "\n".join(lines)


def bar_chart(results: List[Dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['detector']}\n{r['cell'].replace('sarl_sal_beta_', 'both β=').replace('_', '+')}" for r in results]
    values = [r["metrics"]["AP"] for r in results]
    colours = ["tab:blue" if r["detector"] == "yolox" else "tab:orange" for r in results]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(results)), 4))
    bars = ax.bar(range(len(results)), values, color=colours)
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{value:.1f}", ha="center", va="bottom",
                fontsize=8)
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("AP (%)")
    ax.set_title("Ablation: SARL / SAL / beta (same budget and seed)")
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
    p.add_argument("--seed", type=int, default=0)
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
    cells = grid(detectors, [d.strip() for d in args.beta_detectors.split(",")])
    if args.only:
        wanted = {c.strip() for c in args.only.split(",")}
        cells = [c for c in cells if c["cell"] in wanted]
    results = [run_cell(cell, args) for cell in cells]
    if args.dry_run:
        return 0
    os.makedirs(args.output, exist_ok=True)
    table = markdown_tables(results, args)
    with open(os.path.join(args.output, "ablation.md"), "w") as f:
        f.write(table + "\n")
    chart = bar_chart(results, os.path.join(args.output, "ablation.png"))
    print(table)
    print(f"[ablation] table: {os.path.join(args.output, 'ablation.md')}, chart: {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
