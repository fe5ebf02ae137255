"""One training iteration: ``SimpleTrainer.run_step`` with AMP, gradient clipping and gradient accumulation."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import get_event_storage

__all__ = ["YOLOStepRunner", "build_clip_fn"]


class YOLOStepRunner(SimpleTrainer):
    """``SimpleTrainer.run_step`` with AMP (CUDA only), gradient clipping applied to *unscaled* gradients
    (detectron2's optimizer-wrapping clip would clip the loss-scaled gradients under AMP) and, optionally,
    YOLOv5's gradient accumulation.

    Args:
        amp: float16 autocast + ``GradScaler``.
        clip_fn: clips the parameters' gradients (returns the norm to log, or None), just before a step.
        accumulate_fn: ``None`` (default): zero the gradients, backward, step, every iteration. Otherwise
            ``accumulate_fn(iteration)`` is the number of iterations per step in force at that iteration:
            gradients are summed over iterations (backward each one) and the optimizer steps, then zeroes them,
            when ``iteration - last_opt_step >= accumulate_fn(iteration)``.
        loss_scale: the loss is multiplied by it before ``backward`` (the yolov5 recipe passes the number of
            processes, so DDP's gradient average becomes a sum); not applied to the logged losses.

    ``stepped`` tells whether the last ``run_step`` stepped the optimizer (the EMA hook of the yolov5 recipe
    reads it). With accumulation the checkpoint state also holds ``last_opt_step`` and the gradients summed
    since (``pending_grads``), so a run resumed between two steps continues the same sums.
    """

    def __init__(self, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer, *, amp: bool = False,
                 clip_fn: Optional[Callable[[List[nn.Parameter]], Any]] = None,
                 accumulate_fn: Optional[Callable[[int], int]] = None, loss_scale: float = 1.0):
        super().__init__(model, data_loader, optimizer)
        self.amp = amp
        self.clip_fn = clip_fn
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=amp)
        self.accumulate_fn = accumulate_fn
        self.loss_scale = float(loss_scale)
        self.last_opt_step = -1  # iteration of the last optimizer step (-1: none yet, so iteration 0 can step)
        self.stepped = False

    def _params(self) -> List[nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def run_step(self) -> None:
        assert self.model.training, "[YOLOStepRunner] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
            loss_dict = self.model(data)
            losses = sum(loss_dict.values())
        accumulating = self.accumulate_fn is not None
        if not accumulating:
            self.optimizer.zero_grad(set_to_none=True)
        if self.loss_scale != 1.0:
            losses = losses * self.loss_scale
        self.grad_scaler.scale(losses).backward()
        step_now = not accumulating or self.iter - self.last_opt_step >= self.accumulate_fn(self.iter)
        if step_now and self.clip_fn is not None:
            self.grad_scaler.unscale_(self.optimizer)
            params = [p for p in self._params() if p.grad is not None]
            norm = self.clip_fn(params)
            if norm is not None:
                get_event_storage().put_scalar("grad_norm", float(norm))
        self._write_metrics(loss_dict, data_time)
        if step_now:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
            if accumulating:
                # Zeroed after the step (not before the backward): the next iterations sum into fresh gradients.
                self.optimizer.zero_grad(set_to_none=True)
            self.last_opt_step = self.iter
        self.stepped = step_now

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["grad_scaler"] = self.grad_scaler.state_dict()
        if self.accumulate_fn is not None:
            state["last_opt_step"] = self.last_opt_step
            # Gradients summed since the last step (None after a step: zero_grad sets them to None). Saved in the
            # optimizer's parameter order; identical on every process (all-reduced), so rank 0's copy serves all.
            grads = [None if p.grad is None else p.grad.detach() for p in self._params()]
            state["pending_grads"] = grads if any(g is not None for g in grads) else None
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "grad_scaler" in state and self.amp:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        if self.accumulate_fn is None:
            return
        # A checkpoint without accumulation state (another recipe) is taken as "stepped at its iteration".
        self.last_opt_step = int(state.get("last_opt_step", self.iter))
        params = self._params()
        pending = state.get("pending_grads")
        if pending is not None and len(pending) != len(params):
            raise ValueError(f"checkpoint has accumulated gradients of {len(pending)} parameters, the optimizer "
                             f"{len(params)}")
        for p, g in zip(params, pending or [None] * len(params)):
            p.grad = None if g is None else g.to(device=p.device, dtype=p.dtype).clone()


def build_clip_fn(cfg) -> Optional[Callable[[List[nn.Parameter]], Any]]:
    """The ``clip_fn`` of :class:`YOLOStepRunner` for ``cfg.SOLVER.CLIP_GRADIENTS`` (None when disabled)."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return None
    if clip.CLIP_VALUE <= 0:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be > 0, got {clip.CLIP_VALUE}")
    if clip.CLIP_TYPE == "value":
        return lambda params: torch.nn.utils.clip_grad_value_(params, clip.CLIP_VALUE)
    if clip.CLIP_TYPE in ("norm", "full_model"):
        return lambda params: torch.nn.utils.clip_grad_norm_(params, clip.CLIP_VALUE, clip.NORM_TYPE)
    raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be 'value', 'norm' or 'full_model', got {clip.CLIP_TYPE!r}")
