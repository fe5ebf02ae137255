"""YOLOv5 v6.0+ release checkpoints (ultralytics/yolov5 v7.0 ``yolov5{n,s,m,l,x}.pt``, or the ``yolov5`` pip
package's): a pickled ``{"model": DetectionModel, "ema": ..., ...}``, read with
:mod:`~sarl.checkpoint_convert.restricted_pickle` (no YOLOv5 code is imported or run).

Layers of the official P5 model (yolov5s.yaml, v6.0+) -> this project's modules::

    0 Conv 6x6/2 -> <darknet>stem        10 Conv 1x1 -> <neck>lateral_conv0   18 Conv 3x3/2 -> <neck>bu_conv2
    1 Conv 3x3/2 -> <darknet>dark2.0     11 Upsample, 12 Concat [-1, 6]       19 Concat [-1, 14]
    2 C3         -> <darknet>dark2.1     13 C3 -> <neck>C3_p4                  20 C3 -> <neck>C3_n3
    3, 4 / 5, 6  -> dark3.0, .1 / dark4  14 Conv 1x1 -> <neck>reduce_conv1    21 Conv 3x3/2 -> <neck>bu_conv1
    7 Conv, 8 C3 -> dark5.0, dark5.1     15 Upsample, 16 Concat [-1, 4]       22 Concat [-1, 10]
    9 SPPF       -> dark5.2              17 C3 -> <neck>C3_p3                  23 C3 -> <neck>C3_n4
    24 Detect: m.{i} -> <head>predictors.{i}; anchors (strides) x stride -> <head>anchors (input pixels)

Inside a C3 (and its Bottlenecks) ``cv1/cv2/cv3`` are ``conv1/conv2/conv3`` here; Conv's ``conv/bn`` and SPPF's
``cv1/cv2`` keep their names. Input convention: RGB / 255 (``INPUT.FORMAT RGB``, ``MODEL.PIXEL_STD [255] * 3``).
"""
from __future__ import annotations

import pickle
import re
from typing import Dict, Iterator, List, Mapping, Optional

import torch
from torch import Tensor

from .common import OfficialCheckpoint, OfficialWeightsError, TargetLayout
from .restricted_pickle import (RESTRICTED_PICKLE, YOLOV5_CLASSES, StandIn, module_state_dict, pickled_globals,
                                yolov5_module)

__all__ = ["model_names", "read_yolov5_checkpoint", "refit_class_layers", "target_num_classes"]

EXPECTED_LAYERS = ["Conv", "Conv", "C3", "Conv", "C3", "Conv", "C3", "Conv", "C3", "SPPF",
                   "Conv", "Upsample", "Concat", "C3", "Conv", "Upsample", "Concat", "C3",
                   "Conv", "Concat", "C3", "Conv", "Concat", "C3", "Detect"]
EXPECTED_CONCAT_INPUTS = {12: [-1, 6], 16: [-1, 4], 19: [-1, 14], 22: [-1, 10]}
_DARKNET = {0: "stem", 1: "dark2.0", 2: "dark2.1", 3: "dark3.0", 4: "dark3.1", 5: "dark4.0", 6: "dark4.1",
            7: "dark5.0", 8: "dark5.1", 9: "dark5.2"}
_NECK = {10: "lateral_conv0", 13: "C3_p4", 14: "reduce_conv1", 17: "C3_p3", 18: "bu_conv2", 20: "C3_n3",
         21: "bu_conv1", 23: "C3_n4"}
_C3_LAYERS = {2, 4, 6, 8, 13, 17, 20, 23}
_DETECT = 24
# sarl.modeling.layers.BN_EPS: the official models set every BatchNorm's eps to it (initialize_weights).
_PROJECT_BN_EPS = 1e-3
_BOX_AND_OBJECTNESS = 5  # (x, y, w, h, obj) lead each anchor's outputs, the classes follow


