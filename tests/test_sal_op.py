"""Fused scale-adaptive IoU loss (sarl::sal_loss, sarl::sal_weights) against its pure-PyTorch reference.

Covers values and gradients on random and adversarial boxes for every loss_type x normalize x
box_format x reduction, gradcheck, opcheck, a hypothesis property, torch.compile, empty,
non-contiguous and half-precision inputs (bad inputs: test_sal_bad_inputs.py).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sarl.ops
from conftest import needs_extension
from sarl.ops import ScaleAdaptiveIoULoss, sal_weights, scale_adaptive_iou_loss
from sarl.ops import _extension
from sarl.ops.sal_reference import (
    BOX_FORMATS,
    LOSS_TYPES,
    NORMALIZE_MODES,
    REDUCTIONS,
    sal_weights_reference,
    scale_adaptive_iou_loss_reference,
)

requires_extension = needs_extension(
    "sarl._C with the SAL kernels of these sources", sarl.ops.extension_available() and sarl.ops.sal.kernels_available())

TOLERANCES = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-5, rtol=1e-5)}


def _xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    return torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)


def adversarial_pairs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Random overlapping pairs plus the cases where the loss is not differentiable: equal boxes,
    touching edges, shared edges, disjoint, nested, degenerate (x2 < x1) and zero-size boxes.
    Integer coordinates make the ties exact in every dtype and in both box formats."""
    g = torch.Generator().manual_seed(1)
    xy = torch.randint(0, 40, (24, 2), generator=g).double()
    wh = torch.randint(1, 30, (24, 2), generator=g).double()
    target = torch.cat([xy, xy + wh], 1)
    pred = target + torch.randint(-6, 7, (24, 4), generator=g).double()
    special_t = torch.tensor([
        [10, 10, 20, 20],   # equal boxes
        [10, 10, 20, 20],   # touching on the right edge
        [10, 10, 20, 20],   # shared left edge, pred inside
        [10, 10, 20, 20],   # disjoint
        [10, 10, 30, 30],   # pred nested
        [10, 10, 20, 20],   # degenerate pred (x2 < x1)
        [10, 10, 10, 20],   # zero-width target
        [0, 0, 8, 8],       # touching at a corner
        [5, 5, 9, 7],       # pred contains target, shared bottom edge
        [3, 3, 4, 4],       # tiny target
    ], dtype=torch.float64)
    special_p = torch.tensor([
        [10, 10, 20, 20],
        [20, 12, 26, 18],
        [10, 12, 16, 18],
        [40, 40, 50, 52],
        [14, 14, 22, 22],
        [18, 10, 12, 20],
        [8, 10, 14, 20],
        [8, 8, 12, 12],
        [2, 1, 12, 7],
        [3, 3, 4, 4],
    ], dtype=torch.float64)
    return torch.cat([pred, special_p]).to(dtype), torch.cat([target, special_t]).to(dtype)


def _options(normalize: str, n: int) -> dict:
    opts: dict = {}
    if normalize == "image":
        bi = torch.arange(n) % 3
        if n:
            bi[-1] = 3  # an image with one box: a degenerate group (max = min)
        opts["batch_index"] = bi
    if normalize == "fixed":
        opts["area_range"] = (16.0, 400.0)
    return opts


def _loss_and_grad(fn, pred, target, **kw):
    p = pred.detach().clone().requires_grad_(True)
    loss = fn(p, target, **kw)
    loss.backward(torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device).reshape(loss.shape))
    return loss.detach(), p.grad


