"""CUDA kernels of the SAL op against the CPU reference (run only where a GPU and the CUDA build exist)."""
from __future__ import annotations

import pytest
import torch

import sarl.ops
from sarl.ops import sal_weights, scale_adaptive_iou_loss
from sarl.ops.sal_reference import (
    BOX_FORMATS,
    LOSS_TYPES,
    NORMALIZE_MODES,
    REDUCTIONS,
    sal_weights_reference,
    scale_adaptive_iou_loss_reference,
)

from test_sal_op import _loss_and_grad, _options, _xyxy_to_cxcywh, adversarial_pairs

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
    pytest.mark.skipif(not sarl.ops.cuda_kernels_available(),
                       reason="sarl._C was built without CUDA kernels (build with FORCE_CUDA=1)"),
]

TOLERANCES = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-5, rtol=1e-5)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("box_format", BOX_FORMATS)
@pytest.mark.parametrize("normalize", NORMALIZE_MODES)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_cuda_matches_cpu_reference(loss_type, normalize, box_format, reduction, dtype):
    pred, target = adversarial_pairs(dtype)
    if box_format == "cxcywh":
        pred, target = _xyxy_to_cxcywh(pred), _xyxy_to_cxcywh(target)
    kw = dict(loss_type=loss_type, box_format=box_format, normalize=normalize, reduction=reduction,
              weight=torch.linspace(0.5, 2.0, pred.shape[0], dtype=dtype), **_options(normalize, pred.shape[0]))
    kw_cuda = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    loss, grad = _loss_and_grad(scale_adaptive_iou_loss, pred.cuda(), target.cuda(), **kw_cuda)
    ref_loss, ref_grad = _loss_and_grad(scale_adaptive_iou_loss_reference, pred, target, **kw)
    torch.testing.assert_close(loss.cpu(), ref_loss, **TOLERANCES[dtype])
    torch.testing.assert_close(grad.cpu(), ref_grad, **TOLERANCES[dtype])


@pytest.mark.parametrize("normalize", NORMALIZE_MODES)
def test_cuda_weights(normalize):
    _, target = adversarial_pairs(torch.float64)
    opts = _options(normalize, target.shape[0])
    opts_cuda = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in opts.items()}
    torch.testing.assert_close(sal_weights(target.cuda(), normalize=normalize, **opts_cuda).cpu(),
                               sal_weights_reference(target, normalize=normalize, **opts))


def test_cuda_large_batch_min_max_and_sum():
    """Many blocks: the block-level min/max and the partial sums must combine correctly."""
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(300_000, 2, generator=g, dtype=torch.float64) * 800
    target = torch.cat([xy, xy + torch.rand(300_000, 2, generator=g, dtype=torch.float64) * 50 + 0.5], 1)
    pred = target + torch.randn(300_000, 4, generator=g, dtype=torch.float64)
    loss, grad = _loss_and_grad(scale_adaptive_iou_loss, pred.cuda(), target.cuda())
    ref_loss, ref_grad = _loss_and_grad(scale_adaptive_iou_loss_reference, pred, target)
    torch.testing.assert_close(loss.cpu(), ref_loss, atol=1e-8, rtol=1e-10)
    torch.testing.assert_close(grad.cpu(), ref_grad, atol=1e-10, rtol=1e-10)


def test_cuda_errors_and_empty():
    bad = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, float("nan"), 1.0, 1.0]], device="cuda")
    with pytest.raises(ValueError, match="target must be finite: row 1"):
        scale_adaptive_iou_loss(bad.clone(), bad)
    empty = torch.zeros(0, 4, device="cuda", requires_grad=True)
    loss = scale_adaptive_iou_loss(empty, torch.zeros(0, 4, device="cuda"), reduction="mean")
    loss.backward()
    assert loss.item() == 0.0 and empty.grad.shape == (0, 4)


def test_cuda_opcheck():
    pred, target = adversarial_pairs(torch.float32)
    args = (pred.cuda().requires_grad_(True), target.cuda(), None, None, "xyxy", "iou2", "batch", 2.885, 0.0, 0.0,
            "sum", 1e-7, True)
    torch.library.opcheck(torch.ops.sarl.sal_loss.default, args)
