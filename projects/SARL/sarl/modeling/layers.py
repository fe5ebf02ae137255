"""Building blocks of the CSPDarknet backbones and the YOLO PAN necks (YOLOX and YOLOv5).

Every block keeps the official module layout (sub-module names, channel splits, BN placement), so
parameter counts match the official models and their state dicts map one to one. Shapes:
``[N, C_in, H, W] -> [N, C_out, H', W']`` with ``H' = H / stride`` (``ceil``) for every block.

YOLOX name            YOLOv5 name   here
BaseConv              Conv          :class:`BaseConv` (Conv-BN-SiLU, BN eps 1e-3, momentum 0.03)
DWConv                DWConv        :class:`DWConv` (depthwise k x k + pointwise 1x1, both BaseConv)
Bottleneck            Bottleneck    :class:`Bottleneck`
CSPLayer              C3            :class:`CSPLayer` (``C3`` is the same module: see its docstring)
Focus                 (v5 < 6.0)    :class:`Focus`
SPPBottleneck         SPP           :class:`SPPBottleneck` (parallel max-pools 5/9/13)
-                     SPPF          :class:`SPPF` (three chained 5x5 max-pools: same receptive
                                    fields as SPP 5/9/13, less work)
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# YOLOX and YOLOv5 both train with these BN settings (PyTorch's defaults are 1e-5 / 0.1).
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def is_channels_last(x: torch.Tensor) -> bool:
    """True when the 4-d ``x`` is laid out channels-last (NHWC) and not also NCHW-contiguous."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class _MemoryFormatCopy(torch.autograd.Function):
    """Copy to ``memory_format``; the gradient goes back in the layout of the input (``Tensor.contiguous``'s
    backward would pass it on unchanged, and a contiguous gradient reaching a channels-last BatchNorm or SiLU
    backward runs their mixed-layout kernels, measured about 7x slower on CPU)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        ctx.input_format = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        return x.contiguous(memory_format=memory_format)  # a copy: to_memory_format calls this only when needed

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.contiguous(memory_format=ctx.input_format), None


def to_memory_format(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``x`` [N, C, H, W] in ``memory_format`` (itself when already so); under autograd its gradient comes back in
    ``x``'s own layout. Same values either way."""
    if x.is_contiguous(memory_format=memory_format):
        return x
    return _MemoryFormatCopy.apply(x, memory_format)


class BaseConv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU, with "same" padding ``(k - 1) // 2``.

    The YOLOv5 6x6 stride-2 stem conv (explicit padding 2) is ``BaseConv(3, c, 6, 2)``: its
    padding ``(6 - 1) // 2 = 2`` is the official one.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1, activation: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                              padding=(kernel_size - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU(inplace=True) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if y.requires_grad and isinstance(self.act, nn.SiLU):
            # Out of place under autograd: SiLU's backward needs its input, so the in-place form makes autograd
            # clone the BatchNorm output first (a full extra copy of every activation, for the same memory).
            return F.silu(y)
        return self.act(y)


