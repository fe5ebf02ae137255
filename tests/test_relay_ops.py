"""Fused SARL relay ops (sarl.ops.relay_pool / relay_gate) against their pure-PyTorch references:
values and gradients, gradcheck, opcheck, hypothesis shapes, torch.compile, dtypes, layouts,
ties, empty inputs and error messages."""
from __future__ import annotations

import math
import statistics
from typing import Tuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import needs_extension
from sarl.ops import extension_available, relay_gate, relay_pool
from sarl.ops.relay_reference import relay_gate_reference, relay_pool_reference

requires_ext = needs_extension(
    "sarl._C with the relay ops", extension_available() and hasattr(torch.ops.sarl, "relay_gate"))


def _gate_inputs(n, c, h_out, w_out, h, w, dtype=torch.float64, relay=True):
    x = torch.randn(n, c, h_out, w_out, dtype=dtype, requires_grad=True)
    cl = (2 * torch.randn(n, c, dtype=dtype)).requires_grad_()
    sl = (2 * torch.randn(n, 1, h_out, w_out, dtype=dtype)).requires_grad_()
    r = torch.randn(n, c, h, w, dtype=dtype, requires_grad=True) if relay else None
    return x, cl, sl, r


def _grads(out, inputs, grad_out):
    wanted = [t for t in inputs if t is not None]
    return torch.autograd.grad(out, wanted, grad_out, allow_unused=True)


def _assert_gate_matches(x, cl, sl, r, atol=1e-12, rtol=1e-12):
    out = relay_gate(x, cl, sl, r)
    ref = relay_gate_reference(x, cl, sl, r)
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    if out.numel() == 0:
        return
    grad_out = torch.randn_like(out)
    for got, want in zip(_grads(out, (x, cl, sl, r), grad_out), _grads(ref, (x, cl, sl, r), grad_out)):
        torch.testing.assert_close(got, want, atol=atol * 10, rtol=rtol * 10)


def _assert_pool_matches(g, atol=1e-12, rtol=1e-12):
    spatial, channel = relay_pool(g)
    ref_spatial, ref_channel = relay_pool_reference(g)
    torch.testing.assert_close(spatial, ref_spatial, atol=atol, rtol=rtol, equal_nan=True)
    torch.testing.assert_close(channel, ref_channel, atol=atol, rtol=rtol, equal_nan=True)
    if g.numel() == 0 or not g.requires_grad:
        return
    gs, gc = torch.randn_like(spatial), torch.randn_like(channel)
    (got,) = torch.autograd.grad((spatial, channel), (g,), (gs, gc))
    (want,) = torch.autograd.grad((ref_spatial, ref_channel), (g,), (gs, gc))
    torch.testing.assert_close(got, want, atol=atol * 10, rtol=rtol * 10)


# ---- values and gradients ------------------------------------------------------------------
@requires_ext
@pytest.mark.parametrize("shape", [
    (2, 3, 8, 8, 4, 4),      # 2x upsampling (adjacent pyramid levels)
    (2, 5, 9, 7, 5, 4),      # odd sizes, non-integer scale
    (1, 4, 6, 10, 6, 10),    # same size
    (2, 3, 5, 6, 9, 13),     # downsampling (relay rows and columns nobody reads)
    (1, 2, 31, 17, 3, 2),    # large non-integer scale
    (3, 1, 1, 1, 1, 1),
])
def test_gate_matches_reference(shape):
    _assert_gate_matches(*_gate_inputs(*shape))


@requires_ext
def test_gate_without_relay_matches_reference():
    x, cl, sl, _ = _gate_inputs(2, 4, 7, 9, 0, 0, relay=False)
    _assert_gate_matches(x, cl, sl, None)


@requires_ext
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 7, 9, 11), (3, 2, 1, 1), (1, 1, 6, 6)])
def test_pool_matches_reference(shape):
    _assert_pool_matches(torch.randn(*shape, dtype=torch.float64, requires_grad=True))


@requires_ext
def test_pool_and_gate_on_level_sized_planes():
    # N = 1 and h * w > 4096: several pixel blocks (pool) and row blocks (gate backward) per
    # image, so the cross-task reductions and the relay-row ownership are exercised.
    _assert_pool_matches(torch.randn(1, 6, 70, 70, dtype=torch.float64, requires_grad=True))
    _assert_gate_matches(*_gate_inputs(1, 6, 70, 70, 35, 35))
    _assert_gate_matches(*_gate_inputs(1, 3, 83, 67, 29, 31))


