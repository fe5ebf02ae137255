"""Fit an official checkpoint to the model being loaded: rename, re-initialise the class layers when the class
count differs, leave the SARL relay (which no official model has) as initialised, and refuse anything else that
does not match, naming it."""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping

from torch import Tensor

from . import yolov5, yolox
from .common import OfficialCheckpoint, OfficialWeightsError, TargetLayout

__all__ = ["fit_to_model"]

SOURCES = {"YOLOX": yolox, "YOLOv5": yolov5}
_SHOWN = 8  # names listed per kind of mismatch (the count says how many there are)


def fit_to_model(official: OfficialCheckpoint, target_state: Mapping[str, Tensor],
                 logger: logging.Logger) -> Dict[str, Any]:
    """The checkpoint dict detectron2's checkpointer loads: ``{"model": state}`` with exactly ``target_state``'s
    names, shapes and dtypes, plus ``"class_names"`` when the file names as many classes as the model has.

    Logs one line for the file, one when the class layers are re-initialised (class count differs) and one when
    the SARL relay keeps its initialisation. Raises :class:`OfficialWeightsError` listing the missing,
    unexpected and mis-shaped names of any other mismatch.
    """
    source = SOURCES[official.source]
    layout = TargetLayout.of(target_state)
    if layout.head_kind != official.source:
        raise OfficialWeightsError(f"MODEL.WEIGHTS {official.path} is an official {official.source} checkpoint but "
                                   f"the config builds a {layout.head_kind} model: use a configs/coco/"
                                   f"{official.source.lower()}* config")
    renamed = source.model_names(official, layout)
    how = f" ({', '.join(official.notes)})" if official.notes else ""
    logger.info(f"{official.path}: official {official.source} checkpoint{how}, {len(renamed)} tensors mapped to "
                "this project's names")

    model_classes = source.target_num_classes(target_state, layout)
    if model_classes != official.num_classes:
        refitted = source.refit_class_layers(renamed, target_state, layout)
        logger.info(f"Class count: the checkpoint has {official.num_classes} classes, the model "
                    f"{model_classes} (MODEL.YOLO.NUM_CLASSES): re-initialised {', '.join(refitted)}; every other "
                    "layer loaded")

    relay = [k for k in target_state if layout.wrapper and k.startswith(layout.wrapper)
             and not k.startswith(layout.darknet) and k not in renamed]
    if relay:
        renamed.update({k: target_state[k] for k in relay})
        logger.info(f"SARL relay: {len(relay)} tensors under {layout.wrapper} are not in official weights and keep "
                    "their initialisation")

    _check_names_and_shapes(official, renamed, target_state, layout)
    checkpoint: Dict[str, Any] = {
        "model": {k: renamed[k].to(dtype=target_state[k].dtype) for k in target_state},
        "__author__": f"official {official.source} ({official.path}), converted by sarl.checkpoint_convert",
    }
    if official.class_names and len(official.class_names) == model_classes:
        checkpoint["class_names"] = list(official.class_names)
    return checkpoint


def _listed(names: List[str]) -> str:
    more = f", ... ({len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _check_names_and_shapes(official: OfficialCheckpoint, renamed: Mapping[str, Tensor],
                            target_state: Mapping[str, Tensor], layout: TargetLayout) -> None:
    missing = [k for k in target_state if k not in renamed]
    unexpected = [k for k in renamed if k not in target_state]
    misshaped = [f"{k} {tuple(renamed[k].shape)} vs {tuple(target_state[k].shape)}" for k in target_state
                 if k in renamed and renamed[k].shape != target_state[k].shape]
    if not (missing or unexpected or misshaped):
        return
    parts = [f"{len(names)} {kind}: {_listed(names)}" for kind, names in
             (("missing from the checkpoint", missing), ("not in the model", unexpected),
              ("mis-shaped (checkpoint vs model)", misshaped)) if names]
    raise OfficialWeightsError(f"MODEL.WEIGHTS {official.path}: the official {official.source} weights do not fit "
                               f"the model built from the config{_hint(renamed, target_state, layout)} "
                               f"({'; '.join(parts)})")


def _hint(renamed: Mapping[str, Tensor], target_state: Mapping[str, Tensor], layout: TargetLayout) -> str:
    """What most likely differs: the model size (stem width), or a P2 level no official model has."""
    stem = next((k for k in target_state if k.startswith(f"{layout.darknet}stem.") and k.endswith("conv.weight")), "")
    if stem in renamed and renamed[stem].shape[0] != target_state[stem].shape[0]:
        return (f": the checkpoint's stem has {renamed[stem].shape[0]} channels, the model's "
                f"{target_state[stem].shape[0]}: use the configs/coco/ file of the checkpoint's size")
    if any(k.startswith(f"{layout.neck}C3_p2.") for k in target_state):
        return ": official models have no P2 level: set MODEL.YOLOPAFPN.USE_P2 False"
    return ""
