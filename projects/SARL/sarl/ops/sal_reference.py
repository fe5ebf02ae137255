"""Pure-PyTorch reference of the scale-adaptive IoU loss (SAL, paper eq. 3-5).

This is the specification that the fused kernels (``csrc/sal``) are tested against, and the
fallback when ``sarl._C`` is not built. Its gradients come from autograd, and the kernels follow
the same sub-gradient conventions (see :func:`scale_adaptive_iou_loss_reference`). The per-pair
IoU-type losses are :func:`sarl.ops.box_iou.iou_loss`; this module adds the SAL weights.

Also holds the argument checks shared with :mod:`sarl.ops.sal`, so both paths reject the same
bad inputs with the same messages.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from .box_iou import LOSS_TYPES, box_corners, clamp_min0, iou_loss

# The paper's beta (Table VII's best): weights from 2 (smallest box, s = 0) down to 0 (largest, s = 1).
PAPER_SAL_BETA = 2.0 / math.log(2.0)
NORMALIZE_MODES = ("batch", "image", "fixed", "none")
# "none": the paper's weights; "mean" (this project's): each weight divided by its group's mean weight.
WEIGHT_NORMS = ("none", "mean")
BOX_FORMATS = ("xyxy", "cxcywh")
REDUCTIONS = ("none", "sum", "mean")


@dataclass(frozen=True)
class SALArgs:
    """Validated arguments: the compute dtype (float16/bfloat16 run in float32), the output dtype,
    and the fixed area range (0, 0 unless ``normalize == "fixed"``)."""

    compute_dtype: torch.dtype
    out_dtype: torch.dtype
    area_lo: float
    area_hi: float


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_boxes(name: str, boxes: object) -> None:
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4], got {list(boxes.shape)}")
    if not boxes.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {boxes.dtype}")


def check_weight_args(target: torch.Tensor, *, beta: float, box_format: str, normalize: str,
                      batch_index: Optional[torch.Tensor], area_range: Optional[Sequence[float]],
                      weight_norm: str = "none") -> Tuple[float, float]:
    """Checks the arguments that define the per-box weights; returns (area_lo, area_hi)."""
    _check_boxes("target", target)
    _check_number("beta", beta)
    _check_choice("box_format", box_format, BOX_FORMATS)
    _check_choice("normalize", normalize, NORMALIZE_MODES)
    _check_choice("weight_norm", weight_norm, WEIGHT_NORMS)
    n = target.shape[0]
    if normalize == "image":
        if batch_index is None:
            raise ValueError("batch_index is required when normalize='image'")
        if not isinstance(batch_index, torch.Tensor):
            raise TypeError(f"batch_index must be a torch.Tensor, got {type(batch_index).__name__}")
        if batch_index.dtype != torch.int64:
            raise TypeError(f"batch_index must be int64, got {batch_index.dtype}")
        if batch_index.dim() != 1 or batch_index.shape[0] != n:
            raise ValueError(f"batch_index must have shape [N] = [{n}], got {list(batch_index.shape)}")
        if batch_index.device != target.device:
            raise ValueError(f"batch_index must be on {target.device} like target, got {batch_index.device}")
    area_lo = area_hi = 0.0
    if normalize == "fixed":
        if area_range is None:
            raise ValueError("area_range=(lo, hi) is required when normalize='fixed'")
        if not isinstance(area_range, (tuple, list)) or len(area_range) != 2:
            raise ValueError(f"area_range must be a pair (lo, hi), got {area_range!r}")
        area_lo = _check_number("area_range[0]", area_range[0])
        area_hi = _check_number("area_range[1]", area_range[1])
        if not area_hi > area_lo:
            raise ValueError(f"area_range must satisfy hi > lo, got {tuple(area_range)}")
    return area_lo, area_hi


def check_loss_args(pred: torch.Tensor, target: torch.Tensor, *, beta: float, loss_type: str,
                    box_format: str, normalize: str, batch_index: Optional[torch.Tensor],
                    area_range: Optional[Sequence[float]], weight: Optional[torch.Tensor],
                    reduction: str, eps: float, weight_norm: str = "none") -> SALArgs:
    """Checks every argument of the loss (errors name the argument); returns the dtypes to use."""
    _check_boxes("pred", pred)
    _check_boxes("target", target)
    if pred.shape[0] != target.shape[0]:
        raise ValueError(f"pred and target must have the same N, got {pred.shape[0]} and {target.shape[0]}")
    if pred.device != target.device:
        raise ValueError(f"pred and target must be on the same device, got {pred.device} and {target.device}")
    _check_choice("loss_type", loss_type, LOSS_TYPES)
    _check_choice("reduction", reduction, REDUCTIONS)
    if _check_number("eps", eps) < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    area_lo, area_hi = check_weight_args(target, beta=beta, box_format=box_format, normalize=normalize,
                                         batch_index=batch_index, area_range=area_range, weight_norm=weight_norm)
    if weight is not None:
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
        if weight.dim() != 1 or weight.shape[0] != pred.shape[0]:
            raise ValueError(f"weight must have shape [N] = [{pred.shape[0]}], got {list(weight.shape)}")
        if not weight.is_floating_point():
            raise TypeError(f"weight must be a floating-point tensor, got {weight.dtype}")
        if weight.device != pred.device:
            raise ValueError(f"weight must be on {pred.device} like pred, got {weight.device}")
    out_dtype = torch.promote_types(pred.dtype, target.dtype)
    compute_dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    return SALArgs(compute_dtype, out_dtype, area_lo, area_hi)


def check_target_finite(target: torch.Tensor) -> None:
    """ValueError naming the first row of ``target`` holding a NaN or an infinity."""
    bad = ~torch.isfinite(target).all(dim=1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"target must be finite: row {row} has a NaN or infinite coordinate")


def check_batch_index_values(batch_index: torch.Tensor) -> None:
    if batch_index.numel() and int(batch_index.min()) < 0:
        row = int((batch_index < 0).nonzero()[0, 0])
        raise ValueError(f"batch_index must be >= 0, got {int(batch_index[row])} at row {row}")


def box_areas(boxes: torch.Tensor, box_format: str) -> torch.Tensor:
    """Areas [N]; degenerate boxes (x2 < x1 or y2 < y1) have area 0."""
    x1, y1, x2, y2 = box_corners(boxes, box_format)
    return clamp_min0(x2 - x1) * clamp_min0(y2 - y1)


def sal_weights_reference(target: torch.Tensor, *, beta: float = PAPER_SAL_BETA, box_format: str = "xyxy",
                          normalize: str = "batch", batch_index: Optional[torch.Tensor] = None,
                          area_range: Optional[Sequence[float]] = None, weight_norm: str = "none") -> torch.Tensor:
    """Per-box SAL weights ``w_i = beta * ln(2 - s_i)`` [N] (constants: computed without grad).

    ``s_i`` is the target area normalised to [0, 1]: min-max over the whole batch ("batch"),
    within each image of ``batch_index`` ("image"), ``clamp((a - lo) / (hi - lo), 0, 1)`` with
    ``area_range=(lo, hi)`` ("fixed"); "none" gives ``w_i = 1``. A group whose areas are all
    equal (one box, or max = min) has ``s_i = 0``, so weight ``beta * ln 2``.

    ``weight_norm="mean"`` (this project's option; "none" is the paper) divides each weight by the mean
    weight of its group (all N boxes, or each image for "image"), see :func:`divide_by_group_mean`.
    """
    area_lo, area_hi = check_weight_args(target, beta=beta, box_format=box_format, normalize=normalize,
                                         batch_index=batch_index, area_range=area_range, weight_norm=weight_norm)
    check_target_finite(target)
    if normalize == "image":
        check_batch_index_values(batch_index)
    return sal_weights_core(target, beta=beta, box_format=box_format, normalize=normalize,
                            batch_index=batch_index, area_lo=area_lo, area_hi=area_hi, weight_norm=weight_norm)


def divide_by_group_mean(weights: torch.Tensor, normalize: str, batch_index: Optional[torch.Tensor]) -> torch.Tensor:
    """``weights`` [N] divided by the mean weight of their group: all N for "batch"/"fixed", each image of
    ``batch_index`` for "image" (the mean is a constant, like the weights). NaN weights (an area that overflows)
    count in no mean; a group whose mean is 0 (every weight 0: "fixed" ranges with every box at or above hi)
    keeps its weights (all 0). Sums in float64, as the kernels."""
    n = weights.shape[0]
    if n == 0:
        return weights
    if normalize == "image":
        group, groups = batch_index, int(batch_index.max()) + 1
    else:
        group, groups = torch.zeros(n, dtype=torch.long, device=weights.device), 1
    counted = ~torch.isnan(weights)
    values = torch.where(counted, weights, torch.zeros_like(weights)).double()
    sums = values.new_zeros(groups).index_add_(0, group, values)
    counts = values.new_zeros(groups).index_add_(0, group, counted.double())
    mean = torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))
    divisor = torch.where(mean != 0, mean, torch.ones_like(mean)).to(weights.dtype)
    return weights / divisor[group]


def sal_weights_core(target: torch.Tensor, *, beta: float, box_format: str, normalize: str,
                     batch_index: Optional[torch.Tensor], area_lo: float, area_hi: float,
                     weight_norm: str = "none") -> torch.Tensor:
    """:func:`sal_weights_reference` without the argument checks (traceable by torch.compile)."""
    with torch.no_grad():
        target = target.detach()
        n = target.shape[0]
        if normalize == "none":
            return torch.ones(n, dtype=target.dtype, device=target.device)
        areas = box_areas(target, box_format)
        if n == 0:
            return areas
        # A NaN area (finite corners whose difference overflows) never enters a range, as in the kernels;
        # its own weight is NaN.
        in_range = ~torch.isnan(areas)
        if normalize == "batch":
            lo = torch.where(in_range, areas, math.inf).min()
            hi = torch.where(in_range, areas, -math.inf).max()
        elif normalize == "fixed":
            lo = torch.tensor(area_lo, dtype=areas.dtype, device=areas.device)
            hi = torch.tensor(area_hi, dtype=areas.dtype, device=areas.device)
        else:  # "image": per-group min/max
            groups = int(batch_index.max()) + 1
            inf = torch.full((groups,), math.inf, dtype=areas.dtype, device=areas.device)
            lo = inf.scatter_reduce(0, batch_index, torch.where(in_range, areas, math.inf), "amin")[batch_index]
            hi = (-inf).scatter_reduce(0, batch_index, torch.where(in_range, areas, -math.inf), "amax")[batch_index]
        spread = hi - lo
        safe_spread = torch.where(spread > 0, spread, torch.ones_like(spread))
        s = torch.where(spread > 0, ((areas - lo) / safe_spread).clamp(0, 1), torch.zeros_like(areas))
        weights = beta * torch.log(2 - s)
        if weight_norm == "mean":
            weights = divide_by_group_mean(weights, normalize, batch_index)
        return weights


def non_finite_poison(pred: torch.Tensor) -> torch.Tensor:
    """[N]: 0 for rows of ``pred`` whose four numbers are finite, NaN for the others, with gradient 0 / NaN on the
    whole row. Added to each box's loss so that a NaN or infinite prediction gives a NaN loss and a NaN gradient
    (the clamps of the IoU would otherwise turn a NaN width into 0 and hide it), as the fused kernels do."""
    row_mask = (pred.detach() * 0).sum(-1, keepdim=True)  # 0, or NaN when the row has a NaN/inf
    return (pred * row_mask).sum(-1)


def scale_adaptive_iou_loss_reference(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    beta: float = PAPER_SAL_BETA,
    loss_type: str = "iou2",
    box_format: str = "xyxy",
    normalize: str = "batch",
    batch_index: Optional[torch.Tensor] = None,
    area_range: Optional[Sequence[float]] = None,
    weight: Optional[torch.Tensor] = None,
    reduction: str = "sum",
    eps: float = 1e-7,
    weight_norm: str = "none",
) -> torch.Tensor:
    """``sum_i w_i * weight_i * L_i`` with ``w_i = beta * ln(2 - s_i)`` (see :func:`sal_weights_reference`).

    Args:
        pred, target: [N, 4] boxes in ``box_format`` ("xyxy" corners or "cxcywh").
        loss_type: "iou2" (``1 - IoU^2``, the paper and YOLOX), "iou", "giou", "diou", "ciou".
        weight: optional [N] per-box multiplier (a constant, like the SAL weights).
        weight_norm: "none" (the paper) or "mean" (``w_i`` divided by its group's mean ``w``, not
            multiplied by ``weight``: the loss keeps the scale of the unweighted loss).
        reduction: "none" ([N]), "sum" or "mean" (sum / N; 0 for N = 0).

    Returns:
        [N] or a scalar, in the promoted dtype of pred/target (float16/bfloat16 computed in float32).

    Sub-gradients (followed by the fused kernels): widths, heights and overlaps are
    ``max(u, 0)`` whose derivative passes where ``u >= 0`` (see :func:`sarl.ops.box_iou.clamp_min0`; boxes
    that exactly touch still get a gradient pulling them together; degenerate boxes have zero area);
    ``min``/``max`` ties split the derivative equally (equal boxes get a ~zero gradient); CIoU's
    ``alpha`` is a constant.
    Only ``pred`` receives a gradient.
    """
    args = check_loss_args(pred, target, beta=beta, loss_type=loss_type, box_format=box_format,
                           normalize=normalize, batch_index=batch_index, area_range=area_range,
                           weight=weight, reduction=reduction, eps=eps, weight_norm=weight_norm)
    check_target_finite(target)
    if normalize == "image":
        check_batch_index_values(batch_index)
    loss = sal_loss_core(pred.to(args.compute_dtype), target.to(args.compute_dtype), beta=beta,
                         loss_type=loss_type, box_format=box_format, normalize=normalize,
                         batch_index=batch_index, area_lo=args.area_lo, area_hi=args.area_hi,
                         weight=weight, reduction=reduction, eps=eps, weight_norm=weight_norm)
    return loss.to(args.out_dtype)


def sal_loss_core(pred: torch.Tensor, target: torch.Tensor, *, beta: float, loss_type: str, box_format: str,
                  normalize: str, batch_index: Optional[torch.Tensor], area_lo: float, area_hi: float,
                  weight: Optional[torch.Tensor], reduction: str, eps: float,
                  weight_norm: str = "none") -> torch.Tensor:
    """:func:`scale_adaptive_iou_loss_reference` without the argument checks and dtype handling
    (what the benchmark times in eager mode and under torch.compile)."""
    target = target.detach()
    w = sal_weights_core(target, beta=beta, box_format=box_format, normalize=normalize,
                         batch_index=batch_index, area_lo=area_lo, area_hi=area_hi, weight_norm=weight_norm)
    if weight is not None:
        w = w * weight.detach().to(w.dtype)
    unweighted = iou_loss(pred, target, loss_type=loss_type, box_format=box_format, eps=eps)
    loss = w * (unweighted + non_finite_poison(pred))
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / max(pred.shape[0], 1)
    return loss
