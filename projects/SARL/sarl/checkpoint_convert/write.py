"""A converted checkpoint file for reuse (``tools/convert_weights.py``): the official weights under this project's
names, fitted to one model (its class count, its SARL relay), loadable by any checkpointer without conversion."""
from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Dict, Mapping

import torch
from torch import Tensor

from .common import OfficialWeightsError
from .matching import fit_to_model
from .yolov5 import read_yolov5_checkpoint
from .yolox import yolox_checkpoint

__all__ = ["convert_checkpoint_file"]

logger = logging.getLogger(__name__)


def convert_checkpoint_file(source: str, target_state: Mapping[str, Tensor], destination: str) -> Dict[str, Any]:
    """Convert the official checkpoint ``source`` for the model whose ``state_dict()`` is ``target_state`` and
    ``torch.save`` it to ``destination`` as ``{"model": state, "__author__": ..., "class_names"?: [...]}``.

    Returns the saved dict. Raises :class:`OfficialWeightsError` when ``source`` is missing, unreadable, not an
    official YOLOX/YOLOv5 checkpoint, or does not fit the model.
    """
    if not os.path.isfile(source):
        raise OfficialWeightsError(f"--weights: {source} does not exist")
    official = read_yolov5_checkpoint(source)
    if official is None:
        try:
            loaded = torch.load(source, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OfficialWeightsError(f"--weights: {source} is not a readable torch checkpoint ({first})") from None
        official = yolox_checkpoint(loaded, source)
    if official is None:
        raise OfficialWeightsError(f"--weights: {source} is neither an official YOLOX nor an official YOLOv5 "
                                   "checkpoint: nothing to convert (this project's own checkpoints load as they are)")
    checkpoint = fit_to_model(official, target_state, logger)
    os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    torch.save(checkpoint, destination)
    return checkpoint