@requires_ext
def test_nearest_index_matches_interpolate_for_many_sizes():
    # With x = 0 the gate returns the upsampled relay exactly: compare it with F.interpolate
    # along each axis for every size pair in a grid, plus a few large, awkward ratios
    # (float32 rounding of dst * in / out decides the index there).
    pairs = [(h, big) for h in range(1, 25) for big in range(1, 65)]
    pairs += [(7, 1000), (37, 1000), (100, 333), (333, 1000), (999, 1000), (1000, 999), (13, 517), (3, 1001)]
    for h, big in pairs:
        for rows in (True, False):
            shape_in, shape_out = ((h, 1), (big, 1)) if rows else ((1, h), (1, big))
            relay = torch.arange(h, dtype=torch.float32).reshape(1, 1, *shape_in)
            x = torch.zeros(1, 1, *shape_out)
            out = relay_gate(x, torch.zeros(1, 1), torch.zeros(1, 1, *shape_out), relay)
            want = F.interpolate(relay, size=shape_out, mode="nearest")
            assert torch.equal(out, want), f"nearest index differs for in={h}, out={big}, rows={rows}"


# ---- gradcheck, opcheck ------------------------------------------------------------------------
@requires_ext
def test_gradcheck_gate():
    for relay in (True, False):
        x, cl, sl, r = _gate_inputs(2, 3, 5, 7, 3, 4, relay=relay)
        assert torch.autograd.gradcheck(relay_gate, (x, cl, sl, r))


@requires_ext
def test_gradcheck_pool():
    # Distinct values (a shuffled range) so no max is tied within the finite-difference step.
    g = (torch.randperm(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5) / 10).requires_grad_()
    assert torch.autograd.gradcheck(relay_pool, (g,))


@requires_ext
def test_opcheck():
    x, cl, sl, r = _gate_inputs(2, 3, 5, 6, 3, 3, dtype=torch.float32)
    torch.library.opcheck(torch.ops.sarl.relay_gate.default, (x, cl, sl, r))
    torch.library.opcheck(torch.ops.sarl.relay_gate.default, (x, cl, sl, None))
    g = torch.randn(2, 3, 5, 6, requires_grad=True)
    torch.library.opcheck(torch.ops.sarl.relay_pool.default, (g,))


# ---- hypothesis --------------------------------------------------------------------------------
@requires_ext
@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 3), c=st.integers(1, 5), h_out=st.integers(1, 13), w_out=st.integers(1, 13),
       h=st.integers(1, 9), w=st.integers(1, 9), with_relay=st.booleans())
def test_hypothesis_shapes(n, c, h_out, w_out, h, w, with_relay):
    torch.manual_seed(n * 1000 + c * 100 + h_out * 10 + w_out)
    _assert_gate_matches(*_gate_inputs(n, c, h_out, w_out, h, w, relay=with_relay))
    _assert_pool_matches(torch.randn(n, c, h, w, dtype=torch.float64, requires_grad=True))


# ---- torch.compile -----------------------------------------------------------------------------
@requires_ext
def test_torch_compile_fullgraph_matches_eager():
    def relay_step(x, g, w_c, w_s):
        spatial, channel = relay_pool(g)
        c_logits = channel.sum(1) * w_c
        s_logits = F.interpolate(spatial, size=x.shape[-2:], mode="nearest").sum(1, keepdim=True) * w_s
        return relay_gate(x, c_logits, s_logits, g)

    x = torch.randn(2, 4, 10, 9, requires_grad=True)
    g = torch.randn(2, 4, 5, 5, requires_grad=True)
    w_c, w_s = torch.tensor(0.7), torch.tensor(-0.3)
    compiled = torch.compile(relay_step, fullgraph=True, backend="inductor")
    out = compiled(x, g, w_c, w_s)
    ref = relay_step(x, g, w_c, w_s)
    torch.testing.assert_close(out, ref)
    grad_out = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, (x, g), grad_out),
                               torch.autograd.grad(ref, (x, g), grad_out))


# ---- dtypes and layouts --------------------------------------------------------------------
@requires_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_matches_reference(dtype):
    # The references compute half types in float32 and round once, as the kernels do; only the
    # summation order of the reductions differs.
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    x, cl, sl, r = _gate_inputs(2, 8, 9, 8, 5, 4, dtype=dtype)
    out = relay_gate(x, cl, sl, r)
    assert out.dtype == dtype
    _assert_gate_matches(x, cl, sl, r, atol=tol, rtol=tol)
    _assert_pool_matches(torch.randn(2, 8, 9, 8, dtype=dtype, requires_grad=True), atol=tol, rtol=tol)


