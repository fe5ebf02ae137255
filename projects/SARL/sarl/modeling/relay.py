"""SARL, the Scale-Aware Relay Layer: cross-scale spatial-channel attention between a backbone
and its neck, as a detectron2 ``Backbone`` that wraps any other ``Backbone``.

Design of record (REFERENCE.md section 1), over the levels ``x_1..x_L`` named by
``MODEL.SARL.IN_FEATURES`` (finest first, any strides)::

    r_L = x_L * (1 + sig(c(x_L)) * sig(s(x_L)))                     deepest: gates from itself
    for l = L-1 .. 1:
        g   = Conv1x1-BN-SiLU(r_{l+1})                              [N, C_l, h, w] (coarse size)
        c_l = MLP(avg_HW(g)) + MLP(max_HW(g))                        [N, C_l]   shared MLP (CBAM)
        s_l = Conv7x7(up((mean_C(g), max_C(g))))                     [N, 1, H, W] at x_l's size
        r_l = x_l * (1 + sig(c_l) * sig(s_l)) + up(g)                the relay term is optional

``up`` is nearest upsampling to x_l's size. The pooling and the gate are the two fused ops
``sarl.ops.relay_pool`` / ``sarl.ops.relay_gate`` (``MODEL.SARL.FUSED``); the unfused path calls their
pure-PyTorch references (``sarl.ops.relay_reference``), the same math in plain PyTorch.
Levels the backbone returns but ``IN_FEATURES`` does not name pass through unchanged; with
``MODEL.SARL.ENABLED False`` the wrapper is the identity and holds no parameters.

Initialisation (why): the BN scale of every relay conv starts at 0 (the "zero-gamma" residual
init), so ``g == 0`` and the relay term is off at the start: each level starts as its backbone
feature times a per-channel constant in (1, 2) (about 1.25), i.e. close to the identity, and the
cross-level paths grow from there as training moves the BN scales. At that exact starting point
the max-pools of ``g`` see all-equal values; gradients through such ties follow the pooling
implementation's tie rule: first arg-max in both paths (``sarl.ops.relay_pool`` and
``torch.max(dim)``), so fused and unfused runs match from the first step.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

from sarl.ops import relay_gate, relay_pool
from sarl.ops.relay_reference import relay_gate_reference, relay_pool_reference

from .layers import BaseConv, is_channels_last, to_memory_format

__all__ = ["SARLRelay", "SARLLevel"]


class SARLLevel(nn.Module):
    """The learned parts of one level's gate.

    Args:
        channels: C_l, channels of the level.
        relay_in_channels: channels of the level above (the relay source), None for the deepest.
        reduction: the channel MLP's hidden width is ``max(C_l // reduction, 1)``.
        spatial_kernel_size: odd kernel size of the spatial conv.
    """

    def __init__(self, channels: int, relay_in_channels: Optional[int], reduction: int,
                 spatial_kernel_size: int):
        super().__init__()
        self.relay_conv: Optional[BaseConv] = None
        if relay_in_channels is not None:
            self.relay_conv = BaseConv(relay_in_channels, channels, 1, 1)
            nn.init.zeros_(self.relay_conv.bn.weight)  # zero-gamma: relay term starts at 0
        hidden = max(channels // reduction, 1)
        self.channel_mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                         nn.Linear(hidden, channels))
        self.spatial_conv = nn.Conv2d(2, 1, spatial_kernel_size, padding=spatial_kernel_size // 2)

    def gate_logits(self, spatial_desc: torch.Tensor, channel_desc: torch.Tensor,
                    size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Gate logits from the pooled descriptors of the gate source.

        Args:
            spatial_desc: [N, 2, h, w] (mean over C, max over C).
            channel_desc: [N, 2, C] (average over HW, max over HW).
            size: (H, W) of the gated level.
        Returns:
            channel logits [N, C], spatial logits [N, 1, H, W].
        """
        channel_logits = self.channel_mlp(channel_desc).sum(dim=1)  # shared MLP on avg and max
        if tuple(spatial_desc.shape[-2:]) != tuple(size):
            spatial_desc = F.interpolate(spatial_desc, size=size, mode="nearest")
        return channel_logits, self.spatial_conv(spatial_desc)


