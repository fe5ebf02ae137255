"""Inference-only folding of BatchNorm into the preceding convolution (YOLOX's ``fuse_model``, Ultralytics'
``model.fuse()``).

In eval mode a BatchNorm is a per-channel affine map ``y = (x - mean) / sqrt(var + eps) * w + b`` with fixed
statistics, so it folds into the convolution before it (``torch.nn.utils.fusion.fuse_conv_bn_eval``): one pass
over each activation instead of two, the same outputs up to float rounding. The fused model cannot be trained
(the statistics are gone) and its state dict has no ``bn`` keys, so it is built for prediction, video and export
only (:func:`sarl.inference.load_inference_model`, ``TEST.FUSE_CONV_BN``), never for the trainer.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .layers import BaseConv, is_channels_last

__all__ = ["fuse_conv_bn", "is_conv_bn_fused"]


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold the BatchNorm of every :class:`BaseConv` of ``model`` (in eval mode) into its convolution, in place,
    and return ``model``. Idempotent; the weights keep their memory format (channels-last stays channels-last).

    Raises ValueError when ``model`` is in training mode: a training-mode BatchNorm normalises with batch
    statistics, which no fixed convolution can reproduce.
    """
    if model.training:
        raise ValueError("fuse_conv_bn: the model is in training mode; call model.eval() first (BatchNorm folds "
                         "into the convolution only with its running statistics)")
    for module in model.modules():
        if isinstance(module, BaseConv) and isinstance(module.bn, _BatchNorm):
            weight_format = torch.channels_last if is_channels_last(module.conv.weight) else torch.contiguous_format
            fused = fuse_conv_bn_eval(module.conv, module.bn)
            fused.weight.data = fused.weight.data.contiguous(memory_format=weight_format)
            module.conv, module.bn = fused, nn.Identity()
    return model


def is_conv_bn_fused(model: nn.Module) -> bool:
    """True when no :class:`BaseConv` of ``model`` still has a BatchNorm (and it has at least one BaseConv)."""
    convs = [m for m in model.modules() if isinstance(m, BaseConv)]
    return bool(convs) and not any(isinstance(m.bn, _BatchNorm) for m in convs)
