#!/usr/bin/env python
"""Export a SARL detector with its box decoding inside, and check each export against the eager model.

    python tools/export_model.py --config-file configs/aitod/sarl_yolox_aitod.yaml --output output/export \
        --format all MODEL.WEIGHTS output/model_final.pth

Every artifact maps ``images`` [B, 3, H, W] (float32, raw pixels in ``INPUT.FORMAT``) to ``boxes`` [B, A, 4] (XYXY
input pixels) and ``scores`` [B, A, K]; the score threshold, class-wise NMS (``torchvision.ops.batched_nms``) and
then the clipping to the image stay outside, as in the eager detector. The SARL relay is exported as standard ops,
so no artifact needs ``sarl`` to load.

Formats (``--format``; default ``export``):

- ``onnx``: ``model.onnx`` (onnxruntime); batch 1..``--max-batch``, H = W = S (S = ``--size``, default
  ``INPUT.YOLO.IMG_SIZE``). Needs onnx, onnxscript and onnxruntime (pinned in requirements.txt).
- ``export``: ``torch.export`` -> ``model.pt2``; batch 1..``--max-batch``; H = W = S, or with ``--dynamic-size``
  any H, W that are multiples of ``MODEL.YOLO.SIZE_DIVISIBILITY`` up to ``--max-size``.
- ``torchscript``: ``torch.jit.trace`` -> ``model.ts`` (deprecated in torch 2.14); dynamic batch, H = W = S.
- ``all``: the three.

The accepted input is printed and stored in the artifact (ONNX ``metadata_props``, the ``sarl_metadata.json`` extra
file of .pt2 / .ts). Each file is loaded back and compared with the eager model on seeded images: boxes, scores, and
the detections after threshold, NMS and clipping (at a threshold chosen so that there are detections). Exit status:
0 all match; 1 an export failed or differs by more than ``--atol`` (scores; boxes: ``--atol`` x the input size in
pixels), with one line; 2 bad arguments or missing packages.
``SARL_DEBUG=1`` shows tracebacks.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

# fvcore scripts a loss with torch.jit at import, which recent torch flags as deprecated: noise before every line.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from detectron2.utils.logger import setup_logger  # noqa: E402

from sarl.config import UserError, load_config, run_reporting_user_errors  # noqa: E402
from sarl.inference import build_inference_model  # noqa: E402
from sarl.inference import export  # noqa: E402

FORMATS = ("onnx", "export", "torchscript")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", default="output/export", help="folder of the exported files")
    parser.add_argument("--size", type=int, default=0, help="input size S (default INPUT.YOLO.IMG_SIZE)")
    parser.add_argument("--format", choices=FORMATS + ("all",), default="export")
    parser.add_argument("--max-batch", type=int, default=64, help="largest batch the exports accept")
    parser.add_argument("--dynamic-size", action="store_true",
                        help="model.pt2 accepts any H, W that are multiples of the size divisibility up to --max-size")
    parser.add_argument("--max-size", type=int, default=2048, help="largest H, W of --dynamic-size")
    parser.add_argument("--atol", type=float, default=1e-3,
                        help="largest accepted difference to the eager model: scores; boxes: atol x input size px")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def export_spec(args, cfg) -> export.ExportSpec:
    """The accepted inputs from the arguments; :class:`UserError` naming the argument when they do not fit."""
    divisibility = cfg.MODEL.YOLO.SIZE_DIVISIBILITY
    size = args.size or cfg.INPUT.YOLO.IMG_SIZE
    if size <= 0 or size % divisibility:
        raise UserError(f"--size {size} must be a positive multiple of MODEL.YOLO.SIZE_DIVISIBILITY ({divisibility})")
    if args.max_batch < 1:
        raise UserError(f"--max-batch {args.max_batch} must be at least 1")
    if args.dynamic_size and args.format not in ("export", "all"):
        raise UserError("--dynamic-size applies to model.pt2: use it with --format export or all")
    if args.dynamic_size and (args.max_size < max(size, 2 * divisibility) or args.max_size % divisibility):
        raise UserError(f"--max-size {args.max_size} must be a multiple of {divisibility} and at least --size {size}")
    return export.ExportSpec(size, divisibility, args.max_batch, args.max_size if args.dynamic_size else 0)


def run(args) -> int:
    cfg = load_config(args.config_file, args.opts)
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    spec = export_spec(args, cfg)
    formats = FORMATS if args.format == "all" else (args.format,)
    if "onnx" in formats:
        export.require_onnx()
    model = build_inference_model(cfg)
    os.makedirs(args.output, exist_ok=True)
    status = 0
    for kind in formats:
        # The ONNX file keeps a fixed size; --dynamic-size is for model.pt2 only.
        kind_spec = spec if kind == "export" else export.ExportSpec(spec.size, spec.divisibility, spec.max_batch)
        path = os.path.join(args.output, export.ARTIFACT_FILES[kind])
        try:
            report = export.export_and_check(kind, model, kind_spec, path, cfg.INPUT.FORMAT)
        except Exception as e:  # an exporter's failure: one line, the traceback under SARL_DEBUG
            if os.environ.get("SARL_DEBUG"):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"error: {kind} export to {path} failed: {type(e).__name__}: {first}", file=sys.stderr, flush=True)
            status = 1
            continue
        problems = report.problems(args.atol)
        if problems:
            print(f"error: {path} differs from the eager model: {'; '.join(problems)}", file=sys.stderr, flush=True)
            status = 1
            continue
        checks = ", ".join(f"{c.image_size[0]}x{c.image_size[1]}: boxes {c.boxes:.2g} px, scores {c.scores:.2g}, "
                           f"{c.eager_detections} detections identical"
                           + (" (tied scores ranked by the eager ones)" if c.ranked_by_eager_scores else "")
                           for c in report.comparisons)
        print(f"{path} ({report.seconds:.1f} s): accepts images {kind_spec.describe()}, {cfg.INPUT.FORMAT}; "
              f"vs eager ({checks}) -> OK", flush=True)
    return status


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="sarl")
    return run_reporting_user_errors(run, args)


if __name__ == "__main__":
    sys.exit(main())
