"""Fused SARL relay ops: Python API of ``torch.ops.sarl.relay_pool`` / ``relay_gate``.

    from sarl.ops import relay_pool, relay_gate
    spatial, channel = relay_pool(g)          # g [N,C,h,w] -> [N,2,h,w], [N,2,C]
    out = relay_gate(x, c_logits, s_logits, g)  # x * (1 + sig(c) * sig(s)) + nearest_up(g, x.shape[-2:])

``relay_pool`` reads ``g`` once and returns both pooled descriptors of the SARL relay
(mean/max over channels, average/max over pixels); its backward sends each max gradient to the
first arg-max (ties: first index, as ``torch.max(dim)``). ``relay_gate`` applies the gate and adds
the relay, upsampled inside the kernel exactly as ``F.interpolate(mode="nearest")``; its backward
produces the gradients of all four inputs in one pass over ``grad_out`` and ``x``.

Autograd and fake (meta) implementations are registered here with ``torch.library``, so the ops
work under autograd, ``torch.compile`` and ``torch.library.opcheck``. Without the extension, the
pure-PyTorch references (:mod:`sarl.ops.relay_reference`) run instead, after a one-time warning.
Inputs in channels-last or other strided layouts are copied to contiguous NCHW by the kernels
(one extra read+write of that input); outputs are contiguous NCHW.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._extension import _LOADED, use_extension
from .relay_reference import check_gate_args, check_pool_args, relay_gate_reference, relay_pool_reference

__all__ = ["relay_pool", "relay_gate"]


# ---- relay_pool ---------------------------------------------------------------------------
def _relay_pool_setup_context(ctx, inputs, output) -> None:
    (g,) = inputs
    _, _, spatial_argmax, channel_argmax = output
    ctx.save_for_backward(spatial_argmax, channel_argmax)
    ctx.g_shape = g.shape


def _relay_pool_backward(ctx, grad_spatial, grad_channel, _grad_sarg, _grad_carg):
    spatial_argmax, channel_argmax = ctx.saved_tensors
    n, c, h, w = ctx.g_shape
    # Autograd passes None for an output that did not reach the loss.
    ref = grad_spatial if grad_spatial is not None else grad_channel
    if grad_spatial is None:
        grad_spatial = ref.new_zeros((n, 2, h, w))
    if grad_channel is None:
        grad_channel = ref.new_zeros((n, 2, c))
    return torch.ops.sarl.relay_pool_backward(grad_spatial, grad_channel, spatial_argmax, channel_argmax)


# ---- relay_gate ---------------------------------------------------------------------------
def _relay_gate_setup_context(ctx, inputs, output) -> None:
    x, channel_logits, spatial_logits, relay = inputs
    ctx.has_relay = relay is not None
    # The relay tensor is saved for its shape only (the backward needs no value of it).
    ctx.save_for_backward(x, channel_logits, spatial_logits, relay)


def _relay_gate_backward(ctx, grad_out):
    x, channel_logits, spatial_logits, relay = ctx.saved_tensors
    grad_x, grad_c, grad_s, grad_relay = torch.ops.sarl.relay_gate_backward(
        grad_out, x, channel_logits, spatial_logits, relay if ctx.has_relay else None)
    return grad_x, grad_c, grad_s, (grad_relay if ctx.has_relay else None)


def _register_python_side() -> None:
    """Fake (shape) implementations and autograd formulas of the compiled ops."""

    @torch.library.register_fake("sarl::relay_pool")
    def _relay_pool_fake(g):
        check_pool_args(g)
        n, c, h, w = g.shape
        return (g.new_empty((n, 2, h, w)), g.new_empty((n, 2, c)),
                g.new_empty((n, h, w), dtype=torch.long), g.new_empty((n, c), dtype=torch.long))

    @torch.library.register_fake("sarl::relay_pool_backward")
    def _relay_pool_backward_fake(grad_spatial, grad_channel, spatial_argmax, channel_argmax):
        n, _, h, w = grad_spatial.shape
        return grad_spatial.new_empty((n, grad_channel.shape[2], h, w))

    @torch.library.register_fake("sarl::relay_gate")
    def _relay_gate_fake(x, channel_logits, spatial_logits, relay):
        check_gate_args(x, channel_logits, spatial_logits, relay)
        return x.new_empty(x.shape)

    @torch.library.register_fake("sarl::relay_gate_backward")
    def _relay_gate_backward_fake(grad_out, x, channel_logits, spatial_logits, relay):
        grad_relay = relay.new_empty(relay.shape) if relay is not None else x.new_empty((0,))
        return (x.new_empty(x.shape), channel_logits.new_empty(channel_logits.shape),
                spatial_logits.new_empty(spatial_logits.shape), grad_relay)

    torch.library.register_autograd("sarl::relay_pool", _relay_pool_backward,
                                    setup_context=_relay_pool_setup_context)
    torch.library.register_autograd("sarl::relay_gate", _relay_gate_backward,
                                    setup_context=_relay_gate_setup_context)


# An extension built from older sources may lack these ops: then the references run.
_HAS_RELAY_OPS = _LOADED and all(
    hasattr(torch.ops.sarl, name) for name in ("relay_pool", "relay_pool_backward", "relay_gate",
                                               "relay_gate_backward"))
if _HAS_RELAY_OPS:
    _register_python_side()


def relay_pool(g: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both pooled descriptors of the relay feature in one pass over it.

    Args:
        g: [N, C, h, w] float32/float64/float16/bfloat16 (half types accumulate in float32).
    Returns:
        spatial: [N, 2, h, w] = (mean over C, max over C), the spatial-gate input;
        channel: [N, 2, C] = (average over h*w, max over h*w), the channel-MLP input.
        Max ties go to the first index; reductions over an empty dimension give 0.
    """
    check_pool_args(g)
    if _HAS_RELAY_OPS and use_extension("relay_pool", g):
        spatial, channel, _, _ = torch.ops.sarl.relay_pool(g)
        return spatial, channel
    return relay_pool_reference(g)


def relay_gate(x: torch.Tensor, channel_logits: torch.Tensor, spatial_logits: torch.Tensor,
               relay: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SARL gate and relay: ``x * (1 + sigmoid(c) * sigmoid(s)) + nearest_up(relay, (H, W))``.

    Args:
        x: [N, C, H, W] feature of this level.
        channel_logits: [N, C] channel-gate logits.
        spatial_logits: [N, 1, H, W] spatial-gate logits.
        relay: [N, C, h, w] relay from the coarser level (any h, w; nearest upsampling as
            ``F.interpolate(mode="nearest")``), or None for no relay term.
    Returns:
        [N, C, H, W], dtype of x, contiguous.
    """
    check_gate_args(x, channel_logits, spatial_logits, relay)
    if _HAS_RELAY_OPS and use_extension("relay_gate", x, channel_logits, spatial_logits, relay):
        return torch.ops.sarl.relay_gate(x, channel_logits, spatial_logits, relay)
    return relay_gate_reference(x, channel_logits, spatial_logits, relay)
