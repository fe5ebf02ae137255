#!/usr/bin/env python
"""Train or evaluate a SARL YOLO detector (Detectron2 projects style).

    python tools/train_net.py --config-file configs/sarl_yolox_aitod.yaml --num-gpus 2
    python tools/train_net.py --config-file ... --resume                      # continue output_dir/last_checkpoint
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file ... --num-gpus 2 MODEL.DEVICE cpu # 2 CPU processes (Gloo)

``--num-gpus N`` starts N processes with DDP (NCCL on GPUs, Gloo on CPU, chosen by detectron2's ``launch``);
``--num-machines/--machine-rank/--dist-url`` span machines. A wrong config key, a missing dataset or a malformed
dataset file stops with one line naming it (``SARL_DEBUG=1`` shows the traceback).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

import torch
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from sarl.config import UserError, load_config

logger = logging.getLogger("sarl.train_net")


def setup(args) -> Any:
    """Config from ``--config-file`` and the trailing ``KEY VALUE`` overrides; frozen; logging set up."""
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sarl")
    if cfg.MODEL.DEVICE == "cpu" and comm.get_local_size() > 1:
        # N CPU processes on one machine: share the cores instead of N x all cores (oversubscribed
        # OpenMP threads slow every step down by an order of magnitude).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    return cfg


def check_datasets(cfg, eval_only: bool) -> None:
    """Every dataset named in the config must be registered (importing ``sarl.data`` registers ours)."""
    import sarl.data  # noqa: F401
    from detectron2.data import DatasetCatalog

    known = set(DatasetCatalog.list())
    names = [("DATASETS.TEST", n) for n in cfg.DATASETS.TEST]
    if not eval_only:
        names = [("DATASETS.TRAIN", n) for n in cfg.DATASETS.TRAIN] + names
    for key, name in names:
        if name not in known:
            raise UserError(f"{key}: dataset '{name}' is not registered (known: {', '.join(sorted(known))})")


def main(args) -> Any:
    from sarl.engine import YOLOTrainer

    cfg = setup(args)
    if args.eval_only:
        model = YOLOTrainer.build_model(cfg)
        from sarl.engine import load_inference_weights

        load_inference_weights(model, cfg.MODEL.WEIGHTS)
        results = YOLOTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = YOLOTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def _user_errors() -> tuple:
    from sarl.data import DatasetFormatError, DatasetNotFoundError

    return (UserError, DatasetFormatError, DatasetNotFoundError)


def guarded_main(args) -> Any:
    """``main`` for each process: user errors become one line on stderr and exit status 2."""
    try:
        return main(args)
    except _user_errors() as e:
        if os.environ.get("SARL_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def run(argv=None) -> int:
    args = default_argument_parser().parse_args(argv)
    try:
        # Validate before spawning processes, so a typo costs one line, not N tracebacks.
        cfg = load_config(args.config_file, args.opts)
        check_datasets(cfg, args.eval_only)
    except _user_errors() as e:
        if os.environ.get("SARL_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print("Command Line Args:", args, flush=True)
    try:
        launch(guarded_main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except Exception as e:  # a child process failed; its own message is above
        if os.environ.get("SARL_DEBUG") or args.num_gpus <= 1:
            raise
        print(f"error: a training process failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
