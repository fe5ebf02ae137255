"""Exports of a SARL detector with its box decoding inside, and their check against the eager model.

Every artifact maps ``images`` [B, 3, H, W] (float32, raw pixels in ``INPUT.FORMAT``) to ``boxes`` [B, A, 4] (XYXY
input pixels) and ``scores`` [B, A, K] (class score times objectness). Normalisation, backbone, SARL, neck, head and
decoding run inside; the score threshold, class-wise NMS (``torchvision.ops.batched_nms``) and the clipping to the
image stay outside, in that order, as in the eager detector: their output size depends on the data, and clipping
before NMS would change which boxes NMS keeps (its IoUs are those of the unclipped boxes).

The SARL relay runs as standard ops in every artifact (:func:`unfused_relay` swaps the fused ``sarl::relay_*``
kernels for their pure-PyTorch references, the same math), so no artifact needs this package to load:

- ONNX (``model.onnx``, onnxruntime): dynamic batch, H = W = S fixed;
- ``torch.export`` (``model.pt2``): dynamic batch; H = W = S fixed, or (``max_size``) H and W dynamic multiples of
  the size divisibility up to ``max_size``;
- TorchScript (``model.ts``, ``torch.jit.trace``): dynamic batch, H = W = S fixed.

Each artifact carries :func:`artifact_metadata` (ONNX ``metadata_props``; the ``sarl_metadata.json`` extra file of
the others). :func:`export_and_check` writes one, loads it back (:func:`load_artifact`) and
compares it with the eager model on detections (:func:`compare_with_eager`). ``tools/export_model.py`` is the
command line.
"""
from __future__ import annotations

import json
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..config import UserError
from ..modeling.assigners.simota import AnchorPoints
from ..modeling.heads.yolox_head import YOLOXHead, YOLOXOutputs
from ..modeling.relay import SARLRelay

__all__ = ["ARTIFACT_FILES", "Comparison", "DecodedDetector", "ExportReport", "ExportSpec", "METADATA_FILE",
           "artifact_metadata", "check_threshold", "compare_with_eager", "export_and_check", "export_onnx",
           "export_program", "export_torchscript", "load_artifact", "require_onnx",
           "unfused_relay"]

METADATA_FILE = "sarl_metadata.json"  # extra file of .pt2 and TorchScript artifacts
ARTIFACT_FILES = {"onnx": "model.onnx", "export": "model.pt2", "torchscript": "model.ts"}
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
_Runner = Callable[[Tensor], Tuple[Tensor, Tensor]]


@contextmanager
def unfused_relay(model: nn.Module) -> Iterator[int]:
    """Within the block every :class:`SARLRelay` of ``model`` runs its pure-PyTorch references instead of the fused
    ``sarl::relay_pool`` / ``relay_gate`` ops (numerically the same), so exporters see standard ops only; the
    flags are restored on exit. Yields the number of relay modules switched."""
    relays = [m for m in model.modules() if isinstance(m, SARLRelay)]
    saved = [relay.fused for relay in relays]
    try:
        for relay in relays:
            relay.fused = False
        yield len(relays)
    finally:
        for relay, fused in zip(relays, saved):
            relay.fused = fused


