#!/usr/bin/env python
"""Export a SARL detector with its box decoding inside, and check the export against the eager model.

    python tools/export_model.py --config-file configs/aitod/sarl_yolox_aitod.yaml --output output/export \
        MODEL.WEIGHTS output/model_final.pth

The exported graph maps ``images`` [B, 3, S, S] (float, raw pixels in ``INPUT.FORMAT``, S = ``INPUT.YOLO.IMG_SIZE``
or ``--size``) to ``boxes`` [B, A, 4] (XYXY input pixels) and ``scores`` [B, A, K] (objectness folded in): the
normalisation, backbone, SARL, neck, head and decode run inside; thresholding and class-wise NMS stay outside
(``torchvision.ops.batched_nms``), as their output size depends on the data.

Formats (``--format``):

- ``export`` (default): ``torch.export`` -> ``model.pt2``, the format torch now recommends (TorchScript is
  deprecated in torch 2.14). The batch size is dynamic (1-``--max-batch``); S is fixed. With
  ``MODEL.SARL.FUSED True`` the graph calls the fused ``sarl::relay_pool`` / ``sarl::relay_gate`` ops, so the
  process that loads it must ``import sarl.ops`` first::

      import sarl.ops, torch
      detector = torch.export.load("output/export/model.pt2").module()
      boxes, scores = detector(images)

- ``torchscript``: ``torch.jit.trace`` -> ``model.ts`` (batch and anchor grid fixed to the traced shape).
- ``onnx``: needs the ``onnx`` package (and ``onnxscript`` for torch's exporter); when they are not installed the
  ONNX export is skipped with a message (this project's pinned environment does not include them).

Every export is loaded back and compared with the eager model (boxes, scores, and the detections after NMS); the
command exits 1 when a difference exceeds ``--atol``.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from detectron2.utils.logger import setup_logger

from sarl.config import UserError, load_config
from sarl.inference import build_inference_model
from sarl.inference.export import (DecodedDetector, compare_with_eager, export_program, export_torchscript,
                                   try_export_onnx, within_tolerance)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", default="output/export")
    parser.add_argument("--size", type=int, default=0, help="input size (default INPUT.YOLO.IMG_SIZE)")
    parser.add_argument("--format", choices=["export", "torchscript", "onnx", "all"], default="export")
    parser.add_argument("--max-batch", type=int, default=64, help="largest batch of the torch.export model")
    parser.add_argument("--atol", type=float, default=1e-3, help="largest accepted difference to the eager model")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    setup_logger(name="sarl")
    try:
        cfg = load_config(args.config_file, args.opts)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    size = args.size or cfg.INPUT.YOLO.IMG_SIZE
    if size % cfg.MODEL.YOLO.SIZE_DIVISIBILITY:
        print(f"error: --size {size} is not a multiple of MODEL.YOLO.SIZE_DIVISIBILITY "
              f"({cfg.MODEL.YOLO.SIZE_DIVISIBILITY})", file=sys.stderr)
        return 2
    model = build_inference_model(cfg)
    os.makedirs(args.output, exist_ok=True)
    status = 0

    def check(kind: str, path: str, loaded) -> int:
        diffs = compare_with_eager(model, loaded, size)
        ok = within_tolerance(diffs, size, args.atol)
        print(f"{kind} model written to {path}; max |difference| to eager: {diffs} -> {'OK' if ok else 'MISMATCH'}")
        return 0 if ok else 1

    if args.format in ("export", "all"):
        path = os.path.join(args.output, "model.pt2")
        torch.export.save(export_program(model, size, args.max_batch), path)
        status |= check("torch.export", path, torch.export.load(path).module())
    if args.format in ("torchscript", "all"):
        path = os.path.join(args.output, "model.ts")
        export_torchscript(model, size).save(path)
        status |= check("TorchScript", path, torch.jit.load(path))
    if args.format in ("onnx", "all"):
        print(try_export_onnx(DecodedDetector(model), size, os.path.join(args.output, "model.onnx")))
    return status


if __name__ == "__main__":
    sys.exit(main())