def option_case(loss_type, normalize, box_format, reduction, dtype):
    """(pred, target, keyword options) of the adversarial pairs for one combination of the options."""
    pred, target = adversarial_pairs(dtype)
    if box_format == "cxcywh":
        pred, target = _xyxy_to_cxcywh(pred), _xyxy_to_cxcywh(target)
    kw = dict(loss_type=loss_type, box_format=box_format, normalize=normalize, reduction=reduction,
              weight=torch.linspace(0.5, 2.0, pred.shape[0], dtype=dtype), **_options(normalize, pred.shape[0]))
    return pred, target, kw


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("box_format", BOX_FORMATS)
@pytest.mark.parametrize("normalize", NORMALIZE_MODES)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_op_matches_reference(loss_type, normalize, box_format, reduction, dtype):
    pred, target, kw = option_case(loss_type, normalize, box_format, reduction, dtype)
    loss, grad = _loss_and_grad(scale_adaptive_iou_loss, pred, target, **kw)
    ref_loss, ref_grad = _loss_and_grad(scale_adaptive_iou_loss_reference, pred, target, **kw)
    assert loss.dtype == dtype and loss.shape == ref_loss.shape
    torch.testing.assert_close(loss, ref_loss, **TOLERANCES[dtype])
    torch.testing.assert_close(grad, ref_grad, **TOLERANCES[dtype])
    assert torch.isfinite(grad).all()


@requires_extension
@pytest.mark.parametrize("normalize", NORMALIZE_MODES)
@pytest.mark.parametrize("box_format", BOX_FORMATS)
def test_weights_match_reference(normalize, box_format):
    _, target = adversarial_pairs(torch.float64)
    if box_format == "cxcywh":
        target = _xyxy_to_cxcywh(target)
    opts = _options(normalize, target.shape[0])
    w = sal_weights(target, box_format=box_format, normalize=normalize, **opts)
    torch.testing.assert_close(w, sal_weights_reference(target, box_format=box_format, normalize=normalize, **opts),
                               atol=1e-12, rtol=1e-12)


def test_weights_follow_the_paper():
    """beta = 2/ln2: weight 2 for the smallest box, 0 for the largest, beta*ln(2 - s) between."""
    target = torch.tensor([[0, 0, 2, 2], [0, 0, 4, 4], [0, 0, 6, 6.0]], dtype=torch.float64)
    w = sal_weights(target)
    s = torch.tensor([0.0, (16 - 4) / (36 - 4), 1.0], dtype=torch.float64)
    torch.testing.assert_close(w, (2 / math.log(2)) * torch.log(2 - s))
    assert w[0].item() == pytest.approx(2.0) and w[2].item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("fn", [sal_weights, sal_weights_reference])
def test_degenerate_group_gets_weight_beta_ln2(fn):
    one = torch.tensor([[0, 0, 3, 3.0]])
    same = torch.tensor([[0, 0, 2, 3.0], [5, 5, 8, 7.0], [1, 1, 7, 2.0]])  # all areas 6
    for target in (one, same):
        w = fn(target, beta=1.5)
        torch.testing.assert_close(w, torch.full((target.shape[0],), 1.5 * math.log(2)))


def test_paper_loss_by_hand():
    """Two boxes, iou2 with batch min-max weights, computed independently of the library."""
    target = torch.tensor([[0, 0, 2, 2], [0, 0, 4, 4.0]], dtype=torch.float64)
    pred = torch.tensor([[1, 0, 3, 2], [0, 0, 4, 2.0]], dtype=torch.float64)
    iou = [2 / (4 + 4 - 2), 8 / 16]
    weights = [2.0, 0.0]  # smallest box 2, largest 0
    expected = sum(w * (1 - i * i) for w, i in zip(weights, iou))
    got = scale_adaptive_iou_loss(pred, target, eps=0.0)
    assert got.item() == pytest.approx(expected, rel=1e-12)


@requires_extension
@pytest.mark.parametrize("loss_type", [t for t in LOSS_TYPES if t != "ciou"])
def test_gradcheck(loss_type):
    """Finite differences vs the kernel's gradient. CIoU is left out on purpose: its alpha is a
    constant by definition (not differentiated), so finite differences disagree with every CIoU
    implementation; its gradient is checked against autograd on the reference instead."""
    g = torch.Generator().manual_seed(2)
    target = torch.rand(6, 2, generator=g, dtype=torch.float64) * 10
    target = torch.cat([target, target + 2 + torch.rand(6, 2, generator=g, dtype=torch.float64) * 5], 1)
    pred = (target + torch.randn(6, 4, generator=g, dtype=torch.float64) * 0.7).requires_grad_(True)
    bi = torch.tensor([0, 0, 1, 1, 1, 2])
    for reduction, normalize in (("sum", "batch"), ("none", "image"), ("mean", "none")):
        assert torch.autograd.gradcheck(
            lambda p: scale_adaptive_iou_loss(p, target, loss_type=loss_type, normalize=normalize,
                                              batch_index=bi, reduction=reduction), (pred,))


