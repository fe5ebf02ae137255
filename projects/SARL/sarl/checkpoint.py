"""Checkpoints of :class:`~sarl.engine.YOLOTrainer` (used by the trainer and by prediction): the EMA weights are the
ones loaded for inference."""
from __future__ import annotations

from typing import Any, Dict

import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["YOLOCheckpointer", "load_inference_weights"]


class YOLOCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that, when loading weights only (not resuming), takes the EMA weights of a
    checkpoint written by :class:`~sarl.engine.YOLOTrainer` as the model weights: they are the weights that were
    evaluated. Resuming (``load(path, checkpointables=[...])`` through ``resume_or_load(resume=True)``) loads both
    the raw and the EMA weights unchanged."""

    def __init__(self, *args, prefer_ema: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.prefer_ema = prefer_ema
        self._weights_only = False

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        self._weights_only = not (resume and self.has_checkpoint())
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._weights_only = False

    def _load_file(self, filename: str) -> Dict[str, Any]:
        loaded = super()._load_file(filename)
        if self._weights_only and self.prefer_ema and isinstance(loaded.get("ema"), dict) and "state" in loaded["ema"]:
            self.logger.info(f"Using the EMA weights of {filename} (after {loaded['ema'].get('updates')} updates)")
            loaded["model"] = loaded["ema"]["state"]
        return loaded


def load_inference_weights(model: nn.Module, path: str, prefer_ema: bool = True) -> Dict[str, Any]:
    """Load ``path`` into ``model`` for inference (EMA weights when the checkpoint has them)."""
    checkpointer = YOLOCheckpointer(model, prefer_ema=prefer_ema)
    return checkpointer.resume_or_load(path, resume=False)
