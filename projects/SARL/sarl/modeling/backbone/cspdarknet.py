"""CSPDarknet backbones of YOLOX and YOLOv5 (v6.0+) as a detectron2 ``Backbone``.

Outputs ``dark2..dark5`` at strides 4, 8, 16, 32 (any subset, ``MODEL.CSPDARKNET.OUT_FEATURES``),
with ``64 * 2**k * width`` channels for ``dark{k+1}`` (128/256/512/1024 x width for dark2..dark5).

Flavours (``MODEL.CSPDARKNET.FLAVOR``):

=========  =================================  =================================
stage      "yolox"                            "yolov5" (v6.0+)
=========  =================================  =================================
stem       Focus (space-to-depth, 3x3 conv)   6x6 stride-2 conv, padding 2
dark2..4   3x3/2 conv + CSPLayer              3x3/2 conv + C3 (same module)
depths     max(round(3 d), 1) x (1, 3, 3, 1)  max(round(n d), 1), n = 3, 6, 9, 3
dark5      conv, SPP 5/9/13, CSP no shortcut  conv, C3 with shortcut, SPPF
widths     int(64 w) x 2**k                   ceil(64 w 2**k / 8) * 8
=========  =================================  =================================

Sizes (depth, width): YOLOX nano/tiny/s/m/l/x = (.33, .25)/(.33, .375)/(.33, .5)/(.67, .75)/
(1, 1)/(1.33, 1.25); YOLOv5 n/s/m/l/x = (.33, .25)/(.33, .5)/(.67, .75)/(1, 1)/(1.33, 1.25);
:data:`CSPDARKNET_SIZES` names them.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ..layers import C3, SPPF, BaseConv, CSPLayer, Focus, SPPBottleneck, conv_block, convert_norm

__all__ = ["CSPDarknet", "CSPDARKNET_SIZES", "build_cspdarknet_backbone"]

# (depth multiplier, width multiplier) of the official sizes, for configs and tests.
CSPDARKNET_SIZES: Dict[str, Tuple[float, float]] = {
    "nano": (0.33, 0.25), "tiny": (0.33, 0.375), "n": (0.33, 0.25), "s": (0.33, 0.50),
    "m": (0.67, 0.75), "l": (1.0, 1.0), "x": (1.33, 1.25),
}

FLAVORS = ("yolox", "yolov5")
STAGE_NAMES = ("dark2", "dark3", "dark4", "dark5")


def stage_widths(flavor: str, width: float, base: int = 64) -> List[int]:
    """Output channels of stem, dark2, dark3, dark4, dark5 for a width multiplier."""
    if flavor == "yolox":
        stem = int(base * width)
        return [stem * 2**k for k in range(5)]
    # YOLOv5 rounds every layer's channels up to a multiple of 8 (make_divisible).
    return [int(math.ceil(base * 2**k * width / 8) * 8) for k in range(5)]


def stage_depths(flavor: str, depth: float) -> List[int]:
    """Bottleneck counts of the CSP/C3 blocks of dark2, dark3, dark4, dark5."""
    if flavor == "yolox":
        base_depth = max(round(3 * depth), 1)
        return [base_depth, 3 * base_depth, 3 * base_depth, base_depth]
    return [max(round(n * depth), 1) for n in (3, 6, 9, 3)]


class CSPDarknet(Backbone):
    """CSPDarknet (YOLOX or YOLOv5 flavour).

    Args:
        flavor: "yolox" or "yolov5" (see the module docstring).
        depth_multiplier, width_multiplier: model size (``CSPDARKNET_SIZES``).
        out_features: names among dark2..dark5 to return.
        in_channels: channels of the input image (3).
        depthwise: depthwise-separable 3x3 convs (YOLOX-nano).

    ``forward(x [N, C_in, H, W]) -> {name: [N, C_name, H / stride, W / stride]}``; H and W must be
    even (the stem halves them exactly); multiples of 32 keep every level's size exact.
    """

    @configurable
    def __init__(self, flavor: str = "yolox", depth_multiplier: float = 0.33,
                 width_multiplier: float = 0.5, out_features: Sequence[str] = ("dark3", "dark4", "dark5"),
                 in_channels: int = 3, depthwise: bool = False):
        super().__init__()
        if flavor not in FLAVORS:
            raise ValueError(f"MODEL.CSPDARKNET.FLAVOR must be one of {FLAVORS}, got {flavor!r}")
        if depth_multiplier <= 0 or width_multiplier <= 0:
            raise ValueError("MODEL.CSPDARKNET.DEPTH_MULTIPLIER and WIDTH_MULTIPLIER must be > 0, got "
                             f"{depth_multiplier} and {width_multiplier}")
        out_features = list(out_features)
        unknown = [name for name in out_features if name not in STAGE_NAMES]
        if not out_features or unknown:
            raise ValueError(f"MODEL.CSPDARKNET.OUT_FEATURES must be a non-empty subset of {STAGE_NAMES}, "
                             f"got {out_features}")
        self.flavor = flavor
        widths = stage_widths(flavor, width_multiplier)
        depths = stage_depths(flavor, depth_multiplier)
        Conv = conv_block(depthwise)

        if flavor == "yolox":
            self.stem = Focus(in_channels, widths[0], kernel_size=3)
        else:
            self.stem = BaseConv(in_channels, widths[0], 6, 2)
        stages = []
        for k, name in enumerate(STAGE_NAMES):
            c_in, c_out, n = widths[k], widths[k + 1], depths[k]
            layers: List[nn.Module] = [Conv(c_in, c_out, 3, 2)]
            if name != "dark5":
                layers.append(CSPLayer(c_out, c_out, n, shortcut=True, depthwise=depthwise))
            elif flavor == "yolox":
                layers += [SPPBottleneck(c_out, c_out, (5, 9, 13)),
                           CSPLayer(c_out, c_out, n, shortcut=False, depthwise=depthwise)]
            else:
                layers += [C3(c_out, c_out, n, shortcut=True, depthwise=depthwise), SPPF(c_out, c_out, 5)]
            stages.append(nn.Sequential(*layers))
        self.dark2, self.dark3, self.dark4, self.dark5 = stages

        # Stop at the deepest requested stage: unused stages would hold parameters without
        # gradients (DDP complains) and cost compute.
        self._stages = STAGE_NAMES[: max(STAGE_NAMES.index(n) for n in out_features) + 1]
        for name in STAGE_NAMES[len(self._stages):]:
            delattr(self, name)
        self._out_features = sorted(set(out_features), key=STAGE_NAMES.index)
        self._out_feature_channels = {name: widths[k + 1] for k, name in enumerate(STAGE_NAMES)}
        self._out_feature_strides = {name: 2 ** (k + 2) for k, name in enumerate(STAGE_NAMES)}

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec, extra_out_features: Sequence[str] = ()) -> dict:
        """``MODEL.CSPDARKNET`` (BatchNorm; the builders apply ``NORM``); ``extra_out_features`` adds
        the levels that modules built on top of it (relay, neck) read."""
        c = cfg.MODEL.CSPDARKNET
        unknown = [name for name in extra_out_features if name not in STAGE_NAMES]
        if unknown:
            raise ValueError(f"the relay/neck read {unknown}, which CSPDarknet does not produce (it has "
                             f"{STAGE_NAMES}): check MODEL.SARL.IN_FEATURES and MODEL.YOLOPAFPN.IN_FEATURES")
        out_features = list(c.OUT_FEATURES) + [n for n in extra_out_features if n not in c.OUT_FEATURES]
        return {"flavor": c.FLAVOR, "depth_multiplier": c.DEPTH_MULTIPLIER,
                "width_multiplier": c.WIDTH_MULTIPLIER, "out_features": out_features,
                "in_channels": input_shape.channels, "depthwise": c.DEPTHWISE}

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"CSPDarknet takes images [N, C, H, W], got shape {tuple(x.shape)}")
        outputs: Dict[str, torch.Tensor] = {}
        x = self.stem(x)
        for name in self._stages:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {name: ShapeSpec(channels=self._out_feature_channels[name],
                                stride=self._out_feature_strides[name]) for name in self._out_features}


@BACKBONE_REGISTRY.register()
def build_cspdarknet_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """The bare CSPDarknet (``MODEL.BACKBONE.NAME: build_cspdarknet_backbone``)."""
    return convert_norm(CSPDarknet(cfg, input_shape), cfg.MODEL.CSPDARKNET.NORM)
