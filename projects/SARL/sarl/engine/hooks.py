"""Training hooks of the YOLO recipes: weight EMA, the no-augmentation phase, AutoAnchor.

- :class:`EMAHook` updates a :class:`~sarl.engine.ema.ModelEMA` after every iteration (YOLOX);
  :class:`OptimizerStepEMAHook` only after iterations that stepped the optimizer (YOLOv5, with accumulation).
- :class:`NoAugHook` switches mosaic/mixup off and the L1 loss on for the last ``NO_AUG_EPOCHS``
  epochs (YOLOX); its state is saved in the trainer's checkpoint and re-applied on ``--resume``.
- :class:`AutoAnchorHook` fits the anchors of a YOLOv5 head to the training boxes before a fresh training.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional

import torch.nn as nn
from detectron2.engine.train_loop import HookBase

from ..modeling.autoanchor import check_anchors
from .distributed import unwrap_model
from .ema import ModelEMA

logger = logging.getLogger(__name__)

__all__ = ["AutoAnchorHook", "EMAHook", "NoAugHook", "OptimizerStepEMAHook"]


class EMAHook(HookBase):
    """Update a :class:`ModelEMA` after every training step."""

    def __init__(self, ema: ModelEMA):
        self.ema = ema

    def after_step(self) -> None:
        self.ema.update(self.trainer.model)
        # Logged so the JSON/TensorBoard metrics show the ramp.
        self.trainer.storage.put_scalar("ema_decay", self.ema.decay(), smoothing_hint=False)


class OptimizerStepEMAHook(EMAHook):
    """:class:`EMAHook` that updates only after iterations that stepped the optimizer (yolov5 recipe: with
    accumulation the weights change once per ``accumulate`` iterations, and the EMA ramp counts updates).
    The step runner (``trainer._trainer``, a :class:`~sarl.engine.step.YOLOStepRunner`) tells it by ``stepped``."""

    def after_step(self) -> None:
        if getattr(self.trainer._trainer, "stepped", True):
            super().after_step()


class NoAugHook(HookBase):
    """Turn augmentation off and the L1 loss on from iteration ``start_iter`` on (YOLOX's last epochs).

    Switching is delegated to ``switch_fn()`` (the trainer's: it sets ``head.use_l1`` and replaces the training
    loader by one whose mapper has mosaic, mixup and the random affine off, continuing the same data stream).
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


class AutoAnchorHook(HookBase):
    """YOLOv5's AutoAnchor before a fresh training (``trainer.start_iter == 0``): when the head's anchors recall too
    few training boxes, refit them (``sarl.modeling.autoanchor.check_anchors``). The anchors are a buffer of the
    head, saved in checkpoints, so a resumed run keeps the fitted ones and is not refitted.

    Args:
        head: a module with an ``anchors`` buffer [num_levels, num_anchors, 2] (input pixels), e.g. ``YOLOv5Head``.
        dataset_dicts: the training records.
        img_size: the training input size (``INPUT.YOLO.IMG_SIZE``).
        generations: evolution generations after k-means (``MODEL.YOLOV5.AUTOANCHOR_GENERATIONS``).
        ema: the trainer's EMA, if any: at iteration 0 it is a copy of the model, so it gets the new anchors too.
    """

    def __init__(self, head: nn.Module, dataset_dicts: List[Dict[str, Any]], img_size: int, generations: int,
                 ema: Optional[ModelEMA] = None):
        self.head = head
        self.dataset_dicts = dataset_dicts
        self.img_size = int(img_size)
        self.generations = int(generations)
        self.ema = ema

    def before_train(self) -> None:
        if self.trainer.start_iter > 0:  # resumed: the checkpoint holds the anchors it trained with
            return
        result = check_anchors(self.head, self.dataset_dicts, self.img_size, gen=self.generations)
        logger.info(f"AutoAnchor: best possible recall {result['bpr_before']:.4f} -> {result['bpr_after']:.4f}")
        if result["replaced"] and self.ema is not None:
            self.ema.module.load_state_dict(unwrap_model(self.trainer.model).state_dict())
