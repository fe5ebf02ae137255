"""YOLOX release checkpoints (Megvii-BaseDetection/YOLOX, nano to x): ``{"model": state_dict, ...}``.

Official names -> this project's (the module names below each prefix are the same, so the renaming is a prefix
swap; :class:`~sarl.checkpoint_convert.common.TargetLayout` finds the prefixes)::

    backbone.backbone.{stem,dark2..dark5}.*   ->  <darknet>{stem,dark2..dark5}.*     CSPDarknet (Focus stem, SPP)
    backbone.{lateral_conv0,C3_p4,...}.*      ->  <neck>{lateral_conv0,C3_p4,...}.*   YOLOPAFPN
    head.{stems,cls_convs,reg_convs,cls_preds,reg_preds,obj_preds}.*  ->  <head>...   YOLOXHead

Input convention: the release weights (YOLOX >= 0.1.1) take BGR pixels 0..255 without normalisation
(``INPUT.FORMAT BGR``, ``MODEL.PIXEL_MEAN [0, 0, 0]``, ``MODEL.PIXEL_STD [1, 1, 1]``, as configs/Base-YOLOX.yaml);
the legacy 0.1.0 weights take RGB / 255 normalised with the ImageNet mean/std (``INPUT.FORMAT RGB``,
``MODEL.PIXEL_MEAN [123.675, 116.28, 103.53]``, ``MODEL.PIXEL_STD [58.395, 57.12, 57.375]``). The files hold
the same names either way, so the config, not the file, decides.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import Tensor

from .common import OfficialCheckpoint, TargetLayout

__all__ = ["model_names", "refit_class_layers", "target_num_classes", "yolox_checkpoint"]

_STEM_KEY = "backbone.backbone.stem.conv.conv.weight"
_CLASS_KEY = "head.cls_preds.0.weight"
_PREFIXES = (("backbone.backbone.", "darknet"), ("backbone.", "neck"), ("head.", "head"))


def yolox_checkpoint(loaded: Any, path: str) -> Optional[OfficialCheckpoint]:
    """The YOLOX weights in a loaded checkpoint dict, recognised by their names; None for anything else."""
    state = loaded.get("model") if isinstance(loaded, dict) else None
    if not isinstance(state, Mapping):
        return None
    if state and all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    if _STEM_KEY not in state or _CLASS_KEY not in state:
        return None
    tensors = {k: torch.as_tensor(v) for k, v in state.items()}
    return OfficialCheckpoint("YOLOX", path, tensors, int(tensors[_CLASS_KEY].shape[0]))


def model_names(official: OfficialCheckpoint, layout: TargetLayout) -> Dict[str, Tensor]:
    """The official state under this project's names (names outside the three parts are kept, and reported as
    unexpected by the caller)."""
    renamed = {}
    for name, value in official.state.items():
        for prefix, part in _PREFIXES:
            if name.startswith(prefix):
                name = getattr(layout, part) + name[len(prefix):]
                break
        renamed[name] = value
    return renamed


def target_num_classes(target_state: Mapping[str, Tensor], layout: TargetLayout) -> int:
    return int(target_state[f"{layout.head}cls_preds.0.weight"].shape[0])


def refit_class_layers(renamed: Dict[str, Tensor], target_state: Mapping[str, Tensor],
                       layout: TargetLayout) -> List[str]:
    """Replace the class predictions (``cls_preds``, one 1x1 conv per level) by the model's own freshly
    initialised ones; returns their names. Everything else, the class branch's 3x3 convs included, stays."""
    refitted = []
    level = 0
    while f"{layout.head}cls_preds.{level}.weight" in target_state:
        for suffix in ("weight", "bias"):
            name = f"{layout.head}cls_preds.{level}.{suffix}"
            if name in renamed and renamed[name].shape[1:] == target_state[name].shape[1:]:
                renamed[name] = target_state[name]
        refitted.append(f"{layout.head}cls_preds.{level}")
        level += 1
    return refitted
