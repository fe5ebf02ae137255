#!/usr/bin/env python
"""Export a SARL detector with its box decoding inside, and check the export against the eager model.

    python tools/export_model.py --config-file configs/sarl_yolox_aitod.yaml --output output/export \
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
import logging
import os
import sys
import warnings
from typing import Dict, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "SARL"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

logger = logging.getLogger("sarl.export")


class DecodedDetector(nn.Module):
    """images [B, 3, H, W] (H, W multiples of the size divisibility) -> (boxes [B, A, 4], scores [B, A, K])."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        d = self.detector
        x = (images - d.pixel_mean) / d.pixel_std
        features = d.backbone(x)
        outputs = d.head([features[f] for f in d.head_in_features])
        return d.head.decode(outputs)


def export_torchscript(detector: nn.Module, size: int, batch: int = 1) -> torch.jit.ScriptModule:
    wrapper = DecodedDetector(detector).eval()
    example = torch.rand(batch, 3, size, size) * 255
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trace's deprecation and "converting a tensor to a Python int" notes
        return torch.jit.trace(wrapper, example, check_trace=False)


def export_program(detector: nn.Module, size: int, max_batch: int = 64) -> "torch.export.ExportedProgram":
    """``torch.export`` of :class:`DecodedDetector` for ``[B, 3, size, size]`` inputs, B dynamic in 1..max_batch."""
    wrapper = DecodedDetector(detector).eval()
    example = torch.rand(2, 3, size, size) * 255
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with torch.no_grad():
        return torch.export.export(wrapper, (example,), dynamic_shapes={"images": {0: batch}})


@torch.no_grad()
def compare_with_eager(detector: nn.Module, exported, size: int, seed: int = 0, batch: int = 2) -> Dict[str, float]:
    """Max absolute differences of boxes and scores on random images, and of the final detections
    (the eager ``YOLODetector`` forward vs NMS over the exported outputs)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=generator) * 255
    eager_boxes, eager_scores = DecodedDetector(detector).eval()(images)
    boxes, scores = exported(images)
    diffs = {"boxes": (boxes - eager_boxes).abs().max().item(), "scores": (scores - eager_scores).abs().max().item()}
    # End to end: the detector's own inference on the same pixels vs NMS on the exported outputs.
    results = detector([{"image": img} for img in images])
    for i, result in enumerate(results):
        expected = result["instances"]
        got = detector.select_detections(boxes[i].float(), scores[i].float(), (size, size))
        n = min(len(expected), len(got))
        if len(expected) != len(got):
            diffs["detections_count"] = max(diffs.get("detections_count", 0.0), float(abs(len(expected) - len(got))))
        if n:
            diffs["detections"] = max(diffs.get("detections", 0.0), (expected.pred_boxes.tensor[:n] -
                                                                     got.pred_boxes.tensor[:n]).abs().max().item())
    return diffs


def try_export_onnx(wrapper: nn.Module, size: int, path: str) -> str:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return "ONNX export skipped: the 'onnx' package is not installed (pip install onnx onnxscript)"
    example = torch.rand(1, 3, size, size) * 255
    torch.onnx.export(wrapper.eval(), (example,), path, input_names=["images"], output_names=["boxes", "scores"])
    return f"ONNX model written to {path}"


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
    from detectron2.utils.logger import setup_logger

    setup_logger(name="sarl")
    from train_net import UserError, load_config

    from sarl.engine import YOLOTrainer, load_inference_weights

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
    model = YOLOTrainer.build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_inference_weights(model, cfg.MODEL.WEIGHTS)
    model.eval()
    os.makedirs(args.output, exist_ok=True)
    status = 0

    def check(kind: str, path: str, loaded) -> int:
        diffs = compare_with_eager(model, loaded, size)
        ok = diffs["boxes"] <= args.atol * size and diffs["scores"] <= args.atol and "detections_count" not in diffs
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