@contextmanager
def _torchscript_quietly() -> Iterator[None]:
    """TorchScript's deprecation notes (torch 2.14 warns on every trace, save and load) are noise in a tool."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        yield


def _yolox_decode_any_size(head: YOLOXHead, features: List[Tensor]) -> Tuple[Tensor, Tensor]:
    """``head.decode(head(features))`` with the anchor grid built from tensor shapes. The head's own forward keys
    its anchor cache by Python ints, which would fix H and W to the example's in a dynamic-size ``torch.export``."""
    cls_all, reg_all, obj_all, grids, strides = [], [], [], [], []
    for level, x in enumerate(features):
        x = head.stems[level](x)
        cls_feat, reg_feat = head.cls_convs[level](x), head.reg_convs[level](x)
        cls_all.append(head.cls_preds[level](cls_feat).flatten(2).transpose(1, 2))
        reg_all.append(head.reg_preds[level](reg_feat).flatten(2).transpose(1, 2))
        obj_all.append(head.obj_preds[level](reg_feat).flatten(1))
        ys, xs = torch.meshgrid(torch.arange(x.shape[-2], dtype=x.dtype, device=x.device),
                                torch.arange(x.shape[-1], dtype=x.dtype, device=x.device), indexing="ij")
        grids.append(torch.stack([xs, ys], dim=-1).reshape(-1, 2))
        strides.append(torch.full_like(xs.reshape(-1), head.strides[level]))
    grid, stride = torch.cat(grids), torch.cat(strides)
    anchors = AnchorPoints(grid, stride, (grid + 0.5) * stride[:, None], [])
    return head.decode(YOLOXOutputs(torch.cat(cls_all, 1), torch.cat(reg_all, 1), torch.cat(obj_all, 1), anchors))


class DecodedDetector(nn.Module):
    """images [B, 3, H, W] (raw pixels; H, W multiples of the size divisibility) -> boxes [B, A, 4] (XYXY input
    pixels), scores [B, A, K]. ``any_size``: build the YOLOX anchor grid from shapes (dynamic-size export)."""

    def __init__(self, detector: nn.Module, any_size: bool = False):
        super().__init__()
        self.detector = detector
        self.any_size = bool(any_size) and isinstance(detector.head, YOLOXHead)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        d = self.detector
        features = d.backbone((images - d.pixel_mean) / d.pixel_std)
        features = [features[f] for f in d.head_in_features]
        return _yolox_decode_any_size(d.head, features) if self.any_size else d.head.decode(d.head(features))


@dataclass(frozen=True)
class ExportSpec:
    """The inputs an artifact accepts: batch 1..``max_batch``; H = W = ``size``, or with ``max_size`` > 0 any H and
    W that are multiples of ``divisibility`` in ``[2 * divisibility, max_size]``."""

    size: int
    divisibility: int
    max_batch: int = 64
    max_size: int = 0

    # torch.export enforces the batch range and min/max sizes, but a size that is no multiple of the divisibility
    # gets through its input check (torch 2.14) and runs unpadded, where the eager detector pads to a multiple.
    @property
    def min_size(self) -> int:
        return 2 * self.divisibility if self.max_size else self.size

    def describe(self) -> str:
        sizes = (f"H, W multiples of {self.divisibility} in {self.min_size}..{self.max_size}" if self.max_size
                 else f"H = W = {self.size}")
        return f"[B, 3, H, W] float32, B 1..{self.max_batch}, {sizes}"


def artifact_metadata(detector: nn.Module, spec: ExportSpec, input_format: str, kind: str) -> Dict[str, str]:
    """What a user of the artifact needs to feed it and to finish the detections (all values strings)."""
    return {
        "sarl_format": kind,
        "input": f"images {spec.describe()}, raw {input_format} pixels 0..255 (normalisation is inside)",
        "input_format": input_format,
        "input_size": str(spec.size) if not spec.max_size else "dynamic",
        "min_size": str(spec.min_size),
        "max_size": str(spec.max_size or spec.size),
        "size_divisibility": str(spec.divisibility),
        "max_batch": str(spec.max_batch),
        "outputs": "boxes [B, A, 4] XYXY input pixels; scores [B, A, K] in [0, 1]",
        "postprocess": "per image: score > score_thresh, torchvision.ops.batched_nms(nms_thresh), first "
                       "detections_per_image, then clip the boxes to the image and drop empty ones",
        "num_classes": str(detector.head.num_classes),
        "score_thresh": str(detector.score_thresh),
        "nms_thresh": str(detector.nms_thresh),
        "detections_per_image": str(detector.max_detections_per_image),
        "multi_label": str(bool(detector.multi_label)),
        "class_agnostic_nms": str(bool(detector.class_agnostic_nms)),
    }


