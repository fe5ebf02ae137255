"""Fused scale-adaptive IoU loss (SAL): Python API of ``torch.ops.sarl.sal_loss`` / ``sal_weights``.

    from sarl.ops import scale_adaptive_iou_loss
    loss = scale_adaptive_iou_loss(pred, target)              # [N, 4] xyxy each -> scalar
    loss = scale_adaptive_iou_loss(pred, target, normalize="image", batch_index=img_of_box,
                                   loss_type="giou", reduction="none")
    loss = scale_adaptive_iou_loss(pred, target, weight_norm="mean")  # reweighting only, unweighted scale

The kernel computes, in one pass per box, the loss and (when ``pred`` requires grad) d loss/d pred,
so the backward only scales that saved gradient by ``grad_output``. The autograd kernel is C++
(csrc/sal/sal_autograd.cpp, for every backend); the fake (meta) implementations are registered here
with ``torch.library``, so the op works under autograd, ``torch.compile`` and ``torch.library.opcheck``. Without the extension, the pure-PyTorch reference
(:mod:`sarl.ops.sal_reference`) runs instead, after a one-time warning.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ._extension import _LOADED, _warn_once, use_extension
from .sal_reference import (
    PAPER_SAL_BETA,
    check_loss_args,
    check_weight_args,
    sal_weights_reference,
    scale_adaptive_iou_loss_reference,
)

__all__ = ["scale_adaptive_iou_loss", "sal_weights", "ScaleAdaptiveIoULoss", "PAPER_SAL_BETA", "kernels_available"]

# Positions of the arguments of sarl::sal_loss (see csrc/sarl_ops.cpp); checked against the loaded
# schema below, so an extension built from other sources runs the reference instead of misreading them.
# _NUM_LOSS_ARGS is also kNumLossArgs in csrc/sal/sal_autograd.cpp.
_REDUCTION_ARG = 11
_COMPUTE_GRAD_ARG = 13
_NUM_LOSS_ARGS = 14


def _register_python_side() -> None:
    """Fake (shape) implementations of the compiled ops (their autograd is in C++: csrc/sal/sal_autograd.cpp)."""

    @torch.library.register_fake("sarl::sal_loss")
    def _sal_loss_fake(pred, target, batch_index, weight, box_format, loss_type, normalize, weight_norm, beta,
                       area_lo, area_hi, reduction, eps, compute_grad):
        n = pred.shape[0]
        loss = pred.new_empty((n,)) if reduction == "none" else pred.new_empty(())
        return loss, pred.new_empty((n if compute_grad else 0, 4))

    @torch.library.register_fake("sarl::sal_weights")
    def _sal_weights_fake(target, batch_index, box_format, normalize, weight_norm, beta, area_lo, area_hi):
        return target.new_empty((target.shape[0],))


def _loaded_ops_match_these_sources() -> bool:
    """True when the loaded extension has both SAL ops with the schema this module was written for, and
    sal_loss's C++ autograd kernel (older builds had it in Python)."""
    if not (_LOADED and hasattr(torch.ops.sarl, "sal_loss") and hasattr(torch.ops.sarl, "sal_weights")):
        return False
    if not torch._C._dispatch_has_kernel_for_dispatch_key("sarl::sal_loss", "Autograd"):
        return False
    names = [a.name for a in torch.ops.sarl.sal_loss.default._schema.arguments]
    weight_names = [a.name for a in torch.ops.sarl.sal_weights.default._schema.arguments]
    return (len(names) == _NUM_LOSS_ARGS and names[_REDUCTION_ARG] == "reduction"
            and names[_COMPUTE_GRAD_ARG] == "compute_grad" and "weight_norm" in names and "weight_norm" in weight_names)


# An extension built from older sources may lack these ops or have other arguments: then the reference runs.
_HAS_SAL_OPS = _loaded_ops_match_these_sources()
if _HAS_SAL_OPS:
    _register_python_side()