@requires_ext
def test_channels_last_and_strided_inputs():
    x, cl, sl, r = _gate_inputs(2, 6, 8, 10, 4, 5)
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    r_cl = r.detach().to(memory_format=torch.channels_last).requires_grad_()
    _assert_gate_matches(x_cl, cl, sl, r_cl)
    # Non-contiguous views: every other channel / a transposed plane.
    x_big = torch.randn(2, 12, 10, 8, dtype=torch.float64).transpose(2, 3)[:, ::2].requires_grad_()
    c_big = torch.randn(6, 2, dtype=torch.float64).t().requires_grad_()
    _assert_gate_matches(x_big, c_big, sl, r)
    g = torch.randn(2, 8, 7, 5, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    _assert_pool_matches(g)
    _assert_pool_matches(torch.randn(2, 5, 9, 8, dtype=torch.float64)[..., ::2].requires_grad_())


# ---- conventions: ties, NaN, empty ---------------------------------------------------------
@requires_ext
def test_pool_ties_route_gradient_to_first_index():
    g = torch.ones(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    spatial, channel = relay_pool(g)
    # Only the max halves get a gradient: each max goes to channel 0 / pixel (0, 0).
    grad_spatial = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)], dim=1).double()
    grad_channel = torch.stack([torch.zeros(1, 3), torch.ones(1, 3)], dim=1).double()
    (grad,) = torch.autograd.grad((spatial, channel), (g,), (grad_spatial, grad_channel))
    expected = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    expected[0, 0] = 1.0          # spatial max over C of every pixel -> channel 0
    expected[0, :, 0, 0] += 1.0   # channel max over HW of every channel -> pixel (0, 0)
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)
    _assert_pool_matches(torch.randint(0, 3, (2, 4, 3, 5)).double().requires_grad_())


@requires_ext
@pytest.mark.parametrize("hw", [(8, 8), (7, 13), (40, 40), (70, 70)])  # lane loop, lane tail, several chunks
def test_pool_first_argmax_and_nan_on_large_planes(hw):
    """Planes long enough for the lane-wise arg-max: heavy ties (values 0..2) must still pick the first index,
    and the first NaN of a plane must win, wherever it falls (a lane, the tail after the lanes)."""
    h, w = hw
    torch.manual_seed(h * w)
    g = torch.randint(0, 3, (2, 3, h, w)).double()
    _assert_pool_matches(g.clone().requires_grad_())
    flat = g.view(2, 3, -1)
    hw_len = h * w
    flat[0, 0, 5] = float("nan")
    flat[0, 1, hw_len - 1] = float("nan")                  # in the tail
    flat[1, 2, [min(37, hw_len - 2), hw_len - 2]] = float("nan")  # two NaNs: the first one wins
    _assert_pool_matches(g.clone().requires_grad_())


@requires_ext
def test_pool_propagates_nan_like_torch_max():
    g = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    g[0, 1, 0, 1] = float("nan")
    spatial, channel = relay_pool(g)
    assert torch.isnan(spatial[0, 1, 0, 1]) and torch.isnan(channel[0, 1, 1])
    _assert_pool_matches(g)


def _assert_argmax_like_torch_max(g: torch.Tensor) -> None:
    """relay_pool's arg-max outputs are torch.max's indices (first index on ties, first NaN)."""
    _, _, spatial_argmax, channel_argmax = torch.ops.sarl.relay_pool(g)
    assert torch.equal(spatial_argmax, g.max(dim=1).indices)
    assert torch.equal(channel_argmax, g.flatten(2).max(dim=2).indices)