def require_onnx() -> None:
    """Raise :class:`UserError` naming the missing packages when the ONNX exporter or runtime cannot be imported."""
    missing = []
    for name in ONNX_PACKAGES:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"--format onnx needs the packages {', '.join(ONNX_PACKAGES)} (pinned in requirements.txt: "
                        f"pip install -r requirements.txt); missing: {', '.join(missing)}")


def _example(spec: ExportSpec, batch: int = 2) -> Tensor:
    return torch.rand(batch, 3, spec.size, spec.size, generator=torch.Generator().manual_seed(0)) * 255


def _dynamic_shapes(spec: ExportSpec) -> Dict[str, Dict[int, object]]:
    dims: Dict[int, object] = {0: torch.export.Dim("batch", min=1, max=spec.max_batch)}
    if spec.max_size:
        blocks = spec.max_size // spec.divisibility
        dims[2] = spec.divisibility * torch.export.Dim("height_blocks", min=2, max=blocks)
        dims[3] = spec.divisibility * torch.export.Dim("width_blocks", min=2, max=blocks)
    return {"images": dims}


def export_program(detector: nn.Module, spec: ExportSpec) -> "torch.export.ExportedProgram":
    """``torch.export`` of :class:`DecodedDetector` (relay unfused) for the inputs of ``spec``."""
    wrapper = DecodedDetector(detector, any_size=bool(spec.max_size)).eval()
    with torch.no_grad(), unfused_relay(detector):
        return torch.export.export(wrapper, (_example(spec),), dynamic_shapes=_dynamic_shapes(spec))


def export_onnx(detector: nn.Module, spec: ExportSpec, path: str, metadata: Dict[str, str]) -> None:
    """ONNX file (one file, weights inside) of :class:`DecodedDetector` with the relay unfused, through torch's
    exporter; ``metadata`` goes to the model's ``metadata_props``. Dynamic batch; H = W = ``spec.size``."""
    if spec.max_size:
        raise ValueError("the ONNX export takes a fixed input size (max_size must be 0)")
    wrapper = DecodedDetector(detector).eval()
    with torch.no_grad(), unfused_relay(detector), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapper, (_example(spec),), dynamo=True, verbose=False, external_data=False,
                                    input_names=["images"], output_names=["boxes", "scores"],
                                    dynamic_shapes=_dynamic_shapes(spec))
    program.model.metadata_props.update(metadata)
    program.save(path, external_data=False)