class DWConv(nn.Module):
    """Depthwise ``k x k`` BaseConv followed by a pointwise 1x1 BaseConv (YOLOX-nano layers)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1):
        super().__init__()
        self.dconv = BaseConv(in_channels, in_channels, kernel_size, stride, groups=in_channels)
        self.pconv = BaseConv(in_channels, out_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pconv(self.dconv(x))


def conv_block(depthwise: bool):
    """The k x k convolution type of a model: ``DWConv`` for depthwise models, else ``BaseConv``."""
    return DWConv if depthwise else BaseConv


NORMS = ("BN", "SyncBN")


def convert_norm(module: nn.Module, norm: str) -> nn.Module:
    """Apply ``MODEL.CSPDARKNET.NORM`` to a built module: "BN" keeps BatchNorm2d, "SyncBN" converts
    every BatchNorm to ``nn.SyncBatchNorm`` (eps/momentum/affine and statistics kept; in place for
    a module that is not itself a BatchNorm)."""
    if norm not in NORMS:
        raise ValueError(f"MODEL.CSPDARKNET.NORM must be one of {NORMS}, got {norm!r}")
    if norm == "SyncBN":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


class Bottleneck(nn.Module):
    """1x1 conv to ``out * expansion`` channels, 3x3 conv back to ``out``, plus the input when
    ``shortcut`` and the channel counts agree."""

    def __init__(self, in_channels: int, out_channels: int, shortcut: bool = True,
                 expansion: float = 0.5, depthwise: bool = False):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = BaseConv(in_channels, hidden, 1, 1)
        self.conv2 = conv_block(depthwise)(hidden, out_channels, 3, 1)
        self.use_add = shortcut and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.use_add else y


class CSPLayer(nn.Module):
    """Cross Stage Partial block: two 1x1 branches of ``out * expansion`` channels, ``n``
    bottlenecks (expansion 1.0) on the first, concatenation, 1x1 fusion to ``out`` channels.

    YOLOv5's ``C3(c1, c2, n, shortcut, g=1, e=0.5)`` is this exact module: ``cv1``/``cv2`` are the
    two 1x1 branches (``conv1``/``conv2`` here), ``m`` the ``Bottleneck(c_, c_, shortcut, e=1.0)``
    stack, ``cv3`` the 1x1 fusion of ``cat(m(cv1(x)), cv2(x))`` (``conv3`` here), same order.
    """

    def __init__(self, in_channels: int, out_channels: int, n: int = 1, shortcut: bool = True,
                 expansion: float = 0.5, depthwise: bool = False):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = BaseConv(in_channels, hidden, 1, 1)
        self.conv2 = BaseConv(in_channels, hidden, 1, 1)
        self.conv3 = BaseConv(2 * hidden, out_channels, 1, 1)
        self.m = nn.Sequential(*[Bottleneck(hidden, hidden, shortcut, 1.0, depthwise) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(torch.cat([self.m(self.conv1(x)), self.conv2(x)], dim=1))


# YOLOv5's name for the same block (see CSPLayer's docstring).
C3 = CSPLayer


class Focus(nn.Module):
    """Space-to-depth (each 2x2 pixel block to 4 channels), then a BaseConv: ``[N, C, H, W] ->
    [N, out, H/2, W/2]``. H and W must be even.

    Channel order of the 4 sub-images: (even row, even col), (odd row, even col),
    (even row, odd col), (odd row, odd col), YOLOX's order, so its stem weights load unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1):
        super().__init__()
        self.conv = BaseConv(in_channels * 4, out_channels, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            raise ValueError(f"Focus needs an even input height and width, got {tuple(x.shape[-2:])}")
        patches = [x[..., 0::2, 0::2], x[..., 1::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 1::2]]
        return self.conv(torch.cat(patches, dim=1))


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling (YOLOX/YOLOv3-SPP): 1x1 conv to ``in / 2``, concatenation with its
    stride-1 max-pools of sizes ``kernel_sizes``, 1x1 conv to ``out``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: Sequence[int] = (5, 9, 13)):
        super().__init__()
        hidden = in_channels // 2
        self.conv1 = BaseConv(in_channels, hidden, 1, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes])
        self.conv2 = BaseConv(hidden * (len(kernel_sizes) + 1), out_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.m], dim=1))


class SPPF(nn.Module):
    """Fast SPP (YOLOv5 >= 6.0): the 5/9/13 pyramid as three chained 5x5 max-pools.

    Layout as YOLOv5's ``SPPF(c1, c2, k=5)``: ``cv1`` 1x1 to ``c1 / 2``, ``m`` the pool, ``cv2``
    1x1 from ``4 * c1 / 2`` to ``c2``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5):
        super().__init__()
        hidden = in_channels // 2
        self.cv1 = BaseConv(in_channels, hidden, 1, 1)
        self.cv2 = BaseConv(hidden * 4, out_channels, 1, 1)
        self.m = nn.MaxPool2d(kernel_size, stride=1, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat([x, y1, y2, self.m(y2)], dim=1))