def opcheck_samples(weight_norm: str) -> list:
    """Positional arguments of sarl::sal_loss for torch.library.opcheck: three option mixes."""
    pred, target = adversarial_pairs(torch.float64)
    n = pred.shape[0]
    return [
        (pred.clone().requires_grad_(True), target, None, None, "xyxy", "iou2", "batch", weight_norm, 2.885, 0.0, 0.0,
         "sum", 1e-7, True),
        (pred.clone().requires_grad_(True), target, torch.arange(n) % 3, torch.rand(n, dtype=torch.float64),
         "xyxy", "giou", "image", weight_norm, 1.0, 0.0, 0.0, "none", 1e-7, True),
        (pred.float(), target.float(), None, None, "cxcywh", "ciou", "fixed", weight_norm, 1.0, 1.0, 100.0, "mean",
         1e-7, False),
    ]


@requires_extension
def test_opcheck():
    for args in opcheck_samples("none"):
        torch.library.opcheck(torch.ops.sarl.sal_loss.default, args)
    target = adversarial_pairs(torch.float64)[1]
    torch.library.opcheck(torch.ops.sarl.sal_weights.default, (target, None, "xyxy", "batch", "none", 1.0, 0.0, 0.0))


# The hypothesis cases of check_random_case (shared with tests/test_sal_weight_norm.py).
random_cases = given(
    n=st.integers(0, 12),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1e-2, 1.0, 300.0]),
    loss_type=st.sampled_from(LOSS_TYPES),
    normalize=st.sampled_from(NORMALIZE_MODES),
    reduction=st.sampled_from(REDUCTIONS),
)


@requires_extension
@settings(max_examples=25, deadline=None, derandomize=True)
@random_cases
def test_property_op_equals_reference(n, seed, scale, loss_type, normalize, reduction):
    check_random_case(n, seed, scale, loss_type, normalize, reduction, weight_norm="none")


def check_random_case(n, seed, scale, loss_type, normalize, reduction, weight_norm):
    """Op vs reference (values, gradients) on n random boxes with rounded coordinates: ties and touching edges
    occur often."""
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(n, 4, generator=g, dtype=torch.float64) * 8).round() * scale
    pred = (torch.rand(n, 4, generator=g, dtype=torch.float64) * 8).round() * scale
    kw = dict(loss_type=loss_type, normalize=normalize, reduction=reduction, weight_norm=weight_norm,
              **_options(normalize, n))
    if normalize == "image" and n:
        kw["batch_index"] = torch.randint(0, 3, (n,), generator=g)
    loss, grad = _loss_and_grad(scale_adaptive_iou_loss, pred, target, **kw)
    ref_loss, ref_grad = _loss_and_grad(scale_adaptive_iou_loss_reference, pred, target, **kw)
    torch.testing.assert_close(loss, ref_loss, atol=1e-10, rtol=1e-10)
    # Degenerate boxes can give gradients of 1e7 and more (eps-sized unions): rounding scales with them.
    scale_of_grads = max(1.0, ref_grad.abs().max().item()) if n else 1.0
    torch.testing.assert_close(grad, ref_grad, atol=1e-10 * scale_of_grads, rtol=1e-10)