def _use_kernels(op_name: str, *tensors: torch.Tensor) -> bool:
    if not use_extension(op_name, *tensors):
        return False
    if not _HAS_SAL_OPS:
        _warn_once(op_name + ":schema", f"sarl._C was built from older sources (its SAL ops lack this version's "
                   f"arguments); {op_name} runs its pure-PyTorch reference. Rebuild: scripts/build_ext.sh")
    return _HAS_SAL_OPS


def kernels_available() -> bool:
    """True when the compiled SAL kernels are loaded and match these sources (else the reference runs)."""
    return _HAS_SAL_OPS


def scale_adaptive_iou_loss(
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
    """Scale-adaptive IoU loss ``sum_i w_i * weight_i * L_i``, ``w_i = beta * ln(2 - s_i)`` (paper eq. 3-5).

    Args:
        pred: [N, 4] predicted boxes (the only input that receives a gradient).
        target: [N, 4] ground-truth boxes, finite (else ValueError); degenerate boxes have area 0.
        beta: weight scale; the default 2/ln2 gives weights from 2 (smallest box) to 0 (largest).
        loss_type: "iou2" = 1 - IoU^2 (paper, YOLOX), "iou" = 1 - IoU, "giou", "diou", "ciou".
        box_format: "xyxy" or "cxcywh" (converted inside the kernel).
        normalize: how ``s_i`` normalises the target area ``a_i``: "batch" (min-max over all N),
            "image" (min-max within each image of ``batch_index``), "fixed"
            (``clamp((a - lo) / (hi - lo), 0, 1)`` with ``area_range``), "none" (``w_i = 1``).
            A group whose areas are all equal has ``s_i = 0`` (weight ``beta * ln 2``).
        batch_index: [N] int64 image of each box (>= 0), for normalize="image".
        area_range: (lo, hi) with hi > lo, for normalize="fixed".
        weight: optional [N] per-box multiplier (a constant for autograd).
        reduction: "none" -> [N]; "sum"; "mean" (sum / N). N = 0 gives 0 or an empty tensor.
        eps: added to the union (and to the enclosing area / diagonal / heights for giou/diou/ciou).
        weight_norm: "none" (the paper's weights, default) or "mean" (this project's option): each ``w_i``
            divided by the mean ``w`` of its group (all N for "batch"/"fixed", each image for "image"; a
            no-op for "none"), a constant like ``w_i``. The mean is over the SAL weights only (not times
            ``weight``). The loss then keeps the scale of the unweighted loss and only the reweighting
            between boxes remains (at beta = 2/ln2 the paper's weights average about 1.8, so its SAL
            also multiplies the box loss by about 1.8). A group whose mean weight is 0 (every weight 0:
            "fixed" with every box at or above hi) keeps its weights 0.

    Returns:
        The loss in the promoted dtype of pred/target; float16/bfloat16 are computed in float32.

    Sub-gradients where the loss is not differentiable: overlaps, widths and heights are
    ``max(u, 0)`` with the derivative passed where ``u >= 0`` (boxes that exactly touch are
    pulled together; separate boxes get no IoU gradient, only the GIoU/DIoU/CIoU terms); ties of
    ``min``/``max`` (equal edges, equal boxes) split the derivative equally, which gives equal boxes
    a ~zero gradient. CIoU's alpha is a constant. The same as autograd on the reference.
    """
    args = check_loss_args(pred, target, beta=beta, loss_type=loss_type, box_format=box_format,
                           normalize=normalize, batch_index=batch_index, area_range=area_range,
                           weight=weight, reduction=reduction, eps=eps, weight_norm=weight_norm)
    if not _use_kernels("scale_adaptive_iou_loss", pred, target):
        return scale_adaptive_iou_loss_reference(
            pred, target, beta=beta, loss_type=loss_type, box_format=box_format, normalize=normalize,
            batch_index=batch_index, area_range=area_range, weight=weight, reduction=reduction, eps=eps,
            weight_norm=weight_norm)
    # Only cheap Python here (the call's fixed cost matters at small N): conversions only where needed; the
    # kernels check target finiteness and batch_index >= 0 during their passes.
    compute_dtype = args.compute_dtype
    pred_c = pred if pred.dtype == compute_dtype else pred.to(compute_dtype)
    target_c = _constant(target, compute_dtype)
    weight_c = None if weight is None else _constant(weight, compute_dtype)
    compute_grad = pred_c.requires_grad and torch.is_grad_enabled()
    loss, _ = torch.ops.sarl.sal_loss(
        pred_c, target_c, batch_index if normalize == "image" else None, weight_c, box_format, loss_type,
        normalize, weight_norm, float(beta), args.area_lo, args.area_hi, reduction, float(eps), compute_grad)
    return loss if loss.dtype == args.out_dtype else loss.to(args.out_dtype)


def _constant(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` detached (it gets no gradient) in ``dtype``, without a copy or a new view when it already is."""
    if tensor.requires_grad:
        tensor = tensor.detach()
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def sal_weights(
    target: torch.Tensor,
    *,
    beta: float = PAPER_SAL_BETA,
    box_format: str = "xyxy",
    normalize: str = "batch",
    batch_index: Optional[torch.Tensor] = None,
    area_range: Optional[Sequence[float]] = None,
    weight_norm: str = "none",
) -> torch.Tensor:
    """Per-box SAL weights ``w_i = beta * ln(2 - s_i)``: [N], dtype of target (float32 for half types).

    Same options as :func:`scale_adaptive_iou_loss` (``weight_norm="mean"``: divided by their group's
    mean); the weights carry no gradient.
    """
    area_lo, area_hi = check_weight_args(target, beta=beta, box_format=box_format, normalize=normalize,
                                         batch_index=batch_index, area_range=area_range, weight_norm=weight_norm)
    compute_dtype = torch.float64 if target.dtype == torch.float64 else torch.float32
    target_c = target.detach().to(compute_dtype)
    if not _use_kernels("sal_weights", target):
        return sal_weights_reference(target_c, beta=beta, box_format=box_format, normalize=normalize,
                                     batch_index=batch_index, area_range=area_range, weight_norm=weight_norm)
    return torch.ops.sarl.sal_weights(target_c, batch_index if normalize == "image" else None, box_format,
                                      normalize, weight_norm, float(beta), area_lo, area_hi)


class ScaleAdaptiveIoULoss(nn.Module):
    """Module form of :func:`scale_adaptive_iou_loss`; the constructor takes the same keyword options.

    ``forward(pred, target, batch_index=None, weight=None)``: per-call tensors may also be given.
    """

    def __init__(self, *, beta: float = PAPER_SAL_BETA, loss_type: str = "iou2", box_format: str = "xyxy",
                 normalize: str = "batch", area_range: Optional[Sequence[float]] = None,
                 reduction: str = "sum", eps: float = 1e-7, weight_norm: str = "none") -> None:
        super().__init__()
        self.beta = beta
        self.loss_type = loss_type
        self.box_format = box_format
        self.normalize = normalize
        self.area_range = tuple(area_range) if area_range is not None else None
        self.reduction = reduction
        self.eps = eps
        self.weight_norm = weight_norm

    def forward(self, pred: torch.Tensor, target: torch.Tensor, batch_index: Optional[torch.Tensor] = None,
                weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        return scale_adaptive_iou_loss(
            pred, target, beta=self.beta, loss_type=self.loss_type, box_format=self.box_format,
            normalize=self.normalize, batch_index=batch_index, area_range=self.area_range, weight=weight,
            reduction=self.reduction, eps=self.eps, weight_norm=self.weight_norm)

    def extra_repr(self) -> str:
        return (f"beta={self.beta:.4g}, loss_type={self.loss_type!r}, box_format={self.box_format!r}, "
                f"normalize={self.normalize!r}, weight_norm={self.weight_norm!r}, reduction={self.reduction!r}")
