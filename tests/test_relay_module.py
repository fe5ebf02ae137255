"""The SARL relay module (sarl.modeling.SARLRelay): design of record, identity when disabled,
initialisation, fused (sarl.ops.relay_pool / relay_gate) vs unfused paths, config and errors."""
from __future__ import annotations

from typing import Dict, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import Backbone
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import needs_extension
from sarl.config import add_sarl_config
from sarl.modeling import SARLRelay


def _fused_ops_ready() -> Tuple[bool, str]:
    """The fused path differs from the unfused one only when the compiled relay kernels run: without
    them ``sarl.ops.relay_*`` fall back to the references, and the comparison would test nothing."""
    from sarl.ops import extension_available, extension_info

    if not (extension_available() and hasattr(torch.ops.sarl, "relay_gate")):
        return False, f"sarl._C relay kernels not loaded: {extension_info()}"
    return True, ""


FUSED_READY, FUSED_REASON = _fused_ops_ready()
requires_fused = needs_extension(f"the fused relay ops ({FUSED_REASON})", FUSED_READY)


class FeatureStub(Backbone):
    """A Backbone whose 'image' is already the feature dict: lets the relay wrap any levels."""

    def __init__(self, specs: Dict[str, Tuple[int, int]]):
        super().__init__()
        self._out_features = list(specs)
        self._out_feature_channels = {k: c for k, (c, _) in specs.items()}
        self._out_feature_strides = {k: s for k, (_, s) in specs.items()}

    @property
    def size_divisibility(self) -> int:
        return max(self._out_feature_strides.values())

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return features


SPECS = {"dark2": (6, 4), "dark3": (8, 8), "dark4": (12, 16), "dark5": (16, 32)}
# Odd sizes on purpose: coarse levels are not exactly half the next (nearest upsampling still maps).
SIZES = {"dark2": (13, 11), "dark3": (7, 6), "dark4": (4, 3), "dark5": (2, 2)}


def make_features(specs=SPECS, sizes=SIZES, batch=2, dtype=torch.float32, requires_grad=False):
    return {k: torch.randn(batch, c, *sizes[k], dtype=dtype, requires_grad=requires_grad)
            for k, (c, _) in specs.items()}


def randomize_(relay: SARLRelay) -> SARLRelay:
    """Move BN scales away from the zero-gamma init (ties in the max-pools vanish) and give BN
    non-trivial running statistics, so every path of the relay carries signal."""
    with torch.no_grad():
        for m in relay.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return relay


def make_relay(in_features=("dark3", "dark4", "dark5"), specs=SPECS, **kwargs) -> SARLRelay:
    kwargs.setdefault("fused", False)
    kwargs.setdefault("reduction", 4)
    return SARLRelay(FeatureStub(specs), in_features, **kwargs)


