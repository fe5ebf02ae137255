"""Box regression loss shared by the YOLO heads: the Scale-Adaptive Loss (SAL) or its plain base.

Both heads call :func:`sal_box_loss` on their foreground pairs; the loss itself is the fused op
``sarl.ops.scale_adaptive_iou_loss`` (pure-PyTorch fallback when ``sarl._C`` is not built).

``MODEL.SAL`` keys: ``ENABLED`` (False: weights 1, i.e. the plain IoU loss of ``LOSS_TYPE``),
``BETA``, ``LOSS_TYPE`` ("iou2" = 1 - IoU^2, the paper's and YOLOX's), ``NORMALIZE``
("batch": min-max of the target areas over the whole batch, as the paper; "image"; "fixed"
with ``AREA_RANGE``), ``ALPHA`` (the heads' weight on this term).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from sarl.ops import PAPER_SAL_BETA, scale_adaptive_iou_loss

__all__ = ["SALParams", "sal_box_loss", "current_iteration", "check_finite_predictions"]


@dataclass(frozen=True)
class SALParams:
    """The ``MODEL.SAL`` settings as plain values; :meth:`from_config` is the one place that reads them."""

    enabled: bool = True
    beta: float = PAPER_SAL_BETA
    loss_type: str = "iou2"
    normalize: str = "batch"
    area_range: Optional[Tuple[float, float]] = None
    alpha: float = 5.0
    eps: float = 1e-7

    @classmethod
    def from_config(cls, cfg, loss_type: Optional[str] = None) -> "SALParams":
        """Read ``cfg.MODEL.SAL``; ``loss_type`` overrides ``MODEL.SAL.LOSS_TYPE`` (the YOLOv5
        head passes its own base loss when SAL is off)."""
        sal = cfg.MODEL.SAL
        area_range = tuple(float(v) for v in sal.AREA_RANGE) if sal.NORMALIZE == "fixed" else None
        return cls(enabled=bool(sal.ENABLED), beta=float(sal.BETA),
                   loss_type=loss_type or str(sal.LOSS_TYPE), normalize=str(sal.NORMALIZE),
                   area_range=area_range, alpha=float(sal.ALPHA))


def sal_box_loss(params: SALParams, pred_xyxy: Tensor, target_xyxy: Tensor,
                 batch_index: Optional[Tensor] = None, *, weight: Optional[Tensor] = None,
                 reduction: str = "sum") -> Tensor:
    """SAL (or the plain IoU-type loss when disabled) of matched box pairs, **not** times alpha.

    Args:
        params: the settings (``SALParams.from_config(cfg)``).
        pred_xyxy: [M, 4] predicted boxes of the foreground samples of the whole batch.
        target_xyxy: [M, 4] their ground-truth boxes (same pixel units).
        batch_index: [M] int64 image of each pair (needed for ``NORMALIZE "image"``).
        weight: optional [M] per-pair multiplier.
        reduction: "sum" (default; the heads divide by their normaliser), "mean" or "none".

    Returns:
        a scalar (or [M] for ``reduction="none"``); 0 with a zero gradient when ``M == 0``.
    """
    normalize = params.normalize if params.enabled else "none"
    if batch_index is not None:
        batch_index = batch_index.long()
    return scale_adaptive_iou_loss(
        pred_xyxy, target_xyxy, beta=params.beta, loss_type=params.loss_type, box_format="xyxy",
        normalize=normalize, batch_index=batch_index if normalize == "image" else None,
        area_range=params.area_range if normalize == "fixed" else None, weight=weight,
        reduction=reduction, eps=params.eps)


def current_iteration() -> Optional[int]:
    """The iteration of detectron2's active EventStorage, or None outside a training loop."""
    try:
        from detectron2.utils.events import get_event_storage

        return get_event_storage().iter
    except (AssertionError, ImportError):
        return None


def check_finite_predictions(head_name: str, outputs: Dict[str, Tensor]) -> None:
    """Raise ``FloatingPointError`` naming the head output and the iteration when a raw
    prediction is NaN/inf. Non-finite boxes would otherwise lose every SimOTA comparison, never
    be assigned, and leave the loss finite while part of the model is dead (a silent NaN model)."""
    for name, value in outputs.items():
        if not torch.isfinite(value).all():
            iteration = current_iteration()
            where = f"at iteration {iteration}" if iteration is not None else "(outside a training loop)"
            raise FloatingPointError(
                f"{head_name}: non-finite {name} predictions {where} "
                f"({int((~torch.isfinite(value)).sum())} of {value.numel()} values); the weights diverged: "
                "lower the learning rate or enable gradient clipping.")
