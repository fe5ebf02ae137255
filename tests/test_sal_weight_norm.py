"""weight_norm="mean" of the SAL op (this project's option; "none" is the paper): each SAL weight divided by the
mean weight of its group, so the loss keeps the scale of the unweighted loss and only the reweighting remains.

Checked against a hand formula (float64, written here without the library), the fused kernels against the
reference (values, gradients, gradcheck, opcheck, hypothesis), the edge cases (a group whose weights are all 0, NaN
predictions, areas that overflow), and on CUDA where a GPU and the CUDA build exist (skipped otherwise).
"""
from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import settings

from conftest import needs_cuda_kernels
from sarl.ops import PAPER_SAL_BETA, ScaleAdaptiveIoULoss, sal_weights, scale_adaptive_iou_loss
from sarl.ops.sal_reference import (
    BOX_FORMATS,
    LOSS_TYPES,
    NORMALIZE_MODES,
    REDUCTIONS,
    sal_weights_reference,
    scale_adaptive_iou_loss_reference,
)

from test_sal_op import (
    TOLERANCES,
    _loss_and_grad,
    _options,
    _with_non_finite_rows,
    adversarial_pairs,
    check_random_case,
    opcheck_samples,
    option_case,
    random_cases,
    requires_extension,
)

LOSS_FUNCTIONS = [scale_adaptive_iou_loss, scale_adaptive_iou_loss_reference]
WEIGHT_FUNCTIONS = [sal_weights, sal_weights_reference]


def cuda_test(test):
    """The marks of tests/conftest.py's needs_cuda_kernels: skipped without a GPU and the CUDA build."""
    return functools.reduce(lambda t, mark: mark(t), needs_cuda_kernels, test)


# ------------------------------------------------------------------------------ the hand formula
def _random_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n overlapping float64 xyxy pairs with distinct target areas."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50
    target = torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 30], 1)
    pred = target + torch.randn(n, 4, generator=g, dtype=torch.float64)
    return pred, target


def _area(b: torch.Tensor) -> torch.Tensor:
    return (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)


