"""CUDA kernels of the SARL relay ops against the CPU kernels and the references (GPU only)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sarl.ops import cuda_kernels_available, relay_gate, relay_pool
from sarl.ops.relay_reference import relay_gate_reference, relay_pool_reference

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
    pytest.mark.skipif(not cuda_kernels_available(), reason="sarl._C was built without CUDA kernels (FORCE_CUDA=1)"),
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
