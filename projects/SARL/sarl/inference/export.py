"""Exports of a SARL detector with its box decoding inside, and their check against the eager model.

The exported graph maps ``images`` [B, 3, S, S] (float, raw pixels in ``INPUT.FORMAT``) to ``boxes`` [B, A, 4]
(XYXY input pixels) and ``scores`` [B, A, K] (objectness folded in): the normalisation, backbone, SARL, neck, head
and decode run inside; thresholding and class-wise NMS stay outside (``torchvision.ops.batched_nms``), as their
output size depends on the data. ``tools/export_model.py`` is the command line.
"""
from __future__ import annotations

import warnings
from typing import Dict, Tuple

import torch
import torch.nn as nn

__all__ = ["DecodedDetector", "export_torchscript", "export_program", "compare_with_eager", "within_tolerance",
           "try_export_onnx"]


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
    """``torch.jit.trace`` of :class:`DecodedDetector` for ``[batch, 3, size, size]`` inputs (shapes fixed)."""
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


def within_tolerance(diffs: Dict[str, float], size: int, atol: float) -> bool:
    """Whether :func:`compare_with_eager`'s differences pass: boxes within ``atol * size`` px, scores within
    ``atol``, and the same number of detections."""
    return diffs["boxes"] <= atol * size and diffs["scores"] <= atol and "detections_count" not in diffs


def try_export_onnx(wrapper: nn.Module, size: int, path: str) -> str:
    """ONNX export of ``wrapper`` to ``path`` when the ``onnx`` package is installed; returns what happened."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return "ONNX export skipped: the 'onnx' package is not installed (pip install onnx onnxscript)"
    example = torch.rand(1, 3, size, size) * 255
    torch.onnx.export(wrapper.eval(), (example,), path, input_names=["images"], output_names=["boxes", "scores"])
    return f"ONNX model written to {path}"
