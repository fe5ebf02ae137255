"""Training hooks of the YOLO schedule: weight EMA, the no-augmentation phase, gradient clipping.

- :class:`ModelEMA` keeps an exponential moving average of a model's parameters and buffers,
  with YOLOX's ramp ``decay * (1 - exp(-updates / ramp))`` so that early (noisy) weights fade fast.
  The averaged copy is the model that is evaluated and exported; its state (weights and update
  count) is a checkpointable, saved as ``checkpoint["ema"]``.
- :class:`EMAHook` updates the EMA after every optimizer step.
- :class:`NoAugHook` switches mosaic/mixup off and the L1 loss on for the last ``NO_AUG_EPOCHS``
  epochs (YOLOX); its state is saved in the trainer's checkpoint and re-applied on ``--resume``.
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn
from detectron2.engine.train_loop import HookBase

logger = logging.getLogger(__name__)

__all__ = ["ModelEMA", "EMAHook", "NoAugHook", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


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
        for name, ema_value in self.module.state_dict().items():
            value = model_state[name].detach()
            if ema_value.dtype.is_floating_point:
                ema_value.mul_(d).add_(value.to(ema_value.dtype), alpha=1.0 - d)
            else:
                ema_value.copy_(value)

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


class EMAHook(HookBase):
    """Update a :class:`ModelEMA` after every training step."""

    def __init__(self, ema: ModelEMA):
        self.ema = ema

    def after_step(self) -> None:
        self.ema.update(self.trainer.model)
        # Logged so the JSON/TensorBoard metrics show the ramp.
        self.trainer.storage.put_scalar("ema_decay", self.ema.decay(), smoothing_hint=False)


class NoAugHook(HookBase):
    """Turn augmentation off and the L1 loss on from iteration ``start_iter`` on (YOLOX's last epochs).

    Switching is delegated to ``switch_fn()`` (the trainer's: it disables mosaic/mixup in the mapper,
    rebuilds the training loader so DataLoader workers see the change, and sets ``head.use_l1``).
    The state ``{"active": bool}`` goes into the trainer's checkpoint; a resumed run whose checkpoint
    has it active switches again before its first step, so the phase survives restarts.

    Args:
        start_iter: first iteration of the no-aug phase (``max_iter`` or more: never switches).
        switch_fn: callable doing the switch; called exactly once per process.
    """

    def __init__(self, start_iter: int, switch_fn: Callable[[], None]):
        self.start_iter = int(start_iter)
        self._switch_fn = switch_fn
        self.active = False  # the phase has begun (saved in checkpoints)
        self._applied = False  # the switch has been done in this process

    def _apply(self) -> None:
        if not self._applied:
            logger.info(f"No-aug phase from iteration {self.start_iter}: mosaic/mixup off, L1 loss on")
            self._switch_fn()
            self._applied = True
        self.active = True

    def before_train(self) -> None:
        # Resumed from a checkpoint saved in (or at the threshold of) the no-aug phase.
        if self.active or self.trainer.start_iter >= self.start_iter:
            self._apply()

    def before_step(self) -> None:
        if not self._applied and self.trainer.iter >= self.start_iter:
            self._apply()

    def state_dict(self) -> Dict[str, Any]:
        return {"active": self.active}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.active = bool(state.get("active", False))
