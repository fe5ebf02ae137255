"""IoU and its GIoU / DIoU / CIoU variants of matched box pairs, in plain PyTorch.

The one implementation of these formulas in Python: the SAL reference (:mod:`sarl.ops.sal_reference`) builds
its losses on :func:`iou_loss`, and the YOLOv5 head takes its objectness targets from :func:`paired_box_iou`.
Pairs are the rows of two ``[N, 4]`` tensors (not all-against-all).

Sub-gradients, followed by the fused SAL kernels: widths, heights and overlaps are ``max(u, 0)`` whose
derivative passes where ``u >= 0`` (:func:`clamp_min0`); ``min``/``max`` ties split the derivative
equally; CIoU's ``alpha`` is a constant (no gradient), as in the CIoU paper and YOLOv5.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

__all__ = ["IOU_KINDS", "LOSS_TYPES", "clamp_min0", "box_corners", "paired_box_iou", "iou_loss"]

IOU_KINDS = ("iou", "giou", "diou", "ciou")
# "iou2" is 1 - IoU^2 (the SAL paper's and YOLOX's base loss); the others are 1 - (that kind of IoU).
LOSS_TYPES = ("iou2", "iou", "giou", "diou", "ciou")


def clamp_min0(u: torch.Tensor) -> torch.Tensor:
    """``max(u, 0)`` whose derivative passes where ``u >= 0`` (``Tensor.clamp`` passes it only where
    ``u > 0``): boxes that exactly touch still get a gradient pulling them together."""
    return torch.where(u >= 0, u, torch.zeros_like(u))


def box_corners(boxes: torch.Tensor, box_format: str) -> Tuple[torch.Tensor, ...]:
    """(x1, y1, x2, y2), each [N], from [N, 4] boxes in ``box_format`` ("xyxy" or "cxcywh")."""
    if box_format == "xyxy":
        return boxes.unbind(-1)
    cx, cy, w, h = boxes.unbind(-1)
    hw, hh = w * 0.5, h * 0.5
    return cx - hw, cy - hh, cx + hw, cy + hh


def _iou_and_penalties(pred: torch.Tensor, target: torch.Tensor, kind: str, box_format: str,
                       eps: float) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
    """IoU [N] and the penalty terms (each [N]) that ``kind`` subtracts from it (none for "iou").

    IoU = inter / (union + eps); GIoU penalty (C - union) / (C + eps), C the enclosing box's area;
    DIoU penalty rho^2 / (c^2 + eps), rho the centre distance, c the enclosing box's diagonal;
    CIoU adds alpha * v, v = 4 / pi^2 (atan(w_t / (h_t + eps)) - atan(w_p / (h_p + eps)))^2 and
    alpha = v / (1 - IoU + v + eps).
    """
    px1, py1, px2, py2 = box_corners(pred, box_format)
    tx1, ty1, tx2, ty2 = box_corners(target, box_format)
    pw, ph = clamp_min0(px2 - px1), clamp_min0(py2 - py1)
    tw, th = clamp_min0(tx2 - tx1), clamp_min0(ty2 - ty1)
    area_p, area_t = pw * ph, tw * th
    iw = clamp_min0(torch.minimum(px2, tx2) - torch.maximum(px1, tx1))
    ih = clamp_min0(torch.minimum(py2, ty2) - torch.maximum(py1, ty1))
    inter = iw * ih
    iou = inter / (area_p + area_t - inter + eps)
    if kind == "iou":
        return iou, ()
    cw = clamp_min0(torch.maximum(px2, tx2) - torch.minimum(px1, tx1))
    ch = clamp_min0(torch.maximum(py2, ty2) - torch.minimum(py1, ty1))
    if kind == "giou":
        enclosing = cw * ch
        union = area_p + area_t - inter
        return iou, ((enclosing - union) / (enclosing + eps),)
    diagonal2 = cw * cw + ch * ch + eps
    dx = (px1 + px2) / 2 - (tx1 + tx2) / 2
    dy = (py1 + py2) / 2 - (ty1 + ty2) / 2
    distance = (dx * dx + dy * dy) / diagonal2
    if kind == "diou":
        return iou, (distance,)
    diff = torch.atan(tw / (th + eps)) - torch.atan(pw / (ph + eps))
    v = (4.0 / (math.pi * math.pi)) * diff * diff
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return iou, (distance, alpha * v)


def paired_box_iou(pred: torch.Tensor, target: torch.Tensor, *, kind: str = "iou", box_format: str = "xyxy",
                   eps: float = 1e-7) -> torch.Tensor:
    """IoU (or GIoU / DIoU / CIoU) of matching rows of two box sets.

    Args:
        pred, target: [N, 4] boxes in ``box_format`` ("xyxy" or "cxcywh"), same units.
        kind: one of :data:`IOU_KINDS`.
        eps: added to the union (and to the enclosing area, diagonal and heights of the variants).
    Returns:
        [N]: IoU in [0, 1]; GIoU in (-1, 1]; DIoU in (-1, 1]; CIoU in (-1.5, 1].
    """
    if kind not in IOU_KINDS:
        raise ValueError(f"kind must be one of {IOU_KINDS}, got {kind!r}")
    iou, penalties = _iou_and_penalties(pred, target, kind, box_format, eps)
    return iou - sum(penalties) if penalties else iou


def iou_loss(pred: torch.Tensor, target: torch.Tensor, *, loss_type: str = "iou2", box_format: str = "xyxy",
             eps: float = 1e-7) -> torch.Tensor:
    """Per-pair IoU-type loss [N], unweighted: "iou2" = 1 - IoU^2, "iou" = 1 - IoU, and for
    "giou" / "diou" / "ciou" 1 - IoU plus their penalties (see :func:`paired_box_iou` for the arguments)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    iou, penalties = _iou_and_penalties(pred, target, "iou" if loss_type == "iou2" else loss_type, box_format, eps)
    if loss_type == "iou2":
        return 1 - iou * iou
    loss = 1 - iou
    for penalty in penalties:
        loss = loss + penalty
    return loss
