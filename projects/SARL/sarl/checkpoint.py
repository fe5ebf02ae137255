"""Checkpoints of :class:`~sarl.engine.YOLOTrainer` (used by the trainer and by prediction): the EMA weights are the
ones loaded for inference, and the class names of the training set travel with them (``checkpoint["class_names"]``),
so prediction labels boxes with the names the model learned, whatever config it is run with."""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence

import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer

from .checkpoint_convert import as_official_checkpoint, fit_to_model, read_yolov5_checkpoint

__all__ = ["YOLOCheckpointer", "checkpoint_class_names", "load_inference_weights", "training_class_names"]

logger = logging.getLogger(__name__)


class YOLOCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that, when loading weights only (not resuming), takes the EMA weights of a
    checkpoint written by :class:`~sarl.engine.YOLOTrainer` as the model weights: they are the weights that were
    evaluated. Resuming (``load(path, checkpointables=[...])`` through ``resume_or_load(resume=True)``) loads both
    the raw and the EMA weights unchanged. Official YOLOX and YOLOv5 COCO checkpoints load too, converted on the
    fly (:mod:`sarl.checkpoint_convert`)."""

    def __init__(self, *args, prefer_ema: bool = True, class_names: Sequence[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.prefer_ema = prefer_ema
        self.class_names = list(class_names)  # written into every checkpoint this saves
        self._weights_only = False

    def save(self, name: str, **kwargs: Any) -> None:
        from .modeling.fuse import is_conv_bn_fused

        if is_conv_bn_fused(self.model):
            # Its state dict has no BatchNorm keys: loaded into a detector, the BatchNorms would keep their initial
            # statistics and the folded biases would be dropped, with only a warning from the loader.
            raise ValueError("cannot save a model whose BatchNorm is folded into its convolutions (an inference "
                             "model built with TEST.FUSE_CONV_BN True); build it with TEST.FUSE_CONV_BN False")
        if self.class_names:
            kwargs.setdefault("class_names", list(self.class_names))
        super().save(name, **kwargs)

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        self._weights_only = not (resume and self.has_checkpoint())
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._weights_only = False

    def _load_file(self, filename: str) -> Dict[str, Any]:
        # Official YOLOX / YOLOv5 release files are recognised by content (a YOLOv5 file pickles a whole model: it is
        # read through an allow-list unpickler that runs none of its code) and renamed to this model's modules.
        loaded = read_yolov5_checkpoint(filename) or super()._load_file(filename)
        official = as_official_checkpoint(loaded, filename)
        if official is not None:
            return fit_to_model(official, self.model.state_dict(), self.logger)
        if self._weights_only and self.prefer_ema and isinstance(loaded.get("ema"), dict) and "state" in loaded["ema"]:
            self.logger.info(f"Using the EMA weights of {filename} (after {loaded['ema'].get('updates')} updates)")
            loaded["model"] = loaded["ema"]["state"]
        return loaded


def load_inference_weights(model: nn.Module, path: str, prefer_ema: bool = True) -> Dict[str, Any]:
    """Load ``path`` into ``model`` for inference (EMA weights when the checkpoint has them)."""
    checkpointer = YOLOCheckpointer(model, prefer_ema=prefer_ema)
    return checkpointer.resume_or_load(path, resume=False)


def checkpoint_class_names(checkpoint: Dict[str, Any]) -> List[str]:
    """The class names a checkpoint dict (as ``load_inference_weights`` returns it) stores; [] when it has none
    (written before names were saved, or not by :class:`YOLOCheckpointer`)."""
    names = checkpoint.get("class_names")
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return []


def training_class_names(cfg) -> List[str]:
    """Class names of the training sets (``DATASETS.TRAIN``, their metadata's ``thing_classes``) for the checkpoint;
    [] when they have none or disagree with ``MODEL.YOLO.NUM_CLASSES`` (names that do not fit would mislabel)."""
    from detectron2.data import MetadataCatalog

    found = [(n, list(MetadataCatalog.get(n).get("thing_classes", []) or [])) for n in cfg.DATASETS.TRAIN]
    named = [(n, names) for n, names in found if names]
    if not named:
        return []
    first_set, names = named[0]
    for other_set, other in named[1:]:
        if other != names:
            logger.warning(f"Training sets name their classes differently ({first_set}: {names}, {other_set}: "
                           f"{other}): the checkpoint stores {first_set}'s")
    if len(names) != cfg.MODEL.YOLO.NUM_CLASSES:
        logger.warning(f"{first_set} has {len(names)} class names but MODEL.YOLO.NUM_CLASSES is "
                       f"{cfg.MODEL.YOLO.NUM_CLASSES}: the checkpoint stores no class names")
        return []
    return names
