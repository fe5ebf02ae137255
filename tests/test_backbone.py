"""CSPDarknet (YOLOX / YOLOv5 flavours), YOLOPAFPN and the registered chain builder."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

import sarl.modeling  # noqa: F401  (registers the builders)
from sarl.config import add_sarl_config
from sarl.modeling.backbone.cspdarknet import CSPDARKNET_SIZES, CSPDarknet
from sarl.modeling.layers import C3, SPPF, Bottleneck, CSPLayer, Focus, SPPBottleneck
from sarl.modeling.neck.pafpn import YOLOPAFPN

# ---- official parameter counts, derived by hand from the official definitions -------------------
# Counting rules: BaseConv(ci, co, k) (Conv no bias + BN weight/bias) = ci*co*k*k + 2*co;
# Bottleneck(c, c, e=1.0) = (c*c + 2c) + (9c*c + 2c) = 10c^2 + 4c;
# CSPLayer/C3(ci, co, n), h = co/2: 2*(ci*h + 2h) + (2h*co + 2co) + n*(10h^2 + 4h);
# SPP(ci, co) 5/9/13 and SPPF(ci, co), h = ci/2: (ci*h + 2h) + (4h*co + 2co).
#
# YOLOX-s (Megvii-BaseDetection/YOLOX yolox/models/darknet.py, yolo_pafpn.py, network_blocks.py;
# depth .33 -> base_depth max(round(.99), 1) = 1, stage n = 1, 3, 3, 1; neck n = round(.99) = 1;
# width .5 -> base 32):
#   stem  Focus -> BaseConv(12, 32, 3)                             3,520
#   dark2 BaseConv(32, 64, 3) 18,560 + CSP(64, 64, 1) 18,816       37,376
#   dark3 BaseConv(64, 128, 3) 73,984 + CSP(128, 128, 3) 156,928   230,912
#   dark4 BaseConv(128, 256, 3) 295,424 + CSP(256, 256, 3) 625,152 920,576
#   dark5 BaseConv(256, 512, 3) 1,180,672 + SPP(512, 512) 656,896
#         + CSP(512, 512, 1, no shortcut) 1,182,720               3,020,288
#   backbone                                                      4,212,672
#   PAFPN lateral_conv0 BaseConv(512, 256, 1) 131,584; C3_p4 CSP(512, 256, 1) 361,984;
#         reduce_conv1 BaseConv(256, 128, 1) 33,024; C3_p3 CSP(256, 128, 1) 90,880;
#         bu_conv2 BaseConv(128, 128, 3) 147,712; C3_n3 CSP(256, 256, 1) 296,448;
#         bu_conv1 BaseConv(256, 256, 3) 590,336; C3_n4 CSP(512, 512, 1) 1,182,720   2,834,688
#   backbone + PAFPN (YOLOX's YOLOPAFPN module)                   7,047,360
#   (check: + YOLOXHead for 80 classes 1,920,895 = 8,968,255, the published 8.97 M)
YOLOX_S_BACKBONE_PARAMS = 4_212_672
YOLOX_S_BACKBONE_PAFPN_PARAMS = 7_047_360
#
# YOLOv5s v6.0+ (ultralytics/yolov5 models/yolov5s.yaml, models/common.py; depth .33 -> n = 1, 2,
# 3, 1 for the backbone C3s (3, 6, 9, 3 x .33 rounded) and 1 in the head; width .5):
#   0 Conv(3, 32, 6, 2, 2) 3,520; 1 Conv(32, 64, 3, 2) 18,560; 2 C3(64, 64, 1) 18,816;
#   3 Conv(64, 128, 3, 2) 73,984; 4 C3(128, 128, 2) 115,712; 5 Conv(128, 256, 3, 2) 295,424;
#   6 C3(256, 256, 3) 625,152; 7 Conv(256, 512, 3, 2) 1,180,672; 8 C3(512, 512, 1) 1,182,720;
#   9 SPPF(512, 512) 656,896                                       backbone 4,171,456
#   head layers 10-23 (Detect excluded) are the same modules as YOLOX-s' PAFPN:   2,834,688
#   backbone + neck                                               7,006,144
#   (check: + Detect for 80 classes (128 + 256 + 512) * 255 + 3 * 255 = 229,245 gives
#    7,235,389, the published "YOLOv5s summary: 7235389 parameters")
YOLOV5S_BACKBONE_PARAMS = 4_171_456
YOLOV5S_BACKBONE_NECK_PARAMS = 7_006_144

YOLOX_SIZES = ("nano", "tiny", "s", "m", "l", "x")
YOLOV5_SIZES = ("n", "s", "m", "l", "x")
# dark2..dark5 channels per size (128/256/512/1024 x width; YOLOX int(64 w) * 2^k, YOLOv5
# multiples of 8: identical for the official sizes).
EXPECTED_CHANNELS = {
    "nano": (32, 64, 128, 256), "n": (32, 64, 128, 256), "tiny": (48, 96, 192, 384),
    "s": (64, 128, 256, 512), "m": (96, 192, 384, 768), "l": (128, 256, 512, 1024),
    "x": (160, 320, 640, 1280),
}
# Bottlenecks per stage dark2..dark5.
EXPECTED_DEPTHS = {
    ("yolox", 0.33): (1, 3, 3, 1), ("yolox", 0.67): (2, 6, 6, 2), ("yolox", 1.0): (3, 9, 9, 3),
    ("yolox", 1.33): (4, 12, 12, 4), ("yolov5", 0.33): (1, 2, 3, 1), ("yolov5", 0.67): (2, 4, 6, 2),
    ("yolov5", 1.0): (3, 6, 9, 3), ("yolov5", 1.33): (4, 8, 12, 4),
}
STAGES = ("dark2", "dark3", "dark4", "dark5")


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make_cfg(flavor: str = "yolox", size: str = "s", sarl: bool = True, use_p2: bool = False):
    cfg = add_sarl_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_sarl_cspdarknet_pafpn_backbone"
    cfg.MODEL.CSPDARKNET.FLAVOR = flavor
    cfg.MODEL.CSPDARKNET.DEPTH_MULTIPLIER, cfg.MODEL.CSPDARKNET.WIDTH_MULTIPLIER = CSPDARKNET_SIZES[size]
    cfg.MODEL.SARL.ENABLED = sarl
    cfg.MODEL.SARL.FUSED = False  # the fused path is compared in test_relay_module.py
    if use_p2:
        cfg.MODEL.YOLOPAFPN.USE_P2 = True
        cfg.MODEL.YOLOPAFPN.IN_FEATURES = ["dark2", "dark3", "dark4", "dark5"]
        cfg.MODEL.SARL.IN_FEATURES = ["dark2", "dark3", "dark4", "dark5"]
    return cfg


@pytest.mark.parametrize("flavor,size", [("yolox", s) for s in YOLOX_SIZES] + [("yolov5", s) for s in YOLOV5_SIZES])
def test_cspdarknet_shapes_every_flavour_and_size(flavor, size):
    depth, width = CSPDARKNET_SIZES[size]
    # The large sizes run on the meta device: same shapes, no time spent initialising 100 M weights.
    device = "meta" if size in ("m", "l", "x") else "cpu"
    with torch.device(device):
        model = CSPDarknet(flavor, depth, width, out_features=STAGES).eval()
    shapes = model.output_shape()
    assert list(shapes) == list(STAGES)
    assert [shapes[s].stride for s in STAGES] == [4, 8, 16, 32]
    assert tuple(shapes[s].channels for s in STAGES) == EXPECTED_CHANNELS[size]
    depths = tuple(sum(isinstance(m, Bottleneck) for m in getattr(model, s).modules()) for s in STAGES)
    assert depths == EXPECTED_DEPTHS[(flavor, depth)]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96, device=device))
    for s in STAGES:
        stride = shapes[s].stride
        assert out[s].shape == (1, shapes[s].channels, 64 // stride, 96 // stride)


def test_stem_and_dark5_follow_the_flavour():
    yolox = CSPDarknet("yolox", 0.33, 0.5)
    yolov5 = CSPDarknet("yolov5", 0.33, 0.5)
    assert isinstance(yolox.stem, Focus)
    assert yolov5.stem.conv.kernel_size == (6, 6) and yolov5.stem.conv.stride == (2, 2)
    assert yolov5.stem.conv.padding == (2, 2)
    assert [type(m) for m in yolox.dark5] == [type(yolox.dark5[0]), SPPBottleneck, CSPLayer]
    assert not any(b.use_add for b in yolox.dark5[2].m)  # YOLOX dark5 CSP: no shortcut
    assert [type(m) for m in yolov5.dark5] == [type(yolov5.dark5[0]), C3, SPPF]
    assert all(b.use_add for b in yolov5.dark5[1].m)  # YOLOv5 dark5 C3: shortcut
    bn = yolox.stem.conv.bn
    assert (bn.eps, bn.momentum) == (1e-3, 0.03)
    assert isinstance(yolox.stem.conv.act, nn.SiLU)


def test_out_features_select_levels_and_drop_unused_stages():
    model = CSPDarknet("yolox", 0.33, 0.25, out_features=["dark3", "dark2"])
    assert list(model.output_shape()) == ["dark2", "dark3"]
    assert not hasattr(model, "dark4") and not hasattr(model, "dark5")
    out = model(torch.randn(1, 3, 32, 32))
    assert sorted(out) == ["dark2", "dark3"]


def test_param_counts_match_official_models():
    yolox = build_backbone(make_cfg("yolox", "s", sarl=False))
    yolov5 = build_backbone(make_cfg("yolov5", "s", sarl=False))
    assert num_params(yolox.bottom_up.bottom_up) == YOLOX_S_BACKBONE_PARAMS
    assert num_params(yolox) == YOLOX_S_BACKBONE_PAFPN_PARAMS
    assert num_params(yolov5.bottom_up.bottom_up) == YOLOV5S_BACKBONE_PARAMS
    assert num_params(yolov5) == YOLOV5S_BACKBONE_NECK_PARAMS


def test_focus_space_to_depth_order():
    focus = Focus(1, 4, kernel_size=1)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    seen = {}
    focus.conv = nn.Identity()  # look at the space-to-depth result itself
    y = focus(x)
    for k in range(4):
        seen[k] = y[0, k, 0, 0].item()
    # (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col)
    assert seen == {0: 0.0, 1: 4.0, 2: 1.0, 3: 5.0}
    with pytest.raises(ValueError, match="even"):
        Focus(3, 8)(torch.randn(1, 3, 5, 4))


def test_sppf_equals_spp_5_9_13():
    """SPPF's chained 5x5 pools see the same windows as SPP's parallel 5/9/13 pools."""
    spp, sppf = SPPBottleneck(16, 8).eval(), SPPF(16, 8).eval()
    sppf.cv1.load_state_dict(spp.conv1.state_dict())
    sppf.cv2.load_state_dict(spp.conv2.state_dict())
    x = torch.randn(2, 16, 11, 9)
    torch.testing.assert_close(sppf(x), spp(x))


@pytest.mark.parametrize("flavor,size", [("yolox", 256), ("yolov5", 128)])
def test_full_chain_forward_backward(flavor, size):
    model = build_backbone(make_cfg(flavor, "s", sarl=True)).train()
    images = torch.randn(2, 3, size, size)
    out = model(images)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p3": (2, 128, size // 8, size // 8), "p4": (2, 256, size // 16, size // 16),
        "p5": (2, 512, size // 32, size // 32)}
    assert {k: (v.channels, v.stride) for k, v in model.output_shape().items()} == {
        "p3": (128, 8), "p4": (256, 16), "p5": (512, 32)}
    assert model.size_divisibility == 32
    loss = sum((v.float() ** 2).mean() for v in out.values())
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # SARL is reached: the deepest gate (from its own features) and, through the zero-gamma relay
    # BN scales (g == 0 at init), every relayed level, whose gates then open after the first step.
    relay = model.bottom_up
    assert relay.levels["dark5"].spatial_conv.weight.grad.abs().sum() > 0
    assert relay.levels["dark5"].channel_mlp[0].weight.grad.abs().sum() > 0
    for name in ("dark3", "dark4"):
        level = relay.levels[name]
        assert level.relay_conv.bn.weight.grad.abs().sum() > 0, name
        assert level.spatial_conv.bias.grad.abs().sum() > 0, name


def test_p2_output():
    model = build_backbone(make_cfg("yolox", "s", sarl=True, use_p2=True)).train()
    out = model(torch.randn(1, 3, 128, 128))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (1, 64, 32, 32), "p3": (1, 128, 16, 16), "p4": (1, 256, 8, 8), "p5": (1, 512, 4, 4)}
    assert [v.stride for v in model.output_shape().values()] == [4, 8, 16, 32]
    sum(v.mean() for v in out.values()).backward()
    # The P2 path feeds p3 (bottom-up), so its layers get gradient from every output.
    assert model.C3_n2.conv3.conv.weight.grad.abs().sum() > 0
    assert model.reduce_conv2.conv.weight.grad.abs().sum() > 0


def test_p2_needs_a_stride_4_level():
    cfg = make_cfg("yolox", "s", sarl=False)
    cfg.MODEL.YOLOPAFPN.USE_P2 = True
    with pytest.raises(ValueError, match="MODEL.YOLOPAFPN.IN_FEATURES"):
        build_backbone(cfg)


def test_neck_over_a_bare_backbone_depthwise():
    darknet = CSPDarknet("yolox", 0.33, 0.25, depthwise=True)
    neck = YOLOPAFPN(darknet, ["dark3", "dark4", "dark5"], depth_multiplier=0.33, depthwise=True)
    out = neck(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p3": (1, 64, 8, 8), "p4": (1, 128, 4, 4), "p5": (1, 256, 2, 2)}


def test_registration_and_config_round_trip(tmp_path):
    assert "build_sarl_cspdarknet_pafpn_backbone" in BACKBONE_REGISTRY
    assert "build_cspdarknet_backbone" in BACKBONE_REGISTRY
    cfg = make_cfg("yolov5", "n", sarl=True)
    cfg.MODEL.SARL.REDUCTION = 8
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.dump())
    loaded = add_sarl_config(get_cfg())
    loaded.merge_from_file(str(path))
    assert loaded.MODEL.CSPDARKNET.FLAVOR == "yolov5" and loaded.MODEL.SARL.REDUCTION == 8
    a, b = build_backbone(cfg), build_backbone(loaded)
    assert num_params(a) == num_params(b)
    assert a.output_shape() == b.output_shape()
    assert a.bottom_up.levels["dark3"].channel_mlp[0].out_features == 64 // 8

    bare_cfg = make_cfg("yolox", "tiny")
    bare_cfg.MODEL.BACKBONE.NAME = "build_cspdarknet_backbone"
    bare = build_backbone(bare_cfg, ShapeSpec(channels=3))
    assert isinstance(bare, CSPDarknet)
    assert {k: v.channels for k, v in bare.output_shape().items()} == {"dark3": 96, "dark4": 192, "dark5": 384}


def test_syncbn_conversion():
    cfg = make_cfg("yolox", "nano", sarl=True)
    cfg.MODEL.CSPDARKNET.NORM = "SyncBN"
    model = build_backbone(cfg)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    assert all((m.eps, m.momentum) == (1e-3, 0.03) for m in norms)
    # zero-gamma init of the relay convs survives the conversion
    assert model.bottom_up.levels["dark4"].relay_conv.bn.weight.abs().sum() == 0

    cfg.MODEL.CSPDARKNET.NORM = "GN"
    with pytest.raises(ValueError, match="MODEL.CSPDARKNET.NORM"):
        build_backbone(cfg)
    # The one SyncBN key: the old solver switch is refused with a pointer to it.
    with pytest.raises(KeyError, match="MODEL.CSPDARKNET.NORM"):
        make_cfg().merge_from_list(["SOLVER.YOLO.SYNC_BN", "True"])


@pytest.mark.parametrize("key,value,match", [
    ("FLAVOR", "yolov8", "MODEL.CSPDARKNET.FLAVOR"),
    ("OUT_FEATURES", ["dark6"], "MODEL.CSPDARKNET.OUT_FEATURES"),
    ("WIDTH_MULTIPLIER", 0.0, "WIDTH_MULTIPLIER"),
])
def test_bad_backbone_config_is_named(key, value, match):
    cfg = make_cfg("yolox", "nano", sarl=False)
    setattr(cfg.MODEL.CSPDARKNET, key, value)
    with pytest.raises(ValueError, match=match):
        build_backbone(cfg)


def test_neck_reading_an_unknown_level_is_named():
    cfg = make_cfg("yolox", "nano", sarl=False)
    cfg.MODEL.YOLOPAFPN.IN_FEATURES = ["res3", "dark4", "dark5"]
    with pytest.raises(ValueError, match="MODEL.YOLOPAFPN.IN_FEATURES"):
        build_backbone(cfg)


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.skipif(not CONFIGS, reason="no config files under configs/")
def test_every_config_builds_the_chain():
    """The chain builds from each config file of configs/ (baselines with SARL off, sarl_* with it
    on), on the meta device: shapes and parameter counts without initialising large models."""
    seen, sarl_states = set(), set()
    for path in CONFIGS:
        cfg = add_sarl_config(get_cfg())
        cfg.set_new_allowed(True)  # keys another component may add later do not break this check
        cfg.merge_from_file(str(path))
        if cfg.MODEL.BACKBONE.NAME != "build_sarl_cspdarknet_pafpn_backbone":
            continue
        key = cfg.MODEL.CSPDARKNET.dump() + cfg.MODEL.SARL.dump() + cfg.MODEL.YOLOPAFPN.dump()
        if key in seen:  # many configs share a chain; build each distinct one once
            continue
        seen.add(key)
        with torch.device("meta"):
            model = build_backbone(cfg)
        assert isinstance(model, YOLOPAFPN), path
        assert list(model.output_shape()) == list(cfg.MODEL.YOLO.IN_FEATURES), path
        relay = model.bottom_up
        assert relay.enabled == cfg.MODEL.SARL.ENABLED, path
        assert (num_params(relay) > num_params(relay.bottom_up)) == cfg.MODEL.SARL.ENABLED, path
        sarl_states.add(cfg.MODEL.SARL.ENABLED)
    assert sarl_states == {True, False}  # both the baselines and the SARL models were built