def export_torchscript(detector: nn.Module, spec: ExportSpec) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of :class:`DecodedDetector` with the relay unfused (no ``sarl`` op in the graph, so it
    loads without this package). The batch stays dynamic; H = W = ``spec.size`` (the anchor grid is traced)."""
    wrapper = DecodedDetector(detector).eval()
    with torch.no_grad(), unfused_relay(detector), _torchscript_quietly(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # "converting a tensor to a Python int" notes
        return torch.jit.trace(wrapper, _example(spec), check_trace=False)


def _write_artifact(kind: str, detector: nn.Module, spec: ExportSpec, path: str, metadata: Dict[str, str]) -> None:
    if kind == "onnx":
        export_onnx(detector, spec, path, metadata)
    elif kind == "export":
        torch.export.save(export_program(detector, spec), path, extra_files={METADATA_FILE: json.dumps(metadata)})
    elif kind == "torchscript":
        with _torchscript_quietly():
            torch.jit.save(export_torchscript(detector, spec), path,
                           _extra_files={METADATA_FILE: json.dumps(metadata)})
    else:
        raise ValueError(f"unknown export kind {kind!r}; expected one of {sorted(ARTIFACT_FILES)}")


def load_artifact(path: str) -> _Runner:
    """A callable ``images [B, 3, H, W] float32 -> (boxes, scores)`` tensors running the exported file: ONNX through
    onnxruntime (CPU), ``.pt2`` through ``torch.export.load``, ``.ts`` through ``torch.jit.load``."""
    if path.endswith(".onnx"):
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

        def run_onnx(images: Tensor) -> Tuple[Tensor, Tensor]:
            boxes, scores = session.run(["boxes", "scores"], {"images": images.contiguous().numpy()})
            return torch.from_numpy(boxes), torch.from_numpy(scores)

        return run_onnx
    if path.endswith(".pt2"):
        module = torch.export.load(path).module()
    else:
        with _torchscript_quietly():
            module = torch.jit.load(path)
    return lambda images: module(images)


@dataclass
class Comparison:
    """An artifact against the eager detector on ``batch`` seeded random images of ``image_size``: largest absolute
    differences of the raw outputs (``boxes`` in pixels, ``scores``), and of the detections after thresholding at
    ``score_thresh``, NMS and clipping (the eager model's own forward vs the same steps on the artifact's outputs).
    ``ranked_by_eager_scores``: the artifact's scores rank the candidates differently from the eager ones (scores
    that tie within float rounding, e.g. of an untrained model, all near the prior), so its boxes went through NMS
    in the eager order: a tie cannot tell two runtimes apart, and ``scores`` still compares every score."""

    image_size: Tuple[int, int]
    batch: int
    score_thresh: float
    boxes: float = 0.0
    scores: float = 0.0
    ranked_by_eager_scores: bool = False
    eager_detections: int = 0
    exported_detections: int = 0
    same_classes: bool = True
    detection_boxes: float = 0.0
    detection_scores: float = 0.0

    def problems(self, atol: float) -> List[str]:
        """What differs by more than ``atol`` (scores; boxes: ``atol`` x the larger image side, in pixels, as float
        rounding grows with the coordinates); [] when the artifact matches the eager model."""
        box_tol = atol * max(self.image_size)
        found = [f"{name} max |diff| {value:.3g}{unit} > {tol:.3g}{unit}" for name, value, tol, unit in
                 (("boxes", self.boxes, box_tol, " px"), ("scores", self.scores, atol, ""),
                  ("detection boxes", self.detection_boxes, box_tol, " px"),
                  ("detection scores", self.detection_scores, atol, "")) if not value <= tol]  # NaN fails too
        if self.eager_detections != self.exported_detections:
            found.append(f"{self.exported_detections} detections vs {self.eager_detections} eager")
        elif not self.same_classes:
            found.append("detection classes differ")
        if not self.eager_detections:
            found.append("no detections to compare")
        return found


def check_threshold(scores: Tensor, per_image: int = 100) -> float:
    """A score threshold keeping about ``per_image`` (anchor, class) pairs per image of ``scores`` [B, A, K], so
    that a check has detections whatever the model's own threshold: the middle of the widest gap between the
    sorted scores from that rank to 4x it, where float rounding is least likely to move a pair across."""
    flat = scores.flatten().sort(descending=True).values
    lo = min(per_image * scores.shape[0], flat.numel() - 1)
    hi = min(4 * lo, flat.numel() - 1)
    if lo <= 0:
        return 0.0
    window = flat[lo - 1:hi + 1]
    gap = int((window[:-1] - window[1:]).argmax())
    return float((window[gap] + window[gap + 1]) / 2)


def _same_ranking(eager_scores: Tensor, scores: Tensor, threshold: float) -> bool:
    """Whether ``scores`` [B, A, K] keep the same (anchor, class) pairs above ``threshold`` as ``eager_scores``, in
    the same order: then NMS sees the same sequence, and only the boxes can change its result."""
    for expected, got in zip(eager_scores, scores):
        kept = expected > threshold
        if not torch.equal(kept, got > threshold) or not torch.equal(
                expected[kept].argsort(descending=True, stable=True), got[kept].argsort(descending=True, stable=True)):
            return False
    return True


@torch.no_grad()
def compare_with_eager(detector: nn.Module, run: _Runner, image_size: Tuple[int, int], batch: int = 3,
                       seed: int = 0) -> Comparison:
    """:class:`Comparison` of ``run`` (an artifact, :func:`load_artifact`) with ``detector`` (eager, as configured:
    fused relay ops included) on seeded random images [batch, 3, H, W] of raw pixels."""
    height, width = image_size
    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 255
    eager_boxes, eager_scores = DecodedDetector(detector).eval()(images)
    boxes, scores = (t.float() for t in run(images))
    result = Comparison((height, width), batch, check_threshold(eager_scores),
                        boxes=(boxes - eager_boxes).abs().max().item(),
                        scores=(scores - eager_scores).abs().max().item())
    result.ranked_by_eager_scores = not _same_ranking(eager_scores, scores, result.score_thresh)
    nms_scores = eager_scores if result.ranked_by_eager_scores else scores
    configured = detector.score_thresh
    detector.score_thresh = result.score_thresh
    try:
        inputs = [{"image": image} for image in images]
        eager = [out["instances"] for out in detector(inputs)]
        # The eager model's own selection (threshold, NMS) and postprocessing (clip, drop empty) on the outputs.
        selected = [detector.select_detections(boxes[i], nms_scores[i], image_size) for i in range(batch)]
        exported = [out["instances"] for out in detector.postprocess(selected, inputs, [image_size] * batch)]
    finally:
        detector.score_thresh = configured
    for expected, got in zip(eager, exported):
        result.eager_detections += len(expected)
        result.exported_detections += len(got)
        if len(expected) != len(got) or not len(got):
            continue
        result.same_classes &= bool(torch.equal(expected.pred_classes, got.pred_classes))
        result.detection_boxes = max(result.detection_boxes,
                                     (expected.pred_boxes.tensor - got.pred_boxes.tensor).abs().max().item())
        result.detection_scores = max(result.detection_scores, (expected.scores - got.scores).abs().max().item())
    return result


@dataclass
class ExportReport:
    """One written artifact: where, how long the export took, and its comparisons with the eager model."""

    kind: str
    path: str
    spec: ExportSpec
    seconds: float
    comparisons: List[Comparison] = field(default_factory=list)

    def problems(self, atol: float) -> List[str]:
        return [f"{c.image_size[0]}x{c.image_size[1]}: {p}" for c in self.comparisons for p in c.problems(atol)]


def _check_sizes(spec: ExportSpec) -> Sequence[Tuple[int, int]]:
    """The export size, and with a dynamic size also a non-square other one (both dimensions must follow)."""
    if not spec.max_size:
        return [(spec.size, spec.size)]
    other_h = spec.size + spec.divisibility if spec.size + spec.divisibility <= spec.max_size else spec.min_size
    other_w = max(spec.min_size, spec.size - spec.divisibility)
    if (other_h, other_w) == (spec.size, spec.size):
        return [(spec.size, spec.size)]
    return [(spec.size, spec.size), (other_h, other_w)]


def export_and_check(kind: str, detector: nn.Module, spec: ExportSpec, path: str, input_format: str,
                     runner: Optional[Callable[[str], _Runner]] = None) -> ExportReport:
    """Write the ``kind`` artifact ("onnx", "export", "torchscript") to ``path`` with its metadata, load it back
    (``runner``, default :func:`load_artifact`) and compare it with the eager ``detector`` at the sizes it accepts."""
    start = time.perf_counter()
    _write_artifact(kind, detector, spec, path, artifact_metadata(detector, spec, input_format, kind))
    report = ExportReport(kind, path, spec, time.perf_counter() - start)
    run = (runner or load_artifact)(path)
    report.comparisons = [compare_with_eager(detector, run, size) for size in _check_sizes(spec)]
    return report