@requires_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [
    (2, 1, 3, 5),       # C = 1: every pixel's max is channel 0
    (3, 4, 1, 1),       # h * w = 1: every channel's max is pixel 0
    (1, 3, 1, 15),      # fewer pixels than the lanes of the max over HW
    (1, 2, 45, 91),     # 4095 pixels: two blocks, the last one with a lane tail
    (1, 2, 64, 64),     # 4096 pixels: two full blocks
    (2, 3, 51, 83),     # 4233 pixels: three blocks of unequal tails
])
def test_pool_blocks_lanes_and_tails(shape, dtype):
    """Pixel counts around the kernel's pixel blocks and lanes, with heavy ties (values 0..2) so that
    the first index must win across lanes, across blocks and in the tails."""
    torch.manual_seed(sum(shape))
    g = torch.randint(0, 3, shape).to(dtype)
    _assert_argmax_like_torch_max(g)
    _assert_pool_matches(g.clone().requires_grad_(), atol=1e-5 if dtype == torch.float32 else 1e-12,
                         rtol=1e-5 if dtype == torch.float32 else 1e-12)
    # NaNs in the second block and in the last pixel: the first NaN of each plane / pixel wins.
    flat = g.view(shape[0], shape[1], -1)
    hw = flat.shape[-1]
    flat[0, 0, [hw // 2, hw - 1]] = float("nan")
    flat[-1, -1, hw - 1] = float("nan")
    _assert_argmax_like_torch_max(g)
    _assert_pool_matches(g.clone().requires_grad_(), atol=1e-5 if dtype == torch.float32 else 1e-12,
                         rtol=1e-5 if dtype == torch.float32 else 1e-12)


@requires_ext
def test_pool_all_minus_inf_picks_index_zero():
    g = torch.full((2, 3, 50, 50), float("-inf"))
    g[1, 2, 30, 7] = 0.0
    _assert_argmax_like_torch_max(g)
    spatial, channel, _, _ = torch.ops.sarl.relay_pool(g)
    assert spatial[0, 1].eq(float("-inf")).all() and channel[0, 1].eq(float("-inf")).all()


@requires_ext
def test_pool_backward_with_hand_made_indices():
    """relay_pool_backward called directly: a max gradient lands exactly at the given arg-max indices,
    and an index outside the plane / the channels (not one relay_pool returns) routes nothing."""
    n, c, h, w = 2, 3, 4, 5
    torch.manual_seed(3)
    grad_spatial, grad_channel = torch.randn(n, 2, h, w, dtype=torch.float64), torch.randn(n, 2, c, dtype=torch.float64)
    spatial_argmax = torch.randint(0, c, (n, h, w))
    channel_argmax = torch.randint(0, h * w, (n, c))
    spatial_argmax[0, 1, 2], spatial_argmax[1, 3, 4] = -1, c
    channel_argmax[0, 1], channel_argmax[1, 2] = -1, h * w
    got = torch.ops.sarl.relay_pool_backward(grad_spatial, grad_channel, spatial_argmax, channel_argmax)
    want = (grad_spatial[:, 0, None] / c + grad_channel[:, 0, :, None, None] / (h * w)).expand(n, c, h, w).clone()
    for b in range(n):
        for y in range(h):
            for x in range(w):
                k = int(spatial_argmax[b, y, x])
                if 0 <= k < c:
                    want[b, k, y, x] += grad_spatial[b, 1, y, x]
        for k in range(c):
            p = int(channel_argmax[b, k])
            if 0 <= p < h * w:
                want[b, k, p // w, p % w] += grad_channel[b, 1, k]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@requires_ext
@pytest.mark.parametrize("shape", [(0, 3, 4, 4, 2, 2), (2, 0, 4, 4, 2, 2), (2, 3, 0, 4, 2, 2), (2, 3, 0, 0, 0, 0)])
def test_empty_inputs(shape):
    x, cl, sl, r = _gate_inputs(*shape)
    out = relay_gate(x, cl, sl, r)
    assert out.shape == x.shape
    grads = torch.autograd.grad(out.sum(), (x, cl, sl, r))
    for grad, inp in zip(grads, (x, cl, sl, r)):
        assert grad.shape == inp.shape and not grad.isnan().any() and (grad == 0).all()


@requires_ext
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (2, 3, 0, 4)])
def test_pool_empty_inputs_give_zeros(shape):
    g = torch.randn(*shape, requires_grad=True)
    spatial, channel = relay_pool(g)
    n, c, h, w = shape
    assert spatial.shape == (n, 2, h, w) and channel.shape == (n, 2, c)
    assert (spatial == 0).all() and (channel == 0).all()
    _assert_pool_matches(g)
    (grad,) = torch.autograd.grad((spatial.sum() + channel.sum()), (g,))
    assert grad.shape == g.shape


# ---- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [relay_gate, relay_gate_reference])
def test_gate_errors_name_the_argument(fn):
    x, cl, sl, r = _gate_inputs(2, 3, 4, 4, 2, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match="channel_logits must have shape"):
        fn(x, cl[:, :2], sl, r)
    with pytest.raises(ValueError, match="spatial_logits must have shape"):
        fn(x, cl, sl[:, :, :3], r)
    with pytest.raises(ValueError, match="relay must have shape"):
        fn(x, cl, sl, r[:1])
    with pytest.raises(TypeError, match="relay has dtype torch.float64"):
        fn(x, cl, sl, r.double())
    with pytest.raises(TypeError, match="x must be float32"):
        fn(x.int(), cl, sl, r)
    with pytest.raises(ValueError, match="x must be 4-D"):
        fn(x[0], cl, sl, r)
    with pytest.raises(ValueError, match="spatial_logits is on meta"):
        fn(x, cl, sl.to("meta"), r)
    with pytest.raises(ValueError, match="nothing to upsample from"):
        fn(x, cl, sl, r[:, :, :0])


@requires_ext
def test_compiled_op_errors_name_the_argument():
    # Direct torch.ops calls skip the Python checks: the C++ checks must say the same.
    x, cl, sl, r = _gate_inputs(2, 3, 4, 4, 2, 2, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="channel_logits must have shape"):
        torch.ops.sarl.relay_gate(x, cl[:, :2], sl, r)
    with pytest.raises(RuntimeError, match="relay has dtype"):
        torch.ops.sarl.relay_gate(x, cl, sl, r.double())
    with pytest.raises(RuntimeError, match="g must be 4-D"):
        torch.ops.sarl.relay_pool(x[0])
    with pytest.raises(RuntimeError, match="g must be float32"):
        torch.ops.sarl.relay_pool(x.int())
    with pytest.raises(RuntimeError, match="spatial_argmax must be int64"):
        torch.ops.sarl.relay_pool_backward(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 4),
                                           torch.zeros(1, 3, 3), torch.zeros(1, 4, dtype=torch.long))