def read_yolov5_checkpoint(path: str) -> Optional[OfficialCheckpoint]:
    """The YOLOv5 model pickled in ``path`` (its EMA when the file keeps one, as YOLOv5's own loader picks), or None
    when the file's pickle names no YOLOv5 class (read from its opcodes before anything is unpickled)."""
    if not any(name in YOLOV5_CLASSES.get(yolov5_module(module), ()) for module, name in pickled_globals(path)):
        return None
    try:
        loaded = torch.load(path, map_location="cpu", pickle_module=RESTRICTED_PICKLE, weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise OfficialWeightsError(f"MODEL.WEIGHTS {path}: YOLOv5 checkpoint not read: {e}") from None
    notes = []
    model = loaded
    if isinstance(loaded, dict):
        model = loaded.get("ema") or loaded.get("model")
        notes.append("EMA weights" if loaded.get("ema") is not None else "model weights")
    if not isinstance(model, StandIn) or model.official_class not in ("models.yolo.DetectionModel",
                                                                      "models.yolo.Model"):
        raise OfficialWeightsError(f"MODEL.WEIGHTS {path}: a YOLOv5 file without a detection model under 'model' "
                                   "(classification and segmentation models do not load)")
    layers = list(model.__dict__["_modules"]["model"].__dict__["_modules"].values())
    _check_layout(layers, path)
    detect = layers[_DETECT].__dict__
    state = module_state_dict(model)
    anchors_key = f"model.{_DETECT}.anchors"
    # Detect keeps its anchors in strides of their level (DetectionModel divides them at build).
    strides = torch.as_tensor(detect.get("stride"), dtype=torch.float32).view(-1, 1, 1)
    state[anchors_key] = state[anchors_key].float() * strides
    names = model.__dict__.get("names") or []
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    return OfficialCheckpoint("YOLOv5", path, state, int(detect["nc"]), [str(n) for n in names], notes)


def _check_layout(layers: List[StandIn], path: str) -> None:
    kinds = [layer.official_class.rsplit(".", 1)[-1] for layer in layers]
    concat_inputs = {i: layers[i].__dict__.get("f") for i in EXPECTED_CONCAT_INPUTS if i < len(layers)}
    if kinds != EXPECTED_LAYERS or concat_inputs != EXPECTED_CONCAT_INPUTS:
        raise OfficialWeightsError(f"MODEL.WEIGHTS {path}: YOLOv5 layers {kinds} are not the v6.0+ P5 layout "
                                   "(yolov5n/s/m/l/x.yaml) this project builds")
    eps = {float(m.__dict__["eps"]) for m in _walk(layers) if m.official_class.endswith("BatchNorm2d")}
    if eps != {_PROJECT_BN_EPS}:
        raise OfficialWeightsError(f"MODEL.WEIGHTS {path}: BatchNorm eps {sorted(eps)} differs from this project's "
                                   f"{_PROJECT_BN_EPS} (the official models use {_PROJECT_BN_EPS})")


def _walk(modules: List[StandIn]) -> Iterator[StandIn]:
    for module in modules:
        yield module
        yield from _walk(list((module.__dict__.get("_modules") or {}).values()))


def model_names(official: OfficialCheckpoint, layout: TargetLayout) -> Dict[str, Tensor]:
    """The official state under this project's names (see the module docstring)."""
    renamed = {}
    for name, value in official.state.items():
        match = re.fullmatch(r"model\.(\d+)\.(.+)", name)
        index, rest = (int(match.group(1)), match.group(2)) if match else (-1, name)
        if index in _C3_LAYERS:
            rest = re.sub(r"(^|\.)cv([123])\.", r"\1conv\2.", rest)
        if index in _DARKNET:
            name = f"{layout.darknet}{_DARKNET[index]}.{rest}"
        elif index in _NECK:
            name = f"{layout.neck}{_NECK[index]}.{rest}"
        elif index == _DETECT and rest == "anchors":
            name = f"{layout.head}anchors"
        elif index == _DETECT and rest.startswith("m."):
            name = f"{layout.head}predictors.{rest[2:]}"
        renamed[name] = value
    return renamed


def target_num_classes(target_state: Mapping[str, Tensor], layout: TargetLayout) -> int:
    num_anchors = int(target_state[f"{layout.head}anchors"].shape[1])
    return int(target_state[f"{layout.head}predictors.0.weight"].shape[0]) // num_anchors - _BOX_AND_OBJECTNESS


def refit_class_layers(renamed: Dict[str, Tensor], target_state: Mapping[str, Tensor],
                       layout: TargetLayout) -> List[str]:
    """Class outputs of the prediction convs re-initialised (the model's own rows), box and objectness rows kept
    from the checkpoint: YOLOv5 predicts both with one 1x1 conv per level, ``na * (5 + nc)`` outputs."""
    num_anchors = int(target_state[f"{layout.head}anchors"].shape[1])
    refitted = []
    level = 0
    while f"{layout.head}predictors.{level}.weight" in target_state:
        for suffix in ("weight", "bias"):
            name = f"{layout.head}predictors.{level}.{suffix}"
            target, official = target_state[name], renamed.get(name)
            if official is None or official.shape[1:] != target.shape[1:] or official.shape[0] % num_anchors:
                continue  # left for the caller's shape report
            merged = target.detach().clone().view(num_anchors, -1, *target.shape[1:])
            merged[:, :_BOX_AND_OBJECTNESS] = official.view(num_anchors, -1, *target.shape[1:])[:, :_BOX_AND_OBJECTNESS]
            renamed[name] = merged.view(target.shape)
        refitted.append(f"{layout.head}predictors.{level} (class rows)")
        level += 1
    return refitted
