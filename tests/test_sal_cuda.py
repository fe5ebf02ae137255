"""CUDA kernels of the SAL op against the CPU reference (run only where a GPU and the CUDA build exist)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import sarl.ops
from conftest import needs_cuda_kernels
from sarl.ops import sal_weights, scale_adaptive_iou_loss
from sarl.ops.sal_reference import (
    BOX_FORMATS,
    LOSS_TYPES,
    NORMALIZE_MODES,
    REDUCTIONS,
    sal_weights_reference,
    scale_adaptive_iou_loss_reference,
)

from test_sal_op import TOLERANCES, _loss_and_grad, _options, adversarial_pairs, option_case

pytestmark = needs_cuda_kernels


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("box_format", BOX_FORMATS)
@pytest.mark.parametrize("normalize", NORMALIZE_MODES)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_cuda_matches_cpu_reference(loss_type, normalize, box_format, reduction, dtype):
    pred, target, kw = option_case(loss_type, normalize, box_format, reduction, dtype)
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


def test_cuda_empty():
    empty = torch.zeros(0, 4, device="cuda", requires_grad=True)
    loss = scale_adaptive_iou_loss(empty, torch.zeros(0, 4, device="cuda"), reduction="mean")
    loss.backward()
    assert loss.item() == 0.0 and empty.grad.shape == (0, 4)


def test_cuda_non_finite_target_fails_the_stream():
    """No host copy to raise a ValueError: a device-side assert stops the stream instead (run in a
    child process, since it leaves the CUDA context unusable)."""
    code = (
        "import torch, sarl.ops\n"
        "bad = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, float('nan'), 1.0, 1.0]], device='cuda')\n"
        "loss = sarl.ops.scale_adaptive_iou_loss(bad.clone(), bad)\n"
        "torch.cuda.synchronize()\n"
        "print('NO ERROR', loss.item())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "NO ERROR" not in proc.stdout
    assert "assert" in (proc.stderr + proc.stdout).lower()


def test_cuda_batch_mode_makes_no_host_sync():
    """The default ("batch") path launches kernels only: synchronising calls raise in this mode."""
    pred, target = adversarial_pairs(torch.float32)
    pred, target = pred.cuda().requires_grad_(), target.cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = scale_adaptive_iou_loss(pred, target)
        loss.backward()
        weights = sal_weights(target)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = scale_adaptive_iou_loss_reference(pred.detach().cpu().requires_grad_(), target.cpu())
    torch.testing.assert_close(loss.cpu(), ref.detach(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(weights.cpu(), sal_weights_reference(target.cpu()))


def test_cuda_image_mode_over_many_blocks():
    """normalize="image" with 300k boxes in 50 images: the per-image atomics span many blocks."""
    g = torch.Generator().manual_seed(5)
    n = 300_000
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 800
    target = torch.cat([xy, xy + torch.rand(n, 2, generator=g, dtype=torch.float64) * 60 + 0.5], 1)
    pred = target + torch.randn(n, 4, generator=g, dtype=torch.float64)
    batch_index = torch.randint(0, 50, (n,), generator=g)
    kw = dict(normalize="image", batch_index=batch_index)
    loss, grad = _loss_and_grad(scale_adaptive_iou_loss, pred.cuda(), target.cuda(), normalize="image",
                                batch_index=batch_index.cuda())
    ref_loss, ref_grad = _loss_and_grad(scale_adaptive_iou_loss_reference, pred, target, **kw)
    torch.testing.assert_close(loss.cpu(), ref_loss, atol=1e-8, rtol=1e-10)
    torch.testing.assert_close(grad.cpu(), ref_grad, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(sal_weights(target.cuda(), **{**kw, "batch_index": batch_index.cuda()}).cpu(),
                               sal_weights_reference(target, **kw))


@pytest.mark.parametrize("normalize", ["batch", "image"])
def test_cuda_nan_area_is_skipped_like_the_cpu(normalize):
    """Finite corners whose difference overflows give an area of inf * 0 = NaN: the CPU's running
    min/max skips it, and so must the warp reductions and atomics on the GPU."""
    big = torch.finfo(torch.float64).max
    target = torch.tensor([[0.0, 0.0, 4.0, 4.0], [-big, 0.0, big, 0.0], [0.0, 0.0, 10.0, 10.0],
                           [2.0, 2.0, 3.0, 3.0]], dtype=torch.float64)
    opts = {"batch_index": torch.tensor([0, 0, 0, 1])} if normalize == "image" else {}
    cpu = sal_weights(target, normalize=normalize, **opts)
    cuda = sal_weights(target.cuda(), normalize=normalize,
                       **{k: v.cuda() for k, v in opts.items()}).cpu()
    torch.testing.assert_close(cuda, cpu, equal_nan=True)
    assert torch.isfinite(cpu[[0, 2]]).all() and cpu[0] > cpu[2]


def test_cuda_side_stream():
    pred, target = adversarial_pairs(torch.float64)
    expected = scale_adaptive_iou_loss_reference(pred, target)
    pred_c, target_c = pred.cuda(), target.cuda()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        loss = scale_adaptive_iou_loss(pred_c, target_c)
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(loss.cpu(), expected)


def test_cuda_opcheck():
    pred, target = adversarial_pairs(torch.float32)
    args = (pred.cuda().requires_grad_(True), target.cuda(), None, None, "xyxy", "iou2", "batch", "none", 2.885, 0.0,
            0.0, "sum", 1e-7, True)
    torch.library.opcheck(torch.ops.sarl.sal_loss.default, args)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_cuda_non_finite_pred_propagates(loss_type, reduction):
    from test_sal_op import _with_non_finite_rows

    pred, target, bad = _with_non_finite_rows(torch.float64)
    loss, grad = _loss_and_grad(scale_adaptive_iou_loss, pred.cuda(), target.cuda(), loss_type=loss_type,
                                reduction=reduction)
    ref_loss, ref_grad = _loss_and_grad(scale_adaptive_iou_loss_reference, pred, target, loss_type=loss_type,
                                        reduction=reduction)
    assert not torch.isfinite(loss).all()
    torch.testing.assert_close(loss.cpu(), ref_loss, equal_nan=True, **TOLERANCES[torch.float64])
    torch.testing.assert_close(grad.cpu(), ref_grad, equal_nan=True, **TOLERANCES[torch.float64])
    assert torch.isnan(grad[bad]).all()
