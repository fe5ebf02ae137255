"""Exponential moving average of the model weights (YOLOX's ramped EMA).

The averaged copy is the model that is evaluated and exported; its state (weights and update count) is a
checkpointable, saved as ``checkpoint["ema"]``. :class:`~sarl.engine.hooks.EMAHook` updates it during training.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from .distributed import unwrap_model

__all__ = ["ModelEMA"]


class ModelEMA:
    """Exponential moving average of a model's state (parameters and floating-point buffers).

    ``ema = d * ema + (1 - d) * model`` after each update, with ``d = decay * (1 - exp(-updates / ramp))``.
    Integer buffers (BN's ``num_batches_tracked``) are copied. The averaged model ``self.module`` is a
    deep copy kept in eval mode, without gradients, on the same device as the model.

    Args:
        model: the model being trained (a DDP wrapper is unwrapped).
        decay: the asymptotic decay (YOLOX: 0.9998).
        ramp: the ramp constant in updates (YOLOX: 2000).
        updates: the number of updates already done (when resuming).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, ramp: float = 2000.0, updates: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"SOLVER.EMA.DECAY must be in [0, 1), got {decay}")
        if not ramp > 0:
            raise ValueError(f"SOLVER.EMA.RAMP must be > 0, got {ramp}")
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay_base = float(decay)
        self.ramp = float(ramp)
        self.updates = int(updates)

    def decay(self, updates: Optional[int] = None) -> float:
        """The decay used for update number ``updates`` (default: the current count)."""
        n = self.updates if updates is None else updates
        return self.decay_base * (1.0 - math.exp(-n / self.ramp))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` into the average (call after the optimizer step)."""
        self.updates += 1
        d = self.decay()
        model_state = unwrap_model(model).state_dict()
        averaged, current = [], []
        for name, ema_value in self.module.state_dict().items():
            value = model_state[name].detach()
            if ema_value.dtype.is_floating_point:
                averaged.append(ema_value)
                current.append(value.to(ema_value.dtype))
            else:
                ema_value.copy_(value)
        if averaged:
            # One multi-tensor kernel per operation instead of two small ops per tensor; the same arithmetic
            # (ema * d, then + value * (1 - d)) as the per-tensor form, bit for bit.
            torch._foreach_mul_(averaged, d)
            torch._foreach_add_(averaged, current, alpha=1.0 - d)

    # -- checkpointable interface (detectron2 Checkpointer) --
    def state_dict(self) -> Dict[str, Any]:
        return {"updates": self.updates, "decay": self.decay_base, "ramp": self.ramp,
                "state": self.module.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        missing = {"updates", "state"} - set(state)
        if missing:
            raise KeyError(f"EMA checkpoint state lacks {sorted(missing)}")
        self.module.load_state_dict(state["state"])
        self.updates = int(state["updates"])
