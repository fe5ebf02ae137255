"""Pure-PyTorch references of the SARL relay ops (the specification of the fused kernels in
``csrc/relay/``, and their fallback when ``sarl._C`` is not built).

Conventions shared with the kernels (``csrc/relay/relay_math.h``), so that values and
gradients compare exactly:

- max ties: the first index wins (smallest channel for the max over C, smallest flattened
  ``y * w + x`` for the max over HW), as ``torch.max(dim)`` does on CPU, and the whole max
  gradient goes to that element (``torch.max(dim)``'s backward);
- NaN wins a max (it propagates); reductions over an empty dimension (C == 0 or h * w == 0)
  give 0, never the NaN of 0 / 0;
- float16/bfloat16 are computed in float32 and rounded once at the end (the kernels
  accumulate in float32);
- nearest upsampling is ``F.interpolate(relay, size=(H, W), mode="nearest")``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["relay_pool_reference", "relay_gate_reference", "check_pool_args", "check_gate_args"]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_float(t: torch.Tensor, op: str, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, float64, float16 or bfloat16, got {t.dtype}")


def _check_same(t: torch.Tensor, ref: torch.Tensor, op: str, name: str, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device} "
                         "(all inputs must be on one device)")
    if t.dtype != ref.dtype:
        raise TypeError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype} "
                        "(all inputs must share one dtype)")


def check_pool_args(g: torch.Tensor) -> None:
    """Raise a clear error when ``g`` is not a floating 4-D [N, C, h, w] tensor."""
    _check_float(g, "relay_pool", "g")
    if g.dim() != 4:
        raise ValueError(f"relay_pool: g must be 4-D [N, C, h, w], got shape {tuple(g.shape)}")


def check_gate_args(x: torch.Tensor, channel_logits: torch.Tensor, spatial_logits: torch.Tensor,
                    relay: Optional[torch.Tensor]) -> None:
    """Raise a clear error (naming the argument) on a shape, dtype or device mismatch."""
    op = "relay_gate"
    _check_float(x, op, "x")
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    n, c, h_out, w_out = x.shape
    _check_float(channel_logits, op, "channel_logits")
    _check_same(channel_logits, x, op, "channel_logits", "x")
    if tuple(channel_logits.shape) != (n, c):
        raise ValueError(f"{op}: channel_logits must have shape [N, C] = [{n}, {c}] (from x), "
                         f"got {tuple(channel_logits.shape)}")
    _check_float(spatial_logits, op, "spatial_logits")
    _check_same(spatial_logits, x, op, "spatial_logits", "x")
    if tuple(spatial_logits.shape) != (n, 1, h_out, w_out):
        raise ValueError(f"{op}: spatial_logits must have shape [N, 1, H, W] = [{n}, 1, {h_out}, {w_out}] "
                         f"(from x), got {tuple(spatial_logits.shape)}")
    if relay is not None:
        _check_float(relay, op, "relay")
        _check_same(relay, x, op, "relay", "x")
        if relay.dim() != 4 or tuple(relay.shape[:2]) != (n, c):
            raise ValueError(f"{op}: relay must have shape [N, C, h, w] = [{n}, {c}, h, w] (from x), "
                             f"got {tuple(relay.shape)}")
        if h_out * w_out > 0 and relay.shape[2] * relay.shape[3] == 0:
            raise ValueError(f"{op}: relay has an empty spatial size {relay.shape[2]}x{relay.shape[3]} "
                             f"but x has {h_out}x{w_out}: nothing to upsample from")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def relay_pool_reference(g: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pooled descriptors of the relay feature ``g``.

    Args:
        g: [N, C, h, w] float tensor.
    Returns:
        spatial: [N, 2, h, w] = (mean over C, max over C);
        channel: [N, 2, C] = (average over h*w, max over h*w).
    """
    check_pool_args(g)
    n, c, h, w = g.shape
    gc = g.to(_compute_dtype(g.dtype))
    if c == 0 or h * w == 0:
        # Reductions over an empty dimension are defined as 0 (torch.max would raise).
        spatial = gc.new_zeros((n, 2, h, w)) + gc.sum() * 0
        channel = gc.new_zeros((n, 2, c)) + gc.sum() * 0
        return spatial.to(g.dtype), channel.to(g.dtype)
    # torch.max(dim) picks the first maximal index and routes its gradient there only.
    spatial = torch.cat([gc.mean(dim=1, keepdim=True), gc.max(dim=1, keepdim=True).values], dim=1)
    channel = torch.stack([gc.mean(dim=(2, 3)), gc.flatten(2).max(dim=2).values], dim=1)
    return spatial.to(g.dtype), channel.to(g.dtype)


def relay_gate_reference(x: torch.Tensor, channel_logits: torch.Tensor, spatial_logits: torch.Tensor,
                         relay: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x * (1 + sigmoid(channel_logits) * sigmoid(spatial_logits)) + nearest_up(relay, (H, W))``.

    Args:
        x: [N, C, H, W] feature to reweight.
        channel_logits: [N, C] channel-gate logits.
        spatial_logits: [N, 1, H, W] spatial-gate logits.
        relay: [N, C, h, w] relay feature, upsampled (nearest) to (H, W) and added; or None.
    Returns:
        [N, C, H, W], dtype of x.
    """
    check_gate_args(x, channel_logits, spatial_logits, relay)
    dtype = _compute_dtype(x.dtype)
    xc = x.to(dtype)
    gate = 1 + torch.sigmoid(channel_logits.to(dtype))[:, :, None, None] * torch.sigmoid(spatial_logits.to(dtype))
    out = xc * gate
    if relay is not None:
        if out.numel() == 0:
            # F.interpolate rejects empty sizes; the relay then contributes (and receives) nothing.
            out = out + relay.to(dtype).sum() * 0
        else:
            out = out + F.interpolate(relay.to(dtype), size=tuple(x.shape[-2:]), mode="nearest")
    return out.to(x.dtype)
