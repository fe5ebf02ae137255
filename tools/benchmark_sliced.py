#!/usr/bin/env python
"""Sliced prediction of one large image: this project's sliced predictor vs SAHI 0.12.8, same detector, same tiles.

    python tools/benchmark_sliced.py                  # 6000x6000 synthetic aerial mosaic, 640 px tiles, 3 rounds
    python tools/benchmark_sliced.py --quick          # 1024x1024, 320 px tiles, 1 round (a check, ~1 min)
    python tools/benchmark_sliced.py --image big.tif --weights output/demo/model_final.pth

Both sides run the same trained detector (``--weights``; else ``output/demo/model_final.pth`` of ``make demo``
when present; else a seeded UNTRAINED model, said so in the output) on the same image with the same slice size,
overlap, batch of tiles, score threshold and torch threads, each in its own process per round (a warm-up crop,
then the whole image once, timed):

- ours: ``sarl.inference.Predictor.predict(image, slice_size=S)`` (``SlicedPredictor``: lazy tiles, cut-box
  rule, class-wise NMS);
- SAHI: ``sahi.predict.get_sliced_prediction`` with the detector wrapped as a SAHI ``DetectionModel``, NMS/IOU at
  the project's NMS threshold, no extra whole-image pass; SAHI lives in a scratch environment (``$SARL_SAHI_ENV``,
  default ``<output>/sahi_env``, created on first use from PyPI) that reuses the project's torch, numpy and sarl.
  What SAHI cannot be made to do like ours: ``sarl.benchmark.sahi_worker``'s docstring.

Prints a table and writes ``--json`` (default ``<output>/benchmark_sliced.json``): wall time, tiles/s, time inside
the model and outside it, peak memory (max RSS of each side's process), detections, the ratios ours/SAHI
(medians over ``--repeats`` rounds, the two sides alternating), and the agreement of the two detection sets.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from typing import Optional, Sequence

from sarl.benchmark.common import machine_description, write_json
from sarl.benchmark.real_report import versions
from sarl.benchmark.sliced_inputs import (TRAINED_SCORE_THRESH, UNTRAINED_SCORE_THRESH, resolve_detector,
                                         write_synthetic_image)
from sarl.benchmark.sliced_speed import CUT_RULES, ensure_sahi_env, log, report_table, run_benchmark
from sarl.config import UserError, run_reporting_user_errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "demo", "sarl_yolox_synthetic.yaml")
DEMO_WEIGHTS = os.path.join(REPO, "output", "demo", "model_final.pth")
FULL = {"size": 6000, "slice": 640, "repeats": 3}
QUICK = {"size": 1024, "slice": 320, "repeats": 1}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=None, help="image to predict (default: a generated synthetic mosaic)")
    parser.add_argument("--size", type=int, default=None, help="side of the generated image (default 6000; "
                                                               "--quick 1024)")
    parser.add_argument("--slice", type=int, default=None, help="tile side in px (default 640; --quick 320)")
    parser.add_argument("--overlap", type=float, default=0.2, help="overlap of adjacent tiles, a fraction of the tile")
    parser.add_argument("--batch", type=int, default=4, help="tiles per model call (both sides)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each side")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per side (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="a small check: 1024 px image, 320 px tiles, 1 round")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="the detector's config")
    parser.add_argument("--weights", default=None,
                        help="trained weights (default output/demo/model_final.pth if present, else untrained)")
    parser.add_argument("--score-thresh", type=float, default=None,
                        help=f"score threshold of both sides (default {TRAINED_SCORE_THRESH:g} trained, "
                             f"{UNTRAINED_SCORE_THRESH:g} untrained)")
    parser.add_argument("--sahi-cut-rule", choices=CUT_RULES, default="ours",
                        help="'ours': SAHI's model wrapper drops cut boxes as this project does (same detections "
                             "expected); 'none': stock SAHI (keeps the cut copies)")
    parser.add_argument("--keep-batchnorm", action="store_true",
                        help="both sides: the detector with its BatchNorms kept (TEST.FUSE_CONV_BN False; default: "
                             "folded into the convolutions, as prediction builds it)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated image and the untrained model")
    parser.add_argument("--output", default="output/benchmark_sliced", help="folder for the rounds and the JSON")
    parser.add_argument("--json", default=None, help="results JSON (default <output>/benchmark_sliced.json)")
    return parser


def validate(args: argparse.Namespace) -> None:
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for name in ("size", "slice", "batch", "threads", "repeats"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1 (got {getattr(args, name)})")
    if not (math.isfinite(args.overlap) and 0.0 <= args.overlap < 1.0):
        raise UserError(f"--overlap must be in [0, 1) (got {args.overlap:g})")
    if args.score_thresh is not None and not 0.0 <= args.score_thresh < 1.0:
        raise UserError(f"--score-thresh must be in [0, 1) (got {args.score_thresh:g})")
    if not os.path.isfile(args.config):
        raise UserError(f"--config: no such config file {args.config}")
    if args.weights and not os.path.isfile(args.weights):
        raise UserError(f"--weights: no such file {args.weights}")
    if args.image and not os.path.isfile(args.image):
        raise UserError(f"--image: no such file {args.image}")
    args.config = os.path.abspath(args.config)
    args.weights = os.path.abspath(args.weights) if args.weights else None
    args.output = os.path.abspath(args.output)
    args.json = os.path.abspath(args.json or os.path.join(args.output, "benchmark_sliced.json"))


def run(args: argparse.Namespace) -> int:
    import torch

    from sarl.inference import read_image

    torch.set_num_threads(args.threads)  # here: the untrained model's set-up and the matching; each side sets its own
    os.makedirs(args.output, exist_ok=True)
    if args.image:
        args.image = os.path.abspath(args.image)
        if read_image(args.image) is None:
            raise UserError(f"--image: cannot read {args.image} as an image")
    else:
        log(f"image: synthetic mosaic {args.size}x{args.size} (seed {args.seed})")
        args.image = write_synthetic_image(args.output, args.size, args.seed)
    env_dir = os.path.abspath(os.environ.get("SARL_SAHI_ENV") or os.path.join(args.output, "sahi_env"))
    try:
        sahi_python = ensure_sahi_env(env_dir)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"could not install SAHI into {env_dir} (pip needs PyPI): {e}") from e
    detector = resolve_detector(args.config, args.weights, DEMO_WEIGHTS, args.image, args.slice, args.overlap,
                                args.seed, args.score_thresh, args.output)
    log(f"detector: {detector['note']}; score threshold {detector['score_thresh']:g}")
    payload = run_benchmark(args, detector, sahi_python)
    machine = machine_description("cpu")
    machine.update({"threads_per_side": args.threads, "cores": os.cpu_count()})
    payload.update({"machine": machine, "versions": versions()})
    print(report_table(payload), flush=True)
    if detector["kind"] == "untrained":
        print(f"note: {detector['note']}", flush=True)
    write_json(args.json, payload)
    log(f"results: {args.json}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    # bad input: 2; a side that failed (its log's last lines): 1
    return run_reporting_user_errors(lambda: validate(args) or run(args), failures=(RuntimeError,))


if __name__ == "__main__":
    sys.exit(main())