def test_pool_errors():
    with pytest.raises(ValueError, match="g must be 4-D"):
        relay_pool(torch.zeros(3, 4, 5))
    with pytest.raises(TypeError, match="g must be float32"):
        relay_pool(torch.zeros(1, 3, 4, 5, dtype=torch.int64))


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _gate_by_hand(x, cl, sl, r) -> torch.Tensor:
    """relay_gate written element by element in plain Python floats (nearest upsampling of an h x w
    relay to H x W reads row ``floor(i * h / H)``, column ``floor(j * w / W)``)."""
    xs, cs, ss, rs = x.tolist(), cl.tolist(), sl.tolist(), r.tolist()
    n, c, height, width = x.shape
    h, w = r.shape[-2:]
    out = [[[[xs[b][k][i][j] * (1 + _sigmoid(cs[b][k]) * _sigmoid(ss[b][0][i][j]))
              + rs[b][k][i * h // height][j * w // width] for j in range(width)] for i in range(height)]
            for k in range(c)] for b in range(n)]
    return torch.tensor(out, dtype=x.dtype)


def _pool_by_hand(g) -> Tuple[torch.Tensor, torch.Tensor]:
    """relay_pool in plain Python: (mean, max) over channels per pixel; (mean, max) over pixels per channel."""
    gs = g.tolist()
    spatial = [[[[stat([gs[b][k][i][j] for k in range(len(gs[b]))]) for j in range(len(gs[b][0][0]))]
                 for i in range(len(gs[b][0]))] for stat in (statistics.fmean, max)] for b in range(len(gs))]
    channel = [[[stat([v for row in plane for v in row]) for plane in gs[b]] for stat in (statistics.fmean, max)]
               for b in range(len(gs))]
    return torch.tensor(spatial, dtype=g.dtype), torch.tensor(channel, dtype=g.dtype)


def test_fallback_matches_the_formulas_by_hand(monkeypatch):
    """Without the extension both ops run their references: checked against the formulas written out
    element by element (an independent expectation, not the references themselves)."""
    monkeypatch.setenv("SARL_DISABLE_EXTENSION", "1")
    x, cl, sl, r = _gate_inputs(1, 2, 6, 5, 3, 3)
    with pytest.warns(RuntimeWarning, match="pure-PyTorch reference") if _fresh_warning("relay_gate") \
            else _no_check():
        out = relay_gate(x, cl, sl, r)
    torch.testing.assert_close(out, _gate_by_hand(x, cl, sl, r), rtol=1e-12, atol=1e-12)
    spatial, channel = relay_pool(r)
    want_spatial, want_channel = _pool_by_hand(r)
    assert spatial.shape == (1, 2, 3, 3) and channel.shape == (1, 2, 2)
    torch.testing.assert_close(spatial, want_spatial, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(channel, want_channel, rtol=1e-12, atol=1e-12)


def _fresh_warning(op: str) -> bool:
    from sarl.ops import _extension
    return op not in _extension._WARNED


class _no_check:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