class SARLRelay(Backbone):
    """Wraps ``bottom_up`` and relays its ``in_features`` top-down (see the module docstring).

    Args:
        bottom_up: any detectron2 Backbone.
        in_features: names of the levels to relay (at least one); relayed from the deepest
            (largest stride) to the finest, whatever order they are given in.
        reduction: channel-MLP reduction ratio (``MODEL.SARL.REDUCTION``).
        spatial_kernel_size: odd size of the spatial-gate conv (``MODEL.SARL.SPATIAL_KERNEL_SIZE``).
        relay_residual: add ``up(g)`` to each non-deepest level (``MODEL.SARL.RELAY_RESIDUAL``).
        fused: use ``sarl.ops.relay_pool`` / ``relay_gate`` (``MODEL.SARL.FUSED``; they fall back to
            their references when ``sarl._C`` is not built); False calls the references directly.
        enabled: False makes the module the identity (``MODEL.SARL.ENABLED``).

    ``forward(x) -> Dict[str, Tensor]``: the same names, shapes and strides as ``bottom_up(x)``.
    """

    @configurable
    def __init__(self, bottom_up: Backbone, in_features: Sequence[str], reduction: int = 16,
                 spatial_kernel_size: int = 7, relay_residual: bool = True, fused: bool = True,
                 enabled: bool = True):
        super().__init__()
        self.bottom_up = bottom_up
        self.enabled = bool(enabled)
        self.relay_residual = bool(relay_residual)
        self.fused = bool(fused)
        shapes = bottom_up.output_shape()
        self._out_features = list(shapes)
        self._out_feature_channels = {k: v.channels for k, v in shapes.items()}
        self._out_feature_strides = {k: v.stride for k, v in shapes.items()}
        self.in_features: List[str] = []
        if not self.enabled:
            return

        in_features = list(dict.fromkeys(in_features))
        missing = [name for name in in_features if name not in shapes]
        if not in_features or missing:
            raise ValueError(f"MODEL.SARL.IN_FEATURES must name levels of the wrapped backbone "
                             f"{list(shapes)}, got {in_features}")
        strides = [shapes[name].stride for name in in_features]
        if len(set(strides)) != len(strides):
            raise ValueError(f"MODEL.SARL.IN_FEATURES must have distinct strides, got "
                             f"{dict(zip(in_features, strides))}")
        if int(reduction) < 1:
            raise ValueError(f"MODEL.SARL.REDUCTION must be >= 1, got {reduction}")
        if int(spatial_kernel_size) < 1 or int(spatial_kernel_size) % 2 == 0:
            raise ValueError(f"MODEL.SARL.SPATIAL_KERNEL_SIZE must be odd and >= 1, got {spatial_kernel_size}")
        # Finest first; the relay runs from the last entry down.
        self.in_features = sorted(in_features, key=lambda name: shapes[name].stride)
        self.levels = nn.ModuleDict()
        for i, name in enumerate(self.in_features):
            above = self.in_features[i + 1] if i + 1 < len(self.in_features) else None
            self.levels[name] = SARLLevel(shapes[name].channels,
                                          shapes[above].channels if above is not None else None,
                                          int(reduction), int(spatial_kernel_size))

    @classmethod
    def from_config(cls, cfg, bottom_up: Backbone) -> dict:
        """``MODEL.SARL`` over ``bottom_up``."""
        c = cfg.MODEL.SARL
        return {"bottom_up": bottom_up, "in_features": c.IN_FEATURES, "reduction": c.REDUCTION,
                "spatial_kernel_size": c.SPATIAL_KERNEL_SIZE, "relay_residual": c.RELAY_RESIDUAL,
                "fused": c.FUSED, "enabled": c.ENABLED}

    @property
    def size_divisibility(self) -> int:
        return self.bottom_up.size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return self.bottom_up.padding_constraints

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.relay(self.bottom_up(x))

    def relay(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Apply the relay to backbone features (a dict as ``bottom_up`` returns); returns a new
        dict with the same keys, or ``features`` itself when disabled."""
        if not self.enabled:
            return features
        pool, gate = (relay_pool, relay_gate) if self.fused else (relay_pool_reference, relay_gate_reference)
        out = dict(features)
        relayed: Optional[torch.Tensor] = None
        for name in reversed(self.in_features):
            x = features[name]
            level = self.levels[name]
            # The fused kernels read and write NCHW. In a channels-last model (MODEL.YOLO.MEMORY_FORMAT) their
            # inputs are copied to NCHW here and the output back to channels-last, with gradients converted the
            # same way: the convolutions, BatchNorms and SiLUs around the relay then see one layout only.
            channels_last = self.fused and is_channels_last(x)
            if relayed is None:  # deepest level: gate from its own descriptors, no relay term
                source, relay_term = x, None
            else:
                source = level.relay_conv(relayed)
                relay_term = source if self.relay_residual else None
            if channels_last:
                x = to_memory_format(x, torch.contiguous_format)
                source = x if relayed is None else to_memory_format(source, torch.contiguous_format)
                relay_term = source if relay_term is not None else None
            spatial_desc, channel_desc = pool(source)
            channel_logits, spatial_logits = level.gate_logits(spatial_desc, channel_desc, x.shape[-2:])
            relayed = gate(x, channel_logits, spatial_logits, relay_term)
            if channels_last:
                relayed = to_memory_format(relayed, torch.channels_last)
            out[name] = relayed
        return out

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return self.bottom_up.output_shape()
