"""Box regression loss shared by the YOLO heads: the Scale-Adaptive Loss (SAL) or its plain base.

Both heads call :func:`sal_box_loss` on their foreground pairs; the loss itself is the fused op
``sarl.ops.scale_adaptive_iou_loss`` (pure-PyTorch fallback when ``sarl._C`` is not built).

``MODEL.SAL`` keys: ``ENABLED`` (False: weights 1, i.e. the plain IoU loss of ``LOSS_TYPE``),
``BETA``, ``LOSS_TYPE`` ("iou2" = 1 - IoU^2, the paper's and YOLOX's), ``NORMALIZE``
("batch": min-max of the target areas over the whole batch, as the paper; "image"; "fixed"
with ``AREA_RANGE``), ``ALPHA`` (the heads' weight on this term), and two options of this project
whose defaults are the paper's:

- ``WEIGHT_NORM``: "none" (the paper) or "mean": each weight ``beta * ln(2 - s_i)`` divided by the
  mean weight of its normalisation group, so the SAL term keeps the scale of the unweighted loss and
  only reweights boxes against each other (at beta = 2/ln2 the paper's weights average about 1.8).
- ``PER_OBJECT``: False (the paper: every matched anchor counts) or True: each ground-truth object
  counts once in the min-max and in the mean, however many anchors it is assigned. The min-max of a
  multiset equals that of its set, so this changes the weights only with ``WEIGHT_NORM "mean"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from sarl.config import UserError
from sarl.ops import PAPER_SAL_BETA, sal_weights, scale_adaptive_iou_loss

__all__ = ["SALParams", "sal_box_loss", "per_object_sal_weights", "current_iteration", "check_finite_predictions"]

WEIGHT_NORMS = ("none", "mean")


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
    weight_norm: str = "none"  # the paper; "mean": this project's (see the module docstring)
    per_object: bool = False  # the paper; True: this project's

    @classmethod
    def from_config(cls, cfg, loss_type: Optional[str] = None) -> "SALParams":
        """Read ``cfg.MODEL.SAL``; ``loss_type`` overrides ``MODEL.SAL.LOSS_TYPE`` (the YOLOv5
        head passes its own base loss when SAL is off)."""
        sal = cfg.MODEL.SAL
        if sal.WEIGHT_NORM not in WEIGHT_NORMS:
            raise UserError(f"MODEL.SAL.WEIGHT_NORM must be one of {WEIGHT_NORMS} ('none' is the paper), "
                            f"got {sal.WEIGHT_NORM!r}")
        area_range = tuple(float(v) for v in sal.AREA_RANGE) if sal.NORMALIZE == "fixed" else None
        return cls(enabled=bool(sal.ENABLED), beta=float(sal.BETA),
                   loss_type=loss_type or str(sal.LOSS_TYPE), normalize=str(sal.NORMALIZE),
                   area_range=area_range, alpha=float(sal.ALPHA), weight_norm=str(sal.WEIGHT_NORM),
                   per_object=bool(sal.PER_OBJECT))


def sal_box_loss(params: SALParams, pred_xyxy: Tensor, target_xyxy: Tensor,
                 batch_index: Optional[Tensor] = None, *, weight: Optional[Tensor] = None,
                 reduction: str = "sum", gt_index: Optional[Tensor] = None) -> Tensor:
    """SAL (or the plain IoU-type loss when disabled) of matched box pairs, **not** times alpha.

    Args:
        params: the settings (``SALParams.from_config(cfg)``).
        pred_xyxy: [M, 4] predicted boxes of the foreground samples of the whole batch.
        target_xyxy: [M, 4] their ground-truth boxes (same pixel units).
        batch_index: [M] int64 image of each pair (needed for ``NORMALIZE "image"``).
        weight: optional [M] per-pair multiplier.
        reduction: "sum" (default; the heads divide by their normaliser), "mean" or "none".
        gt_index: [M] int64 ground-truth object of each pair, one id per object over the whole batch;
            needed for ``params.per_object`` (then the weights are :func:`per_object_sal_weights`).

    Returns:
        a scalar (or [M] for ``reduction="none"``); 0 with a zero gradient when ``M == 0``.
    """
    normalize = params.normalize if params.enabled else "none"
    if batch_index is not None:
        batch_index = batch_index.long()
    if params.per_object and normalize != "none":
        if gt_index is None:
            raise ValueError("sal_box_loss: MODEL.SAL.PER_OBJECT needs gt_index, the [M] object of each pair")
        object_weight = per_object_sal_weights(params, target_xyxy, gt_index, batch_index)
        weight = object_weight if weight is None else object_weight * weight
        normalize = "none"  # the SAL weights are in `weight` now
    return scale_adaptive_iou_loss(
        pred_xyxy, target_xyxy, beta=params.beta, loss_type=params.loss_type, box_format="xyxy",
        normalize=normalize, batch_index=batch_index if normalize == "image" else None,
        area_range=params.area_range if normalize == "fixed" else None, weight=weight,
        reduction=reduction, eps=params.eps, weight_norm=params.weight_norm)


def per_object_sal_weights(params: SALParams, target_xyxy: Tensor, gt_index: Tensor,
                           batch_index: Optional[Tensor] = None) -> Tensor:
    """[M] SAL weights of M matched pairs with each ground-truth object counted once (``PER_OBJECT``).

    The weights are computed on the unique objects (one box each, that of the object's first pair),
    normalised over objects (``params.normalize``, ``params.weight_norm``: the min-max and the mean run
    over objects, per image of ``batch_index`` for "image"), then gathered back to every pair, so an
    object assigned 5 anchors has the weight it would have with 1. Constants (no gradient).

    Args:
        target_xyxy: [M, 4] the pairs' ground-truth boxes; gt_index: [M] int64 object of each pair;
        batch_index: [M] int64 image of each pair (for ``NORMALIZE "image"``).
    """
    gt_index = gt_index.to(target_xyxy.device).long()
    objects, pair_to_object = torch.unique(gt_index, return_inverse=True)
    pair_ids = torch.arange(gt_index.numel(), device=gt_index.device)
    first_pair = torch.full((objects.numel(),), gt_index.numel(), dtype=torch.long, device=gt_index.device)
    first_pair = first_pair.scatter_reduce(0, pair_to_object, pair_ids, "amin")
    image = batch_index[first_pair] if params.normalize == "image" else None
    object_weight = sal_weights(target_xyxy.detach()[first_pair], beta=params.beta, box_format="xyxy",
                                normalize=params.normalize, batch_index=image, area_range=params.area_range,
                                weight_norm=params.weight_norm)
    return object_weight[pair_to_object].to(target_xyxy.dtype)


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