def design_of_record(relay: SARLRelay, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """REFERENCE.md section 1 written out directly, with the relay's learned layers."""
    names = sorted(relay.in_features, key=lambda n: relay.output_shape()[n].stride)
    out = dict(features)
    relayed = None
    for name in reversed(names):
        x, level = features[name], relay.levels[name]
        g = x if relayed is None else level.relay_conv(relayed)
        avg = F.adaptive_avg_pool2d(g, 1).flatten(1)
        mx = F.adaptive_max_pool2d(g, 1).flatten(1)
        c = level.channel_mlp(avg) + level.channel_mlp(mx)
        desc = torch.cat([g.mean(dim=1, keepdim=True), g.max(dim=1, keepdim=True).values], dim=1)
        s = level.spatial_conv(F.interpolate(desc, size=x.shape[-2:], mode="nearest"))
        r = x * (1 + torch.sigmoid(c)[:, :, None, None] * torch.sigmoid(s))
        if relayed is not None and relay.relay_residual:
            r = r + F.interpolate(g, size=x.shape[-2:], mode="nearest")
        out[name] = relayed = r
    return out


def test_disabled_is_identity():
    relay = make_relay(enabled=False)
    feats = make_features()
    out = relay(feats)
    assert all(out[k] is feats[k] for k in feats)
    assert sum(p.numel() for p in relay.parameters()) == 0
    assert relay.output_shape() == relay.bottom_up.output_shape()

    cfg = add_sarl_config(get_cfg())
    cfg.MODEL.SARL.ENABLED = False
    relay = SARLRelay(cfg, FeatureStub(SPECS))
    assert all(relay(feats)[k] is feats[k] for k in feats)


@pytest.mark.parametrize("residual", [True, False])
def test_matches_design_of_record(residual):
    relay = randomize_(make_relay(relay_residual=residual)).eval().double()
    feats = make_features(dtype=torch.float64)
    out, expected = relay(feats), design_of_record(relay, feats)
    assert list(out) == list(feats)
    assert out["dark2"] is feats["dark2"]  # not in IN_FEATURES: passes through
    for name in ("dark3", "dark4", "dark5"):
        assert out[name].shape == feats[name].shape
        torch.testing.assert_close(out[name], expected[name])
        assert not torch.allclose(out[name], feats[name])


def test_output_shape_and_level_order():
    relay = make_relay(in_features=["dark5", "dark2", "dark4"], specs=SPECS)
    assert relay.in_features == ["dark2", "dark4", "dark5"]  # finest first, whatever the order given
    assert relay.output_shape() == relay.bottom_up.output_shape()
    assert relay.size_divisibility == 32
    assert relay.levels["dark5"].relay_conv is None
    assert relay.levels["dark4"].relay_conv.conv.in_channels == 16  # relay from dark5
    assert relay.levels["dark2"].relay_conv.conv.in_channels == 12  # from dark4 (dark3 skipped)
    assert relay.levels["dark4"].channel_mlp[0].out_features == 12 // 4


def test_relay_runs_top_down():
    relay = randomize_(make_relay()).eval()
    feats = make_features()
    changed = dict(feats, dark5=feats["dark5"] + 1.0)
    a, b = relay(feats), relay(changed)
    # dark5 reaches dark4 and, through it, dark3; nothing reaches upward.
    assert not torch.allclose(a["dark4"], b["dark4"])
    assert not torch.allclose(a["dark3"], b["dark3"])
    changed = dict(feats, dark3=feats["dark3"] + 1.0)
    a, b = relay(feats), relay(changed)
    torch.testing.assert_close(a["dark4"], b["dark4"], rtol=0, atol=0)
    torch.testing.assert_close(a["dark5"], b["dark5"], rtol=0, atol=0)


def test_relay_term_is_up_g():
    on = randomize_(make_relay(relay_residual=True)).eval()
    off = make_relay(relay_residual=False).eval()
    off.load_state_dict(on.state_dict())
    feats = make_features()
    g = on.levels["dark4"].relay_conv(on(feats)["dark5"])
    up_g = F.interpolate(g, size=SIZES["dark4"], mode="nearest")
    torch.testing.assert_close(on(feats)["dark4"] - off(feats)["dark4"], up_g)


def test_initialisation_starts_near_identity():
    """Zero-gamma relay convs: the relay term starts at 0 and each level is its own feature
    times a per-channel constant in (1, 2), whatever the deeper levels hold."""
    relay = make_relay(relay_residual=True).eval()
    for name in ("dark3", "dark4"):
        assert relay.levels[name].relay_conv.bn.weight.abs().sum() == 0
    feats = make_features()
    out = relay(feats)
    for name in ("dark3", "dark4"):
        ratio = out[name] / feats[name]
        per_channel = ratio.flatten(2)
        assert torch.allclose(per_channel, per_channel[..., :1].expand_as(per_channel), atol=1e-5)
        assert (ratio > 1).all() and (ratio < 2).all()
    other = relay(dict(feats, dark5=torch.randn_like(feats["dark5"])))
    torch.testing.assert_close(out["dark3"], other["dark3"])


def test_gradcheck_unfused_float64():
    specs = {"a": (4, 8), "b": (6, 16)}
    sizes = {"a": (5, 3), "b": (3, 2)}
    relay = randomize_(make_relay(in_features=("a", "b"), specs=specs, reduction=2)).eval().double()
    xa, xb = (t.requires_grad_() for t in make_features(specs, sizes, batch=1, dtype=torch.float64).values())

    def fn(a, b):
        out = relay({"a": a, "b": b})
        return out["a"], out["b"]

    assert torch.autograd.gradcheck(fn, (xa, xb), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("name,kwargs,match", [
    ("unknown level", dict(in_features=["dark3", "res4"]), "MODEL.SARL.IN_FEATURES"),
    ("empty", dict(in_features=[]), "MODEL.SARL.IN_FEATURES"),
    ("even kernel", dict(spatial_kernel_size=6), "MODEL.SARL.SPATIAL_KERNEL_SIZE"),
    ("zero reduction", dict(reduction=0), "MODEL.SARL.REDUCTION"),
])
def test_bad_config_is_named(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_relay(**kwargs)


def test_config_keys_reach_the_module():
    cfg = add_sarl_config(get_cfg())
    cfg.MODEL.SARL.IN_FEATURES = ["dark4", "dark5"]
    cfg.MODEL.SARL.REDUCTION = 2
    cfg.MODEL.SARL.SPATIAL_KERNEL_SIZE = 3
    cfg.MODEL.SARL.RELAY_RESIDUAL = False
    cfg.MODEL.SARL.FUSED = False
    relay = SARLRelay(cfg, FeatureStub(SPECS))
    assert relay.in_features == ["dark4", "dark5"]
    assert relay.levels["dark5"].channel_mlp[0].out_features == 16 // 2
    assert relay.levels["dark4"].spatial_conv.kernel_size == (3, 3)
    assert relay.relay_residual is False and relay.fused is False


# ---- fused (sarl.ops) vs unfused ------------------------------------------------------------


def _pair(randomize: bool = True, **kwargs):
    unfused = make_relay(fused=False, **kwargs)
    if randomize:
        randomize_(unfused)
    fused = make_relay(fused=True, **kwargs)
    fused.load_state_dict(unfused.state_dict())
    return unfused, fused


def _outputs_and_grads(relay, feats):
    feats = {k: v.detach().clone().requires_grad_() for k, v in feats.items()}
    relay.zero_grad()
    out = relay(feats)
    # A fixed, non-uniform upstream gradient (a plain sum would hide sign/position errors).
    sum((out[k] * torch.linspace(-1, 1, out[k].numel(), dtype=out[k].dtype).view_as(out[k])).sum()
        for k in ("dark3", "dark4", "dark5")).backward()
    grads = {k: v.grad for k, v in feats.items() if v.grad is not None}
    grads.update({n: p.grad.clone() for n, p in relay.named_parameters() if p.grad is not None})
    return {k: v.detach() for k, v in out.items()}, grads


@requires_fused
@pytest.mark.parametrize("dtype,residual,train,randomize", [
    (torch.float64, True, False, True), (torch.float32, True, True, True),
    (torch.float32, False, False, True),
    (torch.float64, True, True, False),  # zero-gamma init: every max of g ties (first arg-max both ways)
])
def test_fused_matches_unfused(dtype, residual, train, randomize):
    unfused, fused = _pair(randomize, relay_residual=residual)
    unfused, fused = unfused.to(dtype).train(train), fused.to(dtype).train(train)
    feats = make_features(dtype=dtype)
    out_u, grad_u = _outputs_and_grads(unfused, feats)
    out_f, grad_f = _outputs_and_grads(fused, feats)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for k in out_u:
        torch.testing.assert_close(out_f[k], out_u[k], **tol)
    assert grad_u.keys() == grad_f.keys()
    for k in grad_u:
        torch.testing.assert_close(grad_f[k], grad_u[k], **tol, msg=lambda m: f"{k}: {m}")


@requires_fused
def test_fused_channels_last_and_gradcheck():
    specs = {"a": (4, 8), "b": (6, 16)}
    sizes = {"a": (5, 3), "b": (3, 2)}
    unfused, fused = _pair(in_features=("a", "b"), specs=specs, reduction=2)
    unfused, fused = unfused.eval().double(), fused.eval().double()
    feats = make_features(specs, sizes, batch=2, dtype=torch.float64)
    cl = {k: v.contiguous(memory_format=torch.channels_last) for k, v in feats.items()}
    for k, v in fused(cl).items():
        torch.testing.assert_close(v, unfused(feats)[k])
    xa, xb = (t.detach().requires_grad_() for t in feats.values())
    assert torch.autograd.gradcheck(lambda a, b: tuple(fused({"a": a, "b": b}).values()), (xa, xb),
                                    eps=1e-6, atol=1e-5, fast_mode=True)


@settings(max_examples=8, deadline=None)
@given(levels=st.integers(1, 3), channels=st.lists(st.integers(1, 9), min_size=3, max_size=3),
       finest=st.tuples(st.integers(1, 9), st.integers(1, 9)), reduction=st.integers(1, 4),
       kernel=st.sampled_from([1, 3, 7]), residual=st.booleans(), batch=st.integers(1, 2))
def test_hypothesis_shapes_and_fused(levels, channels, finest, reduction, kernel, residual, batch):
    names = [f"l{i}" for i in range(levels)]
    specs = {n: (channels[i], 2 ** (i + 3)) for i, n in enumerate(names)}
    # Each coarser level is ceil(half) of the finer one, as strided convs give (odd sizes included).
    sizes, (h, w) = {}, finest
    for n in names:
        sizes[n] = (h, w)
        h, w = (h + 1) // 2, (w + 1) // 2
    unfused, fused = _pair(in_features=names, specs=specs, reduction=reduction,
                           spatial_kernel_size=kernel, relay_residual=residual)
    unfused.eval()
    feats = make_features(specs, sizes, batch=batch)
    out = unfused(feats)
    for n in names:
        assert out[n].shape == feats[n].shape
        assert torch.isfinite(out[n]).all()
    if FUSED_READY:
        fused.eval()
        for n, v in fused(feats).items():
            torch.testing.assert_close(v, out[n], rtol=1e-4, atol=1e-5)


@requires_fused
def test_torch_compile_fused_relay():
    unfused, fused = _pair()
    unfused.eval(), fused.eval()
    feats = make_features()
    # aot_eager traces the fake (meta) and autograd registrations of the ops through the whole
    # module without the minutes of C++ code generation; fullgraph: no graph break in the relay.
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    expected = unfused(feats)
    feats_grad = {k: v.clone().requires_grad_() for k, v in feats.items()}
    out = compiled(feats_grad)
    for k, v in out.items():
        torch.testing.assert_close(v, expected[k], rtol=1e-4, atol=1e-5)
    out["dark3"].sum().backward()
    assert feats_grad["dark5"].grad is not None and feats_grad["dark5"].grad.abs().sum() > 0
