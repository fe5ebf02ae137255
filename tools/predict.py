#!/usr/bin/env python
"""Run a trained SARL detector on images and videos: draw boxes (class, score), write COCO-json results.

    python tools/predict.py --config-file configs/aitod/sarl_yolox_aitod.yaml --input img.png folder/ "tiles/*.tif" \\
        clip.mp4 --output output/predict MODEL.WEIGHTS output/model_final.pth
    # results that score against the dataset's own COCO json (its image and category ids)
    python tools/predict.py ... --coco-json datasets/AI-TOD/annotations/small_test_v1_1.0.json
    # fixed 800 px tiles with 20% overlap, 4 tiles per batch; --slice 0 (or --no-slice) never tiles
    python tools/predict.py ... --slice 800 --overlap 0.2 --batch 4

Tiling (``--slice auto``, the default): a config evaluated sliced (``TEST.SLICED.ENABLED``) predicts as it is
evaluated; otherwise images whose long side exceeds 2 x ``INPUT.YOLO.IMG_SIZE`` are tiled at ``IMG_SIZE`` px at native
resolution and smaller ones letterboxed to ``IMG_SIZE``. With ``--slice N``, images not larger than N are letterboxed
and the log says so for each. Class names: ``--class-names``, else those stored in the checkpoint at training time,
else the config's datasets' (logged as a guess). Outputs: ``vis/<name>.jpg``, ``results.json`` (``image_id`` /
``category_id`` from ``--coco-json`` when given, else the file name and the 0-based class id; ``category_name``
always), and per video ``vis/<name>.mp4`` + ``videos/<name>.json`` (detections of every frame). A progress bar with
the time left runs on a terminal (a log line every 10 s otherwise). The Python API is
:class:`sarl.inference.Predictor`; bad arguments stop with one line (``SARL_DEBUG=1`` shows the traceback).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings

# fvcore scripts a loss with torch.jit at import, which recent torch flags as deprecated: noise on stderr before
# every one-line error, nothing the user can act on.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from detectron2.utils.logger import setup_logger  # noqa: E402

from sarl.config import UserError, load_config, run_reporting_user_errors  # noqa: E402
from sarl.inference import CocoJsonIds, Predictor, expand_inputs, parse_class_names, predict_files  # noqa: E402
from sarl.inference.slice_policy import (check_batch_size, check_overlap, check_slice_size,  # noqa: E402
                                         parse_slice_size)

logger = logging.getLogger("sarl.predict")
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block), exit status 2."""

    def error(self, message: str):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _slice_arg(text: str):
    try:
        return parse_slice_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _float_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def get_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="images, videos, folders or glob patterns")
    parser.add_argument("--output", default="output/predict", help="folder for vis/, videos/ and results.json")
    parser.add_argument("--slice", type=_slice_arg, default=None, metavar="auto|0|N",
                        help="tile size: auto (default), 0 never, N: tile images larger than N px (a multiple of "
                             "the model's size divisibility, 32)")
    parser.add_argument("--no-slice", dest="slice", action="store_const", const=0, help="same as --slice 0")
    parser.add_argument("--overlap", type=_float_arg, default=None, help="tile overlap, fraction of the tile in [0, 1) "
                        "(default TEST.SLICED.OVERLAP, 0.2)")
    parser.add_argument("--batch", type=int, default=None, help="tiles per model call (default TEST.SLICED.BATCH_SIZE)")
    parser.add_argument("--vis-score", type=_float_arg, default=0.3, help="draw detections above this score")
    parser.add_argument("--no-vis", action="store_true", help="no pictures or annotated videos")
    parser.add_argument("--class-names", default="", metavar="NAMES|FILE",
                        help="class names, comma-separated (car,truck) or a names file (one a line); default: the "
                             "checkpoint's")
    parser.add_argument("--metadata", default="", help="a registered dataset whose class names to use")
    parser.add_argument("--coco-json", default="", metavar="ANN.json",
                        help="a COCO json: results.json gets its image ids (by file name) and category ids (by name)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def split_config_overrides(args) -> None:
    """``--input a.png MODEL.WEIGHTS w.pth``: nargs="+" takes the overrides as inputs; give them back to ``opts``
    (a config key is upper case with dots, which no sensible image path is)."""
    for index, item in enumerate(args.input):
        if index and CONFIG_KEY.match(item):
            args.opts = args.input[index:] + list(args.opts)
            args.input = args.input[:index]
            return


def run(args) -> int:
    cfg = load_config(args.config_file, args.opts)
    # Settings first, before minutes of model building and data reading.
    check_slice_size(args.slice, cfg.MODEL.YOLO.SIZE_DIVISIBILITY, "--slice")
    if args.overlap is not None:
        check_overlap(args.overlap, "--overlap")
    if args.batch is not None:
        check_batch_size(args.batch, "--batch")
    files = expand_inputs(args.input)
    class_names = parse_class_names(args.class_names) if args.class_names else None
    if args.coco_json and not os.path.isfile(args.coco_json):
        raise UserError(f"--coco-json {args.coco_json}: no such file")
    predictor = Predictor.from_cfg(cfg, slice_size=args.slice, overlap=args.overlap, batch_size=args.batch,
                                   metadata_name=args.metadata or None, class_names=class_names)
    coco_ids = CocoJsonIds(args.coco_json, predictor.class_names) if args.coco_json else None
    summary = predict_files(predictor, files, args.output, args.vis_score, not args.no_vis, coco_ids)
    for line in summary.lines():
        print(line, flush=True)
    if summary.predicted == 0:
        first = summary.unreadable[0] if summary.unreadable else ""
        raise UserError(f"--input: nothing was predicted: none of the {len(files)} files could be read "
                        f"(first: {first})")
    return 0


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    split_config_overrides(args)
    setup_logger(name="sarl")
    setup_logger(name="detectron2")
    return run_reporting_user_errors(run, args, user_errors=(FileNotFoundError,))


if __name__ == "__main__":
    sys.exit(main())
