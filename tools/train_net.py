#!/usr/bin/env python
"""Train or evaluate a SARL YOLO detector (Detectron2 projects style).

    python tools/train_net.py --config-file configs/sarl_yolox_aitod.yaml --num-gpus 2
    python tools/train_net.py --config-file ... --resume                      # continue output_dir/last_checkpoint
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file ... --num-gpus 2 MODEL.DEVICE cpu # 2 CPU processes (Gloo)
    python tools/train_net.py --config-file ... DATASETS.TRAIN coco:ann.json:images MODEL.YOLO.NUM_CLASSES 0
    python tools/train_net.py --list-datasets                                  # registered names, class counts

``--num-gpus N`` starts N processes with DDP (NCCL on GPUs, Gloo on CPU, chosen by detectron2's ``launch``);
``--num-machines/--machine-rank/--dist-url`` span machines. Datasets named ``coco:ANN.json:IMAGE_DIR`` or
``yolo:DIR`` are read from those paths (``sarl.data.datasets.own_data``). A wrong config key, an unknown or empty
dataset, a malformed dataset file, a class count that does not match the data, a missing ``MODEL.WEIGHTS`` file or
``--eval-only`` without one stops with one line naming it, exit status 2 (``SARL_DEBUG=1`` shows the traceback).
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

# fvcore scripts a loss with torch.jit at import, which recent torch flags as deprecated: two lines of noise on
# stderr before every error message, nothing the user can act on.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

import torch  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.evaluation import verify_results  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from sarl.config import UserError, load_config  # noqa: E402

logger = logging.getLogger("sarl.train_net")


def setup(args) -> Any:
    """Config from ``--config-file`` and the trailing ``KEY VALUE`` overrides; frozen; logging set up."""
    cfg = load_config(args.config_file, args.opts)
    # default_setup's environment report imports torch.utils.cpp_extension, which warns on stderr when no CUDA
    # runtime is found: noise (nothing is compiled here) that would precede a one-line error.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sarl")
    if cfg.MODEL.DEVICE == "cpu" and comm.get_local_size() > 1:
        # N CPU processes on one machine: share the cores instead of N x all cores (oversubscribed
        # OpenMP threads slow every step down by an order of magnitude).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    return cfg


def check_inputs(cfg, args) -> None:
    """What can be checked before processes start: dataset names, class count, checkpoint file."""
    from sarl.data import check_dataset_names, check_num_classes
    from sarl.engine.trainer import check_model_weights

    check_dataset_names(cfg, args.eval_only)
    check_num_classes(cfg, args.eval_only)
    if args.eval_only and not cfg.MODEL.WEIGHTS:
        raise UserError("--eval-only scores the checkpoint in MODEL.WEIGHTS, which is empty: add "
                        "MODEL.WEIGHTS path/to/model_final.pth")
    check_model_weights(cfg, resume=args.resume and not args.eval_only)


def print_datasets() -> None:
    """``--list-datasets``: every registered name with its class count."""
    from sarl.data.catalog import registered_datasets

    for name, num_classes in registered_datasets():
        print(f"{name}  {num_classes if num_classes else '?'} classes")


def main(args) -> Any:
    from sarl.engine import YOLOTrainer

    cfg = setup(args)
    if args.eval_only:
        model = YOLOTrainer.build_model(cfg)
        from sarl.checkpoint import checkpoint_class_names
        from sarl.engine import load_inference_weights

        trained_names = checkpoint_class_names(load_inference_weights(model, cfg.MODEL.WEIGHTS))
        if trained_names and len(trained_names) != cfg.MODEL.YOLO.NUM_CLASSES:
            # Its class layers were skipped (shape mismatch): scoring would score random class outputs.
            raise UserError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} was trained for {len(trained_names)} classes but "
                            f"MODEL.YOLO.NUM_CLASSES is {cfg.MODEL.YOLO.NUM_CLASSES}: evaluate with the config it "
                            f"was trained with")
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
    parser = default_argument_parser()
    parser.add_argument("--list-datasets", action="store_true", help="print the registered dataset names and exit")
    args = parser.parse_args(argv)
    if args.list_datasets:
        import sarl.data  # noqa: F401  (registers the datasets)

        print_datasets()
        return 0
    try:
        # Validate before spawning processes, so a typo costs one line, not N tracebacks.
        cfg = load_config(args.config_file, args.opts)
        check_inputs(cfg, args)
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