def _iou_by_hand(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    iw = (torch.minimum(pred[:, 2], target[:, 2]) - torch.maximum(pred[:, 0], target[:, 0])).clamp(min=0)
    ih = (torch.minimum(pred[:, 3], target[:, 3]) - torch.maximum(pred[:, 1], target[:, 1])).clamp(min=0)
    inter = iw * ih
    return inter / (_area(pred) + _area(target) - inter)


def _weights_by_hand(target: torch.Tensor, group: torch.Tensor, beta: float, weight_norm: str) -> torch.Tensor:
    """beta * ln(2 - s_i), s_i min-max normalised within each group, then divided by the group's mean weight."""
    areas = _area(target)
    w = torch.empty_like(areas)
    for g in group.unique():
        members = group == g
        lo, hi = areas[members].min(), areas[members].max()
        s = (areas[members] - lo) / (hi - lo) if hi > lo else torch.zeros_like(areas[members])
        w[members] = beta * torch.log(2 - s)
        if weight_norm == "mean":
            w[members] = w[members] / w[members].mean()
    return w


@pytest.mark.parametrize("fn", LOSS_FUNCTIONS)
@pytest.mark.parametrize("weight_norm", ["mean", "none"])
@pytest.mark.parametrize("normalize", ["batch", "image"])
def test_loss_equals_the_hand_formula(fn, weight_norm, normalize):
    """sum_i (w_i / mean(w)) * (1 - IoU_i^2), the mean over all boxes ("batch") or each image ("image");
    weight_norm="none" is the paper's sum_i w_i * (1 - IoU_i^2)."""
    pred, target = _random_pairs(13, seed=4)
    batch_index = torch.tensor([0, 0, 1, 2, 1, 0, 2, 2, 1, 0, 0, 1, 3])  # image 3 holds one box
    group = batch_index if normalize == "image" else torch.zeros(13, dtype=torch.long)
    beta = 1.7
    w = _weights_by_hand(target, group, beta, weight_norm)
    per_box = w * (1 - _iou_by_hand(pred, target) ** 2)
    got = fn(pred, target, beta=beta, normalize=normalize, batch_index=batch_index, weight_norm=weight_norm, eps=0.0,
             reduction="none")
    torch.testing.assert_close(got, per_box, atol=1e-12, rtol=1e-12)
    total = fn(pred, target, beta=beta, normalize=normalize, batch_index=batch_index, weight_norm=weight_norm,
               eps=0.0)
    assert total.item() == pytest.approx(per_box.sum().item(), rel=1e-12)


@pytest.mark.parametrize("fn", WEIGHT_FUNCTIONS)
@pytest.mark.parametrize("normalize", ["batch", "image", "fixed"])
def test_normalised_weights_average_one_per_group(fn, normalize):
    """The loss scale of the unweighted loss: each group's weights average 1 (at the paper's beta they average
    about 0.5-1.4 before, depending on the areas)."""
    _, target = _random_pairs(40, seed=7)
    batch_index = torch.arange(40) % 3
    opts = dict(normalize=normalize, batch_index=batch_index, area_range=(10.0, 600.0))
    raw = fn(target, **opts)
    normalised = fn(target, weight_norm="mean", **opts)
    groups = [batch_index == g for g in range(3)] if normalize == "image" else [torch.ones(40, dtype=torch.bool)]
    for members in groups:
        assert normalised[members].mean().item() == pytest.approx(1.0, rel=1e-12)
        assert raw[members].mean().item() != pytest.approx(1.0, rel=1e-3)
        torch.testing.assert_close(normalised[members], raw[members] / raw[members].mean())


@pytest.mark.parametrize("fn", LOSS_FUNCTIONS)
def test_mean_is_over_the_sal_weights_only(fn):
    """The per-box weight= multiplies the normalised SAL weight; it is not part of the mean."""
    pred, target = _random_pairs(9, seed=11)
    user = torch.linspace(0.2, 3.0, 9, dtype=torch.float64)
    w = _weights_by_hand(target, torch.zeros(9, dtype=torch.long), PAPER_SAL_BETA, "mean")
    expected = (w * user * (1 - _iou_by_hand(pred, target) ** 2)).sum()
    got = fn(pred, target, weight=user, weight_norm="mean", eps=0.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("fn", LOSS_FUNCTIONS)
def test_weight_norm_is_a_no_op_without_sal_weights(fn):
    pred, target = _random_pairs(6, seed=2)
    plain = 1 - _iou_by_hand(pred, target) ** 2
    got = fn(pred, target, normalize="none", weight_norm="mean", eps=0.0, reduction="none")
    torch.testing.assert_close(got, plain, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("fn", LOSS_FUNCTIONS)
def test_group_whose_weights_are_all_zero_keeps_them(fn):
    """"fixed" ranges with every box at or above hi: every weight is 0, the mean is 0 and the weights stay 0
    (a finite loss of 0 and a zero gradient, not 0/0 = NaN)."""
    pred, target = _random_pairs(5, seed=3)
    assert _area(target).min() > 2.0
    p = pred.clone().requires_grad_(True)
    loss = fn(p, target, normalize="fixed", area_range=(0.0, 1.0), weight_norm="mean", reduction="none")
    loss.sum().backward()
    assert torch.equal(loss.detach(), torch.zeros(5, dtype=torch.float64))
    assert torch.isfinite(p.grad).all() and not p.grad.any()
    weights = sal_weights(target, normalize="fixed", area_range=(0.0, 1.0), weight_norm="mean")
    assert torch.equal(weights, torch.zeros(5, dtype=torch.float64))


# ------------------------------------------------------------------------------ kernels vs reference
@requires_extension
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", [(t, n, f, r) for t in LOSS_TYPES for n in NORMALIZE_MODES for f in BOX_FORMATS
                                  for r in REDUCTIONS], ids="-".join)
def test_kernel_matches_reference(case, dtype):
    loss_type, normalize, box_format, reduction = case
    pred, target, kw = option_case(loss_type, normalize, box_format, reduction, dtype)
    kw["weight_norm"] = "mean"
    loss, grad = _loss_and_grad(scale_adaptive_iou_loss, pred, target, **kw)
    ref_loss, ref_grad = _loss_and_grad(scale_adaptive_iou_loss_reference, pred, target, **kw)
    torch.testing.assert_close(loss, ref_loss, **TOLERANCES[dtype])
    torch.testing.assert_close(grad, ref_grad, **TOLERANCES[dtype])
    if normalize != "none":  # the normalisation changes the result (not a comparison of two no-ops)
        plain, _ = _loss_and_grad(scale_adaptive_iou_loss_reference, pred, target, **{**kw, "weight_norm": "none"})
        assert not torch.allclose(loss, plain)


@requires_extension
@pytest.mark.parametrize("normalize", NORMALIZE_MODES)
@pytest.mark.parametrize("box_format", BOX_FORMATS)
def test_kernel_weights_match_reference(normalize, box_format):
    _, target = adversarial_pairs(torch.float64)
    if box_format == "cxcywh":
        target = torch.cat([(target[:, :2] + target[:, 2:]) / 2, target[:, 2:] - target[:, :2]], 1)
    opts = dict(box_format=box_format, normalize=normalize, weight_norm="mean", **_options(normalize, target.shape[0]))
    torch.testing.assert_close(sal_weights(target, **opts), sal_weights_reference(target, **opts),
                               atol=1e-12, rtol=1e-12)


@requires_extension
@pytest.mark.parametrize("loss_type", [t for t in LOSS_TYPES if t != "ciou"])  # CIoU's alpha: see test_sal_op
def test_gradcheck(loss_type):
    pred, target = _random_pairs(6, seed=5)
    pred.requires_grad_(True)
    bi = torch.tensor([0, 0, 1, 1, 1, 2])
    for reduction, normalize in (("sum", "batch"), ("none", "image"), ("mean", "fixed")):
        assert torch.autograd.gradcheck(
            lambda p: scale_adaptive_iou_loss(p, target, loss_type=loss_type, normalize=normalize, batch_index=bi,
                                              area_range=(4.0, 500.0), reduction=reduction, weight_norm="mean"),
            (pred,))


@requires_extension
def test_opcheck():
    for args in opcheck_samples("mean"):
        torch.library.opcheck(torch.ops.sarl.sal_loss.default, args)
    target = adversarial_pairs(torch.float64)[1]
    n = target.shape[0]
    torch.library.opcheck(torch.ops.sarl.sal_weights.default, (target, None, "xyxy", "batch", "mean", 1.0, 0.0, 0.0))
    torch.library.opcheck(torch.ops.sarl.sal_weights.default,
                          (target, torch.arange(n) % 2, "xyxy", "image", "mean", 1.0, 0.0, 0.0))


@requires_extension
@settings(max_examples=25, deadline=None, derandomize=True)
@random_cases
def test_property_kernel_equals_reference(n, seed, scale, loss_type, normalize, reduction):
    check_random_case(n, seed, scale, loss_type, normalize, reduction, weight_norm="mean")


# ------------------------------------------------------------------------------ non-finite values
@requires_extension
@pytest.mark.parametrize("normalize", ["batch", "image"])
def test_nan_prediction_still_gives_a_nan_loss(normalize):
    """As with the paper's weights: a NaN/inf predicted row gives a NaN loss and a NaN gradient row; the other
    rows keep finite, normalised values (the weights depend on the targets only)."""
    pred, target, bad = _with_non_finite_rows(torch.float64)
    kw = dict(normalize=normalize, weight_norm="mean", reduction="none", **_options(normalize, pred.shape[0]))
    loss, grad = _loss_and_grad(scale_adaptive_iou_loss, pred, target, **kw)
    ref_loss, ref_grad = _loss_and_grad(scale_adaptive_iou_loss_reference, pred, target, **kw)
    torch.testing.assert_close(loss, ref_loss, equal_nan=True, **TOLERANCES[torch.float64])
    torch.testing.assert_close(grad, ref_grad, equal_nan=True, **TOLERANCES[torch.float64])
    good = [i for i in range(pred.shape[0]) if i not in bad]
    assert torch.isnan(loss[bad]).all() and torch.isnan(grad[bad]).all()
    assert torch.isfinite(loss[good]).all() and torch.isfinite(grad[good]).all()
    assert torch.isnan(scale_adaptive_iou_loss(pred, target, **{**kw, "reduction": "sum"}))


@pytest.mark.parametrize("fn", WEIGHT_FUNCTIONS)
def test_overflowing_area_counts_in_no_mean(fn):
    """Finite corners whose difference overflows give an area of NaN and a NaN weight (as without weight_norm); it
    is left out of the mean, so the other boxes' weights stay finite and average 1."""
    big = torch.finfo(torch.float64).max
    target = torch.tensor([[0.0, 0.0, 4.0, 4.0], [-big, 0.0, big, 0.0], [0.0, 0.0, 10.0, 10.0],
                           [2.0, 2.0, 3.0, 3.0]], dtype=torch.float64)
    w = fn(target, weight_norm="mean")
    assert torch.isnan(w[1]) and torch.isfinite(w[[0, 2, 3]]).all()
    assert w[[0, 2, 3]].mean().item() == pytest.approx(1.0, rel=1e-12)


def test_module_and_bad_value():
    pred, target = adversarial_pairs(torch.float32)
    module = ScaleAdaptiveIoULoss(weight_norm="mean", reduction="mean")
    torch.testing.assert_close(module(pred, target), scale_adaptive_iou_loss(pred, target, weight_norm="mean",
                                                                             reduction="mean"))
    assert "weight_norm='mean'" in repr(module)
    with pytest.raises(ValueError, match="weight_norm must be one of 'none', 'mean'"):
        scale_adaptive_iou_loss(pred, target, weight_norm="max")
    with pytest.raises(ValueError, match="weight_norm"):
        sal_weights(target, weight_norm="Mean")


def test_extension_from_older_sources_runs_the_reference(monkeypatch):
    """A sarl._C whose SAL ops lack weight_norm (built before it) must not be called with the new arguments: the
    reference runs instead, after a one-time warning that says to rebuild."""
    from sarl.ops import _extension, sal

    monkeypatch.setattr(sal, "_HAS_SAL_OPS", False)
    monkeypatch.setattr(_extension, "_WARNED", set())
    pred, target = _random_pairs(5, seed=8)
    with pytest.warns(RuntimeWarning, match="built from older sources"):
        got = scale_adaptive_iou_loss(pred, target, weight_norm="mean", eps=0.0)
    w = _weights_by_hand(target, torch.zeros(5, dtype=torch.long), PAPER_SAL_BETA, "mean")
    assert got.item() == pytest.approx((w * (1 - _iou_by_hand(pred, target) ** 2)).sum().item(), rel=1e-12)


def test_paper_weights_average_far_from_one_at_the_paper_beta():
    """The issue's measurement in miniature: at beta = 2/ln2 the paper's weights average well above 1 (the loss
    scale grows with beta), while the normalised ones average 1 at every beta."""
    _, target = _random_pairs(200, seed=9)
    means = {beta: sal_weights(target, beta=beta).mean().item() for beta in (1.0, 1 / math.log(2), PAPER_SAL_BETA)}
    assert means[PAPER_SAL_BETA] == pytest.approx(2 * means[1 / math.log(2)], rel=1e-9)
    assert means[PAPER_SAL_BETA] > 1.2
    for beta in means:
        assert sal_weights(target, beta=beta, weight_norm="mean").mean().item() == pytest.approx(1.0, rel=1e-12)


# ------------------------------------------------------------------------------ CUDA (skipped without a GPU)
def _cuda_kw(kw: dict) -> dict:
    return {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


@cuda_test
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("normalize", NORMALIZE_MODES)
@pytest.mark.parametrize("loss_type", ["iou2", "ciou"])
def test_cuda_matches_cpu_reference(loss_type, normalize, reduction, dtype):
    pred, target, kw = option_case(loss_type, normalize, "xyxy", reduction, dtype)
    kw["weight_norm"] = "mean"
    loss, grad = _loss_and_grad(scale_adaptive_iou_loss, pred.cuda(), target.cuda(), **_cuda_kw(kw))
    ref_loss, ref_grad = _loss_and_grad(scale_adaptive_iou_loss_reference, pred, target, **kw)
    torch.testing.assert_close(loss.cpu(), ref_loss, **TOLERANCES[dtype])
    torch.testing.assert_close(grad.cpu(), ref_grad, **TOLERANCES[dtype])
    opts = {k: v for k, v in kw.items() if k in ("normalize", "batch_index", "area_range", "weight_norm")}
    torch.testing.assert_close(sal_weights(target.cuda(), **_cuda_kw(opts)).cpu(),
                               sal_weights_reference(target, **opts), **TOLERANCES[dtype])


@cuda_test
@pytest.mark.parametrize("normalize", ["batch", "image"])
def test_cuda_many_blocks(normalize):
    """300k boxes (50 images for "image"): the per-block partial sums and the per-image atomics of the means."""
    g = torch.Generator().manual_seed(6)
    n = 300_000
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 800
    target = torch.cat([xy, xy + torch.rand(n, 2, generator=g, dtype=torch.float64) * 60 + 0.5], 1)
    pred = target + torch.randn(n, 4, generator=g, dtype=torch.float64)
    kw = dict(normalize=normalize, weight_norm="mean", batch_index=torch.randint(0, 50, (n,), generator=g))
    loss, grad = _loss_and_grad(scale_adaptive_iou_loss, pred.cuda(), target.cuda(), **_cuda_kw(kw))
    ref_loss, ref_grad = _loss_and_grad(scale_adaptive_iou_loss_reference, pred, target, **kw)
    torch.testing.assert_close(loss.cpu(), ref_loss, atol=1e-8, rtol=1e-10)
    torch.testing.assert_close(grad.cpu(), ref_grad, atol=1e-10, rtol=1e-10)


@cuda_test
def test_cuda_batch_mode_makes_no_host_sync():
    pred, target = adversarial_pairs(torch.float32)
    pred, target = pred.cuda().requires_grad_(), target.cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = scale_adaptive_iou_loss(pred, target, weight_norm="mean")
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = scale_adaptive_iou_loss_reference(pred.detach().cpu(), target.cpu(), weight_norm="mean")
    torch.testing.assert_close(loss.detach().cpu(), ref, atol=1e-4, rtol=1e-5)


@cuda_test
def test_cuda_opcheck_and_zero_weights():
    pred, target = adversarial_pairs(torch.float32)
    args = (pred.cuda().requires_grad_(True), target.cuda(), None, None, "xyxy", "iou2", "batch", "mean", 2.885, 0.0,
            0.0, "sum", 1e-7, True)
    torch.library.opcheck(torch.ops.sarl.sal_loss.default, args)
    zero = sal_weights(target.cuda() * 10 + 100, normalize="fixed", area_range=(0.0, 1.0), weight_norm="mean")
    assert torch.equal(zero.cpu(), torch.zeros(target.shape[0]))
