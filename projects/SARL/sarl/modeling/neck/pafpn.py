"""YOLOPAFPN: the PAN neck of YOLOX and YOLOv5 (v6.0+) as a detectron2 ``Backbone`` wrapper.

Both official necks have the same layout (YOLOX ``YOLOPAFPN``; YOLOv5 yolov5s.yaml head, layers
10-23, C3 blocks without shortcut); with C3, C4, C5 the channels of the three input levels
(256/512/1024 x width for CSPDarknet) and ``n = max(round(3 * depth), 1)``::

    top-down                                         bottom-up
    f5 = BaseConv1x1(x5 -> C4)         (lateral)     p3 = t3
    t4 = CSP(cat(up(f5), x4) -> C4)                  p4 = CSP(cat(Conv3x3/2(p3), f4) -> C4)
    f4 = BaseConv1x1(t4 -> C3)         (reduce)      p5 = CSP(cat(Conv3x3/2(p4), f5) -> C5)
    t3 = CSP(cat(up(f4), x3) -> C3)

Outputs ``p3, p4, p5`` (channels C3, C4, C5; strides of the inputs, 8/16/32 on CSPDarknet).
With ``use_p2`` (``MODEL.YOLOPAFPN.USE_P2``, four inputs, the finest at stride 4) the top-down
path goes one level further and the bottom-up path starts there, as yolov5-p2.yaml does::

    f3 = BaseConv1x1(t3 -> C2); p2 = CSP(cat(up(f3), x2) -> C2)
    p3 = CSP(cat(Conv3x3/2(p2), f3) -> C3), then p4, p5 as above.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

from ..layers import BaseConv, CSPLayer, conv_block

__all__ = ["YOLOPAFPN"]


class YOLOPAFPN(Backbone):
    """PAN neck over a Backbone (the SARL relay or a bare CSPDarknet).

    Args:
        bottom_up: Backbone whose outputs include ``in_features``.
        in_features: 3 names (or 4 with ``use_p2``), finest first, each stride twice the previous.
        depth_multiplier: CSP depth ``max(round(3 * depth), 1)``.
        depthwise: depthwise-separable 3x3 convs (YOLOX-nano).
        use_p2: also output ``p2`` from the stride-4 input.

    ``forward(x) -> {"p2"?, "p3", "p4", "p5"}``: ``[N, C_l, H / s_l, W / s_l]``; names follow
    the strides (``p{log2 stride}``), so p3/p4/p5 on CSPDarknet. Input sizes: multiples of the
    deepest stride (``size_divisibility``) keep every level exactly twice the next.
    """

    @configurable
    def __init__(self, bottom_up: Backbone, in_features: Sequence[str], depth_multiplier: float = 0.33,
                 depthwise: bool = False, use_p2: bool = False):
        super().__init__()
        in_features = list(in_features)
        shapes = bottom_up.output_shape()
        expected = 4 if use_p2 else 3
        if len(in_features) != expected:
            hint = (" (USE_P2 needs a stride-4 level first, e.g. ['dark2', 'dark3', 'dark4', 'dark5'])"
                    if use_p2 else "")
            raise ValueError(f"MODEL.YOLOPAFPN.IN_FEATURES must name {expected} levels with "
                             f"MODEL.YOLOPAFPN.USE_P2={use_p2}, got {in_features}{hint}")
        missing = [name for name in in_features if name not in shapes]
        if missing:
            raise ValueError(f"MODEL.YOLOPAFPN.IN_FEATURES {missing} are not outputs of the wrapped "
                             f"backbone {list(shapes)}")
        strides = [shapes[name].stride for name in in_features]
        if any(b != 2 * a for a, b in zip(strides, strides[1:])):
            raise ValueError(f"MODEL.YOLOPAFPN.IN_FEATURES must be finest first with each stride twice "
                             f"the previous, got strides {dict(zip(in_features, strides))}")
        self.bottom_up = bottom_up
        self.in_features = in_features
        self.use_p2 = bool(use_p2)
        n = max(round(3 * depth_multiplier), 1)
        Conv = conv_block(depthwise)
        channels = [shapes[name].channels for name in in_features]
        c3, c4, c5 = channels[-3:]

        # Official YOLOX attribute names, so its checkpoints map one to one.
        self.lateral_conv0 = BaseConv(c5, c4, 1, 1)
        self.C3_p4 = CSPLayer(2 * c4, c4, n, shortcut=False, depthwise=depthwise)
        self.reduce_conv1 = BaseConv(c4, c3, 1, 1)
        self.C3_p3 = CSPLayer(2 * c3, c3, n, shortcut=False, depthwise=depthwise)
        self.bu_conv2 = Conv(c3, c3, 3, 2)
        self.C3_n3 = CSPLayer(2 * c3, c4, n, shortcut=False, depthwise=depthwise)
        self.bu_conv1 = Conv(c4, c4, 3, 2)
        self.C3_n4 = CSPLayer(2 * c4, c5, n, shortcut=False, depthwise=depthwise)
        if self.use_p2:
            c2 = channels[0]
            self.reduce_conv2 = BaseConv(c3, c2, 1, 1)
            self.C3_p2 = CSPLayer(2 * c2, c2, n, shortcut=False, depthwise=depthwise)
            self.bu_conv3 = Conv(c2, c2, 3, 2)
            self.C3_n2 = CSPLayer(2 * c2, c3, n, shortcut=False, depthwise=depthwise)

        out_channels = channels if self.use_p2 else [c3, c4, c5]
        out_strides = strides if self.use_p2 else strides[-3:]
        self._out_features = [f"p{int(math.log2(s))}" for s in out_strides]
        self._out_feature_channels = dict(zip(self._out_features, out_channels))
        self._out_feature_strides = dict(zip(self._out_features, out_strides))
        self._size_divisibility = max(strides[-1], bottom_up.size_divisibility)

    @classmethod
    def from_config(cls, cfg, bottom_up: Backbone) -> dict:
        """``MODEL.YOLOPAFPN``, with depth and depthwise from ``MODEL.CSPDARKNET`` (the official
        models share them)."""
        return {"bottom_up": bottom_up, "in_features": cfg.MODEL.YOLOPAFPN.IN_FEATURES,
                "depth_multiplier": cfg.MODEL.CSPDARKNET.DEPTH_MULTIPLIER,
                "depthwise": cfg.MODEL.CSPDARKNET.DEPTHWISE, "use_p2": cfg.MODEL.YOLOPAFPN.USE_P2}

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @staticmethod
    def _up_cat(top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        # Upsample to the lateral's exact size (2x for sizes that are multiples of the strides).
        return torch.cat([F.interpolate(top, size=lateral.shape[-2:], mode="nearest"), lateral], dim=1)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.bottom_up(x)
        levels = [features[name] for name in self.in_features]
        x3, x4, x5 = levels[-3:]
        f5 = self.lateral_conv0(x5)
        f4 = self.reduce_conv1(self.C3_p4(self._up_cat(f5, x4)))
        t3 = self.C3_p3(self._up_cat(f4, x3))
        outputs: List[torch.Tensor] = []
        if self.use_p2:
            f3 = self.reduce_conv2(t3)
            p2 = self.C3_p2(self._up_cat(f3, levels[0]))
            p3 = self.C3_n2(torch.cat([self.bu_conv3(p2), f3], dim=1))
            outputs.append(p2)
        else:
            p3 = t3
        p4 = self.C3_n3(torch.cat([self.bu_conv2(p3), f4], dim=1))
        p5 = self.C3_n4(torch.cat([self.bu_conv1(p4), f5], dim=1))
        outputs += [p3, p4, p5]
        return dict(zip(self._out_features, outputs))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {name: ShapeSpec(channels=self._out_feature_channels[name],
                                stride=self._out_feature_strides[name]) for name in self._out_features}
