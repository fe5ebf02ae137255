"""CUDA kernels of the SARL relay ops against the CPU kernels and the references (GPU only)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import needs_cuda_kernels
from sarl.ops import relay_gate, relay_pool
from sarl.ops.relay_reference import relay_gate_reference, relay_pool_reference

pytestmark = [
    *needs_cuda_kernels,
]


def _gate_inputs(n, c, h_out, w_out, h, w, dtype, device):
    x = torch.randn(n, c, h_out, w_out, dtype=dtype, device=device, requires_grad=True)
    cl = (2 * torch.randn(n, c, dtype=dtype, device=device)).requires_grad_()
    sl = (2 * torch.randn(n, 1, h_out, w_out, dtype=dtype, device=device)).requires_grad_()
    r = torch.randn(n, c, h, w, dtype=dtype, device=device, requires_grad=True)
    return x, cl, sl, r


@pytest.mark.parametrize("shape", [(2, 3, 8, 8, 4, 4), (2, 5, 9, 7, 5, 4), (1, 4, 70, 70, 35, 35),
                                   (2, 3, 5, 6, 9, 13), (1, 2, 31, 17, 3, 2)])
def test_gate_cuda_matches_reference(shape):
    inputs = _gate_inputs(*shape, torch.float64, "cuda")
    out = relay_gate(*inputs)
    ref = relay_gate_reference(*inputs)
    torch.testing.assert_close(out, ref)
    grad_out = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, inputs, grad_out), torch.autograd.grad(ref, inputs, grad_out))


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 7, 70, 70), (3, 40, 1, 1)])
def test_pool_cuda_matches_reference(shape):
    g = torch.randn(*shape, dtype=torch.float64, device="cuda", requires_grad=True)
    out = relay_pool(g)
    ref = relay_pool_reference(g)
    torch.testing.assert_close(out, ref)
    grads = (torch.randn_like(out[0]), torch.randn_like(out[1]))
    torch.testing.assert_close(torch.autograd.grad(out, (g,), grads), torch.autograd.grad(ref, (g,), grads))


def test_pool_cuda_ties_match_cpu():
    g = torch.randint(0, 3, (2, 9, 7, 40)).double()
    gc, gg = g.clone().requires_grad_(), g.cuda().requires_grad_()
    out_cpu, out_gpu = relay_pool(gc), relay_pool(gg)
    grads = (torch.randn_like(out_cpu[0]), torch.randn_like(out_cpu[1]))
    (grad_cpu,) = torch.autograd.grad(out_cpu, (gc,), grads)
    (grad_gpu,) = torch.autograd.grad(out_gpu, (gg,), tuple(t.cuda() for t in grads))
    torch.testing.assert_close(grad_gpu.cpu(), grad_cpu)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_cuda(dtype):
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    inputs = _gate_inputs(2, 16, 20, 20, 10, 10, dtype, "cuda")
    torch.testing.assert_close(relay_gate(*inputs), relay_gate_reference(*inputs), atol=tol, rtol=tol)
    g = torch.randn(2, 16, 9, 8, dtype=dtype, device="cuda")
    torch.testing.assert_close(relay_pool(g), relay_pool_reference(g), atol=tol, rtol=tol)


def test_nearest_index_cuda_matches_interpolate():
    for h, big in [(3, 7), (5, 13), (7, 1000), (37, 1000), (100, 333), (999, 1000), (13, 517)]:
        relay = torch.arange(h, dtype=torch.float32, device="cuda").reshape(1, 1, h, 1).expand(1, 1, h, h)
        relay = relay.contiguous()
        x = torch.zeros(1, 1, big, big, device="cuda")
        out = relay_gate(x, torch.zeros(1, 1, device="cuda"), torch.zeros(1, 1, big, big, device="cuda"), relay)
        assert torch.equal(out, F.interpolate(relay, size=(big, big), mode="nearest")), (h, big)


def test_opcheck_cuda():
    inputs = _gate_inputs(2, 3, 5, 6, 3, 3, torch.float32, "cuda")
    torch.library.opcheck(torch.ops.sarl.relay_gate.default, inputs)
    torch.library.opcheck(torch.ops.sarl.relay_pool.default, (torch.randn(2, 3, 5, 6, device="cuda",
                                                                          requires_grad=True),))


def test_device_mismatch_names_the_argument():
    x, cl, sl, r = _gate_inputs(1, 2, 4, 4, 2, 2, torch.float32, "cuda")
    with pytest.raises(RuntimeError, match="relay is on cpu"):
        torch.ops.sarl.relay_gate(x, cl, sl, r.cpu())


def _cpu_and_cuda(*tensors):
    """Leaf copies of ``tensors`` on the CPU and on CUDA (None stays None)."""
    def leaf(t, device):
        return None if t is None else t.detach().to(device).requires_grad_(t.requires_grad)
    return [leaf(t, "cpu") for t in tensors], [leaf(t, "cuda") for t in tensors]


def _gate_cpu_vs_cuda(x, cl, sl, r):
    """Outputs and input gradients of relay_gate on the CPU kernels and the CUDA kernels."""
    results = []
    for inputs in _cpu_and_cuda(x, cl, sl, r):
        out = relay_gate(*inputs)
        grad_out = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
        leaves = [t for t in inputs if t is not None]
        grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True) if out.numel() else [None] * len(leaves)
        results.append((out.detach().cpu(), [None if g is None else g.cpu() for g in grads]))
    return results


def test_gate_cuda_without_relay():
    x, cl, sl, _ = _gate_inputs(2, 6, 9, 11, 3, 3, torch.float64, "cuda")
    out = relay_gate(x, cl, sl, None)
    ref = relay_gate_reference(x, cl, sl, None)
    torch.testing.assert_close(out, ref)
    grad_out = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, (x, cl, sl), grad_out),
                               torch.autograd.grad(ref, (x, cl, sl), grad_out))


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (2, 3, 0, 4), (2, 3, 4, 0)])
def test_empty_shapes_cuda_match_cpu(shape):
    n, c, h, w = shape
    g = torch.randn(*shape, dtype=torch.float64)
    cpu_out, cuda_out = relay_pool(g), relay_pool(g.cuda())
    for a, b in zip(cpu_out, cuda_out):
        assert a.shape == b.shape
        torch.testing.assert_close(b.cpu(), a)
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    (out_cpu, grads_cpu), (out_cuda, grads_cuda) = _gate_cpu_vs_cuda(
        x.requires_grad_(), torch.randn(n, c, dtype=torch.float64).requires_grad_(),
        torch.randn(n, 1, h, w, dtype=torch.float64).requires_grad_(), None)
    torch.testing.assert_close(out_cuda, out_cpu)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_non_contiguous_inputs_cuda(layout):
    x, cl, sl, r = _gate_inputs(2, 8, 12, 10, 6, 5, torch.float64, "cuda")

    def relayout(t):
        t = t.detach()
        if layout == "channels_last":
            out = t.contiguous(memory_format=torch.channels_last)
        elif layout == "transposed":
            out = t.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, swapped strides
        else:
            out = torch.cat([t, t], dim=-1)[..., : t.shape[-1]]  # a strided view
        assert not out.is_contiguous() or layout == "channels_last"
        return out.requires_grad_()

    x2, s2, r2 = relayout(x), relayout(sl), relayout(r)
    cl2 = cl.detach().t().contiguous().t().requires_grad_()  # [N, C] with column-major strides
    out = relay_gate(x2, cl2, s2, r2)
    ref = relay_gate_reference(x2, cl2, s2, r2)
    torch.testing.assert_close(out, ref)
    grad_out = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, (x2, cl2, s2, r2), grad_out),
                               torch.autograd.grad(ref, (x2, cl2, s2, r2), grad_out))
    g = relayout(torch.randn(2, 8, 7, 9, dtype=torch.float64, device="cuda"))
    torch.testing.assert_close(relay_pool(g), relay_pool_reference(g))


def test_batch_beyond_grid_limit_matches_cpu():
    """More images than the CUDA grid's y limit (65535): the per-image kernels loop over images."""
    n = 70_000
    g = torch.randn(n, 2, 1, 2, dtype=torch.float64)
    for a, b in zip(relay_pool(g), relay_pool(g.cuda())):
        torch.testing.assert_close(b.cpu(), a)
    gg = g.cuda().requires_grad_()
    spatial, channel, _, _ = relay_pool(gg)
    (grad_cuda,) = torch.autograd.grad((spatial.sum(), channel.sum()), (gg,))
    gc = g.clone().requires_grad_()
    spatial, channel, _, _ = relay_pool(gc)
    (grad_cpu,) = torch.autograd.grad((spatial.sum(), channel.sum()), (gc,))
    torch.testing.assert_close(grad_cuda.cpu(), grad_cpu)
    x = torch.randn(n, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    inputs = (x, torch.randn(n, 2, dtype=torch.float64, requires_grad=True),
              torch.randn(n, 1, 2, 2, dtype=torch.float64, requires_grad=True),
              torch.randn(n, 2, 1, 1, dtype=torch.float64, requires_grad=True))
    (out_cpu, grads_cpu), (out_cuda, grads_cuda) = _gate_cpu_vs_cuda(*inputs)
    torch.testing.assert_close(out_cuda, out_cpu)
    for a, b in zip(grads_cpu, grads_cuda):
        torch.testing.assert_close(b, a)


def test_gate_backward_is_deterministic():
    """grad of the channel logits sums per-warp partials in a fixed order: repeated runs agree bit
    for bit, and the op runs under torch.use_deterministic_algorithms(True)."""
    x, cl, sl, r = _gate_inputs(4, 64, 80, 80, 40, 40, torch.float32, "cuda")
    grad_out = torch.randn(4, 64, 80, 80, device="cuda")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = torch.autograd.grad(relay_gate(x, cl, sl, r), (x, cl, sl, r), grad_out)
        for _ in range(3):
            again = torch.autograd.grad(relay_gate(x, cl, sl, r), (x, cl, sl, r), grad_out)
            for a, b in zip(first, again):
                assert torch.equal(a, b)
    finally:
        torch.use_deterministic_algorithms(previous)
    ref = torch.autograd.grad(relay_gate_reference(x, cl, sl, r), (x, cl, sl, r), grad_out)
    for a, b in zip(first, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_ops_run_on_a_side_stream():
    """The kernels are launched on the current stream, not the default one."""
    x, cl, sl, r = _gate_inputs(2, 16, 40, 40, 20, 20, torch.float32, "cuda")
    expected_out = relay_gate_reference(x, cl, sl, r)
    expected_pool = relay_pool_reference(r)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = relay_gate(x, cl, sl, r)
        pool = relay_pool(r)
        grads = torch.autograd.grad(out, (x, cl, sl, r), torch.ones_like(out))
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(pool, expected_pool)
    ref_grads = torch.autograd.grad(expected_out, (x, cl, sl, r), torch.ones_like(expected_out))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
