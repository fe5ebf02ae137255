"""What the per-source readers share: the recognised checkpoint, where its parts go in this project's model, and
the error every mismatch raises."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping

from torch import Tensor

from ..config import UserError

__all__ = ["OfficialCheckpoint", "OfficialWeightsError", "TargetLayout"]


class OfficialWeightsError(UserError):
    """An official checkpoint that cannot be read or does not fit the model (one line; the tools exit 2)."""


@dataclass
class OfficialCheckpoint:
    """Weights of an official release, still under the official names.

    Attributes:
        source: "YOLOX" or "YOLOv5".
        path: the file read.
        state: official parameter/buffer name -> tensor (YOLOv5 anchors already in input pixels, [nl, na, 2]).
        num_classes: classes of its class layers.
        class_names: the names the file stores (YOLOv5's ``model.names``), [] when none.
        notes: how it was read (e.g. "EMA weights"), for the log.
    """

    source: str
    path: str
    state: Dict[str, Tensor]
    num_classes: int
    class_names: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


_DARKNET_STEM = re.compile(r"^(.*\.)?stem\.(conv\.)?conv\.weight$")  # Focus (YOLOX) or 6x6 conv (YOLOv5)
_NECK_LATERAL = re.compile(r"^(.*\.)?lateral_conv0\.conv\.weight$")
_HEAD_PREDICTION = re.compile(r"^(.*\.)?(cls_preds|predictors)\.0\.weight$")


def _single_prefix(pattern: re.Pattern, names: List[str], what: str) -> str:
    prefixes = {m.group(1) or "" for m in map(pattern.match, names) if m}
    if len(prefixes) != 1:
        raise OfficialWeightsError(f"official YOLOX/YOLOv5 weights map onto CSPDarknet -> YOLOPAFPN -> YOLOX/YOLOv5 "
                                   f"head models; the model built from the config has {len(prefixes)} {what} "
                                   "(MODEL.BACKBONE.NAME must be build_sarl_cspdarknet_pafpn_backbone)")
    return prefixes.pop()


@dataclass(frozen=True)
class TargetLayout:
    """Name prefixes of the parts of this project's model, read from its state-dict names (the module names
    mirror the official ones below these prefixes).

    Attributes:
        darknet: the CSPDarknet ("backbone.bottom_up.bottom_up.").
        neck: the YOLOPAFPN ("backbone.").
        head: the YOLOX/YOLOv5 head ("head.").
        head_kind: "YOLOX" (``cls_preds``) or "YOLOv5" (``predictors``).
        wrapper: modules between the neck and the CSPDarknet that no official model has (the SARL relay,
            "backbone.bottom_up."); "" when the darknet sits right under the neck.
    """

    darknet: str
    neck: str
    head: str
    head_kind: str
    wrapper: str

    @classmethod
    def of(cls, target_state: Mapping[str, Tensor]) -> "TargetLayout":
        names = list(target_state)
        darknet = _single_prefix(_DARKNET_STEM, names, "CSPDarknet stems")
        neck = _single_prefix(_NECK_LATERAL, names, "YOLOPAFPN necks")
        head = _single_prefix(_HEAD_PREDICTION, names, "YOLO heads")
        head_kind = "YOLOX" if f"{head}cls_preds.0.weight" in target_state else "YOLOv5"
        parent = darknet[: darknet.rstrip(".").rfind(".") + 1]  # the module holding the darknet
        wrapper = parent if parent != neck and parent.startswith(neck) else ""
        return cls(darknet, neck, head, head_kind, wrapper)
