#!/usr/bin/env python
"""The one-command demo (``make demo``): SARL + SAL YOLOX trained on the bundled synthetic aerial set, on the CPU.

Steps: generate the synthetic set (first use) -> score the untrained model (for comparison) -> train
(``configs/demo/sarl_yolox_synthetic.yaml``, periodic AI-TOD evaluation of the EMA weights) -> the AI-TOD table ->
prediction pictures of a few validation images -> a loss / AP curve. Everything goes to ``--output``
(default ``output/demo``); the paths are printed at the end, with the wall time and both APs in
``summary.json``.

    python tools/demo.py                          # ~15 minutes on 2 CPU cores
    python tools/demo.py SOLVER.YOLO.EPOCHS 2     # a quick look (config overrides at the end)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import torch

from sarl.benchmark.metrics_json import read_metrics_json

logger = logging.getLogger("sarl.demo")
REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "demo", "sarl_yolox_synthetic.yaml")


def auto_threads() -> int:
    """Cores not already busy: on a loaded machine, more OpenMP threads than free cores make every
    convolution several times slower (measured: 10x with 2 threads on 2 cores at load 9)."""
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, int(round(cores - busy))))


def plot_curves(metrics_json: str, out_png: str, untrained_ap: float) -> str:
    """Training loss and validation AP against the iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics_json(metrics_json)
    loss = [(r["iteration"], r["total_loss"]) for r in rows if "total_loss" in r]
    ap = [(r["iteration"], r["bbox/AP"]) for r in rows if "bbox/AP" in r]
    fig, ax_loss = plt.subplots(figsize=(8, 4.5))
    if loss:
        ax_loss.plot(*zip(*loss), color="tab:blue", label="training loss")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("total loss", color="tab:blue")
    ax_ap = ax_loss.twinx()
    ap_points = [(0, untrained_ap)] + ap
    ax_ap.plot(*zip(*ap_points), "o-", color="tab:red", label="val AP (EMA weights)")
    ax_ap.set_ylabel("AI-TOD AP (%)", color="tab:red")
    ax_loss.set_title("SARL + SAL YOLOX on the synthetic aerial set (CPU demo)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--output", default="output/demo")
    parser.add_argument("--num-vis", type=int, default=4, help="validation images to draw")
    parser.add_argument("--vis-score", type=float, default=0.3)
    parser.add_argument("--resume", action="store_true", help="continue a demo run in --output")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the idle cores, at least 1)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the model init and the data stream (repeatable runs)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(args.threads or auto_threads())

    from detectron2.data import DatasetCatalog
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    from sarl.config import UserError, load_config
    from sarl.engine import YOLOTrainer
    from sarl.evaluation import format_aitod_table
    from sarl.inference import Predictor, draw_dataset_predictions

    os.makedirs(args.output, exist_ok=True)
    setup_logger(args.output, name="detectron2")
    setup_logger(args.output, name="sarl")
    try:
        opts = ["SEED", str(args.seed)] + list(args.opts) + ["OUTPUT_DIR", args.output]
        cfg = load_config(args.config_file, opts)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # As train_net's default_setup does: without it every run starts from other weights and another data order.
    seed_all_rng(cfg.SEED)
    val_name = cfg.DATASETS.TEST[0]

    print("[demo] 1/5 dataset: generating / loading the synthetic aerial set", flush=True)
    for name in list(cfg.DATASETS.TRAIN) + [val_name]:
        print(f"        {name}: {len(DatasetCatalog.get(name))} images", flush=True)

    print("[demo] 2/5 untrained model: AI-TOD AP on the validation set (the baseline to beat)", flush=True)
    untrained = YOLOTrainer.build_model(cfg)
    untrained_results = YOLOTrainer.test(cfg, untrained)["bbox"]
    untrained_ap = float(untrained_results["AP"])
    del untrained

    print(f"[demo] 3/5 training SARL+SAL YOLOX ({cfg.MODEL.CSPDARKNET.WIDTH_MULTIPLIER} width, "
          f"{cfg.INPUT.YOLO.IMG_SIZE} px) on the CPU", flush=True)
    t_train = time.perf_counter()
    trainer = YOLOTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    train_time = time.perf_counter() - t_train
    if not results:  # DATASETS.TEST was emptied by an override: evaluate here
        results = trainer.test(cfg, trainer.eval_model)
    metrics = results["bbox"]

    print("[demo] 4/5 AI-TOD evaluation of the trained model (EMA weights):", flush=True)
    print(format_aitod_table(metrics), flush=True)

    print("[demo] 5/5 pictures and curves", flush=True)
    # The names the checkpoints store (the training set's), as prediction from model_final.pth would use.
    predictor = Predictor.from_cfg(cfg, model=trainer.eval_model, class_names=trainer.checkpointer.class_names or None)
    pictures = draw_dataset_predictions(predictor, val_name, os.path.join(args.output, "predictions"), args.num_vis,
                                        args.vis_score)
    curve = plot_curves(os.path.join(args.output, "metrics.json"), os.path.join(args.output, "curves.png"),
                        untrained_ap)
    wall = time.perf_counter() - start
    summary = {
        "AP": metrics["AP"], "AP50": metrics["AP50"], "untrained_AP": untrained_ap,
        "untrained_AP50": float(untrained_results["AP50"]), "metrics": dict(metrics),
        "iterations": trainer.max_iter, "train_seconds": round(train_time, 1), "wall_seconds": round(wall, 1),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "config": os.path.relpath(args.config_file, REPO), "overrides": list(args.opts),
    }
    with open(os.path.join(args.output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"\n[demo] done in {wall / 60:.1f} min (training {train_time / 60:.1f} min, {trainer.max_iter} iterations)")
    print(f"[demo] AP {metrics['AP']:.1f} (AP50 {metrics['AP50']:.1f}) after training vs {untrained_ap:.1f} "
          f"(AP50 {untrained_results['AP50']:.1f}) untrained")
    print(f"[demo] predictions: {os.path.join(args.output, 'predictions')} ({len(pictures)} pictures)")
    print(f"[demo] curves:      {curve}")
    print(f"[demo] model:       {os.path.join(args.output, 'model_final.pth')} (EMA weights inside)")
    print(f"[demo] metrics:     {os.path.join(args.output, 'metrics.json')}, summary: "
          f"{os.path.join(args.output, 'summary.json')}; TensorBoard: tensorboard --logdir {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
