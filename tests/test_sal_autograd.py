"""Autograd of the fused SAL op (csrc/sal/sal_autograd.cpp): the C++ node registered for the Autograd key.

Its backward hands the gradient saved by the forward over (scaled in place, or as is for a grad_output of 1)
when nothing else can see it, and falls back to a new tensor otherwise; these tests cover the cases where
that hand-over would be wrong if it happened: non-unit grad_output, retain_graph, a caller holding the op's
grad_pred output, accumulation into an existing .grad, create_graph. Also: the AVX2 and baseline CPU loops
give the same bits.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import sarl.ops
from conftest import needs_extension
from sarl.ops import scale_adaptive_iou_loss
from sarl.ops.sal_reference import PAPER_SAL_BETA, scale_adaptive_iou_loss_reference

pytestmark = needs_extension(
    "sarl._C with the SAL kernels of these sources", sarl.ops.extension_available() and sarl.ops.sal.kernels_available())


def _pairs(n: int = 64, dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * 100
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 30 + 1
    target = torch.cat([xy, xy + wh], 1)
    pred = target + torch.randn(n, 4, generator=g, dtype=dtype) * 3
    return pred, target


def _reference_grad(pred, target, grad_output=None, **kwargs):
    p = pred.clone().requires_grad_(True)
    loss = scale_adaptive_iou_loss_reference(p, target, **kwargs)
    loss.backward(grad_output)
    return p.grad


def _raw_op_args(pred, target, compute_grad=True, reduction="sum"):
    return (pred, target, None, None, "xyxy", "iou2", "batch", "none", PAPER_SAL_BETA, 0.0, 0.0, reduction, 1e-7,
            compute_grad)


def test_autograd_kernel_is_the_cpp_node():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("sarl::sal_loss", "Autograd")
    pred, target = _pairs()
    loss = scale_adaptive_iou_loss(pred.requires_grad_(True), target)
    assert "SalLossFunction" in loss.grad_fn.name()


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("grad_output", [2.5, -1.0, 0.0, 1.0])
def test_scalar_grad_output_scales_the_gradient(reduction, grad_output):
    pred, target = _pairs()
    p = pred.clone().requires_grad_(True)
    go = torch.tensor(grad_output, dtype=pred.dtype)
    scale_adaptive_iou_loss(p, target, reduction=reduction).backward(go)
    torch.testing.assert_close(p.grad, _reference_grad(pred, target, go, reduction=reduction))


def test_per_box_grad_output_with_reduction_none():
    pred, target = _pairs()
    go = torch.randn(pred.shape[0], dtype=pred.dtype, generator=torch.Generator().manual_seed(1))
    p = pred.clone().requires_grad_(True)
    scale_adaptive_iou_loss(p, target, reduction="none").backward(go)
    torch.testing.assert_close(p.grad, _reference_grad(pred, target, go, reduction="none"))


def test_hook_on_the_loss_changes_grad_output():
    pred, target = _pairs()
    p = pred.clone().requires_grad_(True)
    loss = scale_adaptive_iou_loss(p, target)
    loss.register_hook(lambda g: g * 3)
    loss.backward()
    torch.testing.assert_close(p.grad, 3 * _reference_grad(pred, target))


def test_retain_graph_gives_the_same_gradient_each_time():
    pred, target = _pairs()
    p = pred.clone().requires_grad_(True)
    loss = scale_adaptive_iou_loss(p, target)
    (first,) = torch.autograd.grad(loss, p, retain_graph=True)
    (second,) = torch.autograd.grad(loss, p, torch.tensor(2.0, dtype=pred.dtype), retain_graph=True)
    (third,) = torch.autograd.grad(loss, p)
    torch.testing.assert_close(first, _reference_grad(pred, target))
    torch.testing.assert_close(second, 2 * first)
    torch.testing.assert_close(third, first)


def test_second_backward_without_retain_graph_raises():
    pred, target = _pairs()
    p = pred.clone().requires_grad_(True)
    loss = scale_adaptive_iou_loss(p, target)
    loss.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()


def test_backward_accumulates_into_an_existing_grad():
    pred, target = _pairs()
    p = pred.clone().requires_grad_(True)
    scale_adaptive_iou_loss(p, target).backward()
    first = p.grad.clone()
    scale_adaptive_iou_loss(p, target).backward()
    scale_adaptive_iou_loss(p, target).backward(torch.tensor(0.5, dtype=pred.dtype))
    torch.testing.assert_close(p.grad, 2.5 * first)


@pytest.mark.parametrize("grad_output", [1.0, 4.0])
def test_backward_leaves_a_held_grad_pred_output_alone(grad_output):
    # A caller of the raw op that keeps its grad_pred output must not see it scaled or adopted as pred.grad.
    pred, target = _pairs()
    p = pred.clone().requires_grad_(True)
    loss, grad_pred = torch.ops.sarl.sal_loss(*_raw_op_args(p, target))
    kept = grad_pred.clone()
    loss.backward(torch.tensor(grad_output, dtype=pred.dtype))
    torch.testing.assert_close(grad_pred, kept, rtol=0, atol=0)
    assert p.grad.data_ptr() != grad_pred.data_ptr()
    torch.testing.assert_close(p.grad, grad_output * kept)


def test_compute_grad_false_then_backward_raises():
    pred, target = _pairs()
    p = pred.clone().requires_grad_(True)
    loss, grad_pred = torch.ops.sarl.sal_loss(*_raw_op_args(p, target, compute_grad=False))
    assert grad_pred.shape == (0, 4)
    with pytest.raises(RuntimeError, match="compute_grad"):
        loss.backward()


def test_grad_pred_output_is_not_differentiable():
    pred, target = _pairs()
    p = pred.clone().requires_grad_(True)
    loss, grad_pred = torch.ops.sarl.sal_loss(*_raw_op_args(p, target))
    assert loss.requires_grad and not grad_pred.requires_grad


def test_create_graph_gives_the_gradient_and_refuses_a_second_derivative():
    pred, target = _pairs()
    p = pred.clone().requires_grad_(True)
    loss = scale_adaptive_iou_loss(p, target)
    (grad,) = torch.autograd.grad(loss, p, create_graph=True)
    torch.testing.assert_close(grad, _reference_grad(pred, target))
    assert grad.requires_grad
    with pytest.raises(RuntimeError, match="double backward"):
        grad.sum().backward()


def test_two_calls_give_the_same_bits():
    pred, target = _pairs(dtype=torch.float32)
    results = []
    for _ in range(2):
        p = pred.clone().requires_grad_(True)
        loss = scale_adaptive_iou_loss(p, target)
        loss.backward()
        results.append((loss.detach(), p.grad))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


_AVX2_PROBE = """
import torch, sys
from sarl.ops import scale_adaptive_iou_loss
g = torch.Generator().manual_seed(0)
n = 20000
xy = torch.rand(n, 2, generator=g) * 500
target = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 40], 1)
pred = target + torch.randn(n, 4, generator=g) * 4
pred[7, 2] = float("nan")
out = {}
for loss_type in ("iou2", "iou", "giou", "diou", "ciou"):
    for box_format in ("xyxy", "cxcywh"):
        for normalize in ("batch", "none"):
            p = pred.clone().requires_grad_(True)
            loss = scale_adaptive_iou_loss(p, target, loss_type=loss_type, box_format=box_format,
                                           normalize=normalize, reduction="none")
            loss.sum().backward()
            out[(loss_type, box_format, normalize)] = (loss.detach(), p.grad)
torch.save(out, sys.argv[1])
"""


def test_avx2_and_baseline_loops_give_the_same_bits(tmp_path):
    """The loss pass is compiled twice on x86-64 (baseline and AVX2, chosen at run time); without FMA
    contraction both round alike, so values and gradients must agree to the bit (NaN where NaN)."""
    results = []
    for disable in ("0", "1"):
        path = tmp_path / f"out{disable}.pt"
        env = dict(os.environ, SARL_SAL_DISABLE_AVX2=disable, OMP_NUM_THREADS="1")
        subprocess.run([sys.executable, "-c", _AVX2_PROBE, str(path)], check=True, env=env)
        results.append(torch.load(path))
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        for a, b in zip(results[0][key], results[1][key]):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=lambda m, k=key: f"{k}: {m}")