@requires_extension
def test_torch_compile():
    pred, target = adversarial_pairs(torch.float32)

    def step(p, t):
        return scale_adaptive_iou_loss(p.sigmoid() * 50, t, loss_type="giou") * 2.0

    compiled = torch.compile(step, backend="inductor", fullgraph=True)
    p1 = (pred / 50).logit(eps=1e-3).detach().requires_grad_(True)
    p2 = p1.detach().clone().requires_grad_(True)
    out, ref = compiled(p1, target), step(p2, target)
    out.backward()
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(p1.grad, p2.grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("fn", [scale_adaptive_iou_loss, scale_adaptive_iou_loss_reference])
def test_empty_input(fn, reduction):
    pred = torch.zeros(0, 4, requires_grad=True)
    loss = fn(pred, torch.zeros(0, 4), reduction=reduction)
    assert loss.shape == ((0,) if reduction == "none" else ())
    if reduction != "none":
        assert loss.item() == 0.0
    loss.sum().backward()
    assert pred.grad is not None and pred.grad.shape == (0, 4)


def test_non_contiguous_inputs():
    pred, target = adversarial_pairs(torch.float64)
    wide_p = torch.cat([pred, pred], 1)[:, ::2]  # stride 2: not contiguous
    wide_p = torch.stack([pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]], 0).t()  # transposed view
    wide_t = torch.stack([target[:, 0], target[:, 1], target[:, 2], target[:, 3]], 0).t()
    assert not wide_p.is_contiguous() and not wide_t.is_contiguous()
    kw = dict(loss_type="diou", reduction="none")
    torch.testing.assert_close(scale_adaptive_iou_loss(wide_p, wide_t, **kw), scale_adaptive_iou_loss(pred, target, **kw))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_in_float32(dtype):
    pred, target = adversarial_pairs(torch.float32)
    p = pred.to(dtype).requires_grad_(True)
    loss = scale_adaptive_iou_loss(p, target.to(dtype), reduction="none")
    assert loss.dtype == dtype
    ref = scale_adaptive_iou_loss_reference(pred.to(dtype).float(), target.to(dtype).float(), reduction="none")
    torch.testing.assert_close(loss.float(), ref, atol=2e-2, rtol=1e-2)
    loss.sum().backward()
    assert p.grad.dtype == dtype and torch.isfinite(p.grad.float()).all()


def test_only_pred_gets_a_gradient_and_backward_repeats():
    pred, target = adversarial_pairs(torch.float64)
    p = pred.clone().requires_grad_(True)
    t = target.clone().requires_grad_(True)
    w = torch.rand(pred.shape[0], dtype=torch.float64, requires_grad=True)
    loss = scale_adaptive_iou_loss(p, t, weight=w)
    loss.backward(retain_graph=True)
    first = p.grad.clone()
    loss.backward()  # the saved gradient must not have been scaled in place
    torch.testing.assert_close(p.grad, 2 * first)
    assert t.grad is None and w.grad is None


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_repeated_backward_accumulates(reduction):
    # grad_output is 1 here: a backward that hands out the gradient saved by the forward (instead of a fresh
    # tensor) lets autograd accumulate into it in place, which the second pass then reports or gets wrong.
    pred, target = adversarial_pairs(torch.float32)
    p = pred.clone().requires_grad_(True)
    loss = scale_adaptive_iou_loss(p, target, reduction=reduction)
    if reduction == "none":
        loss = loss.sum()
    loss.backward(retain_graph=True)
    first = p.grad.clone()
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(p.grad, 3 * first)


def test_module_wrapper():
    pred, target = adversarial_pairs(torch.float32)
    bi = torch.arange(pred.shape[0]) % 2
    module = ScaleAdaptiveIoULoss(loss_type="ciou", normalize="image", reduction="mean")
    torch.testing.assert_close(module(pred, target, batch_index=bi),
                               scale_adaptive_iou_loss(pred, target, loss_type="ciou", normalize="image",
                                                       batch_index=bi, reduction="mean"))
    assert "ciou" in repr(module)


def test_fallback_warns_once_and_matches_a_hand_computation(monkeypatch):
    """Without the extension the op runs its reference: checked against GIoU and the SAL weights
    worked out by hand for three pairs (not against the reference itself)."""
    pred = torch.tensor([[1, 1, 3, 3], [5, 0, 6, 4], [12, 10, 18, 16]], dtype=torch.float64)
    target = torch.tensor([[0, 0, 2, 2], [0, 0, 4, 4], [10, 10, 18, 14]], dtype=torch.float64)
    # (intersection, union, enclosing area, target area) of each pair:
    #   overlapping corners: 1, 4 + 4 - 1 = 7, 3 x 3 = 9, 4
    #   disjoint:            0, 16 + 4 = 20,   6 x 4 = 24, 16
    #   partial:             6 x 4 = 24, 32 + 36 - 24 = 44, 8 x 6 = 48, 32
    pairs = [(1, 7, 9, 4), (0, 20, 24, 16), (24, 44, 48, 32)]
    beta = 2 / math.log(2)
    # normalize="fixed" over (0, 64): s = area / 64, every weight non-zero.
    expected = [beta * math.log(2 - area / 64) * (1 - inter / union + (enclosing - union) / enclosing)
                for inter, union, enclosing, area in pairs]
    monkeypatch.setenv("SARL_DISABLE_EXTENSION", "1")
    monkeypatch.setattr(_extension, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="pure-PyTorch reference"):
        got = scale_adaptive_iou_loss(pred, target, loss_type="giou", normalize="fixed", area_range=(0.0, 64.0),
                                      reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-7, atol=0)


def test_degenerate_boxes_are_zero_area_not_errors():
    pred = torch.tensor([[5.0, 5.0, 1.0, 1.0]], requires_grad=True)  # x2 < x1
    target = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    loss = scale_adaptive_iou_loss(pred, target, loss_type="iou", normalize="none")
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def _with_non_finite_rows(dtype):
    pred, target = adversarial_pairs(dtype)
    pred = pred.clone()
    pred[1, 0] = float("nan")
    pred[3, 2] = float("inf")
    pred[5, 1] = -float("inf")
    return pred, target, [1, 3, 5]


@requires_extension
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("box_format", BOX_FORMATS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_non_finite_pred_propagates_like_the_reference(loss_type, box_format, reduction):
    """A NaN or infinite predicted coordinate gives a NaN loss for its box (so a NaN sum) and a NaN gradient on
    its whole row, in the fused op and in the reference alike; the other rows are untouched."""
    pred, target, bad = _with_non_finite_rows(torch.float64)
    if box_format == "cxcywh":
        target = _xyxy_to_cxcywh(target)
    kw = dict(loss_type=loss_type, box_format=box_format, reduction=reduction)
    loss, grad = _loss_and_grad(scale_adaptive_iou_loss, pred, target, **kw)
    ref_loss, ref_grad = _loss_and_grad(scale_adaptive_iou_loss_reference, pred, target, **kw)
    assert not torch.isfinite(loss).all() and not torch.isfinite(ref_loss).all()
    torch.testing.assert_close(loss, ref_loss, equal_nan=True, **TOLERANCES[torch.float64])
    torch.testing.assert_close(grad, ref_grad, equal_nan=True, **TOLERANCES[torch.float64])
    assert torch.isnan(grad[bad]).all() and torch.isnan(ref_grad[bad]).all()
    good = [i for i in range(pred.shape[0]) if i not in bad]
    assert torch.isfinite(grad[good]).all()
    if reduction == "none":
        assert torch.isnan(loss[bad]).all() and torch.isfinite(loss[good]).all()


@requires_extension
def test_all_nan_pred_gives_nan_not_a_finite_number():
    """The case of the SAL issue: all-NaN predictions used to return about -6e23 (fused) and 772 (reference)."""
    target = torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 9.0, 5.0], [2.0, 0.0, 3.0, 30.0]])
    pred = torch.full_like(target, float("nan"))
    assert torch.isnan(scale_adaptive_iou_loss(pred, target))
    assert torch.isnan(scale_adaptive_iou_loss_reference(pred, target))
    one_row = target.clone()
    one_row[0] = float("nan")
    assert torch.isnan(scale_adaptive_iou_loss(one_row, target))
    assert torch.isnan(scale_adaptive_iou_loss_reference(one_row, target))
