"""Official COCO weights through ``MODEL.WEIGHTS``: YOLOX release checkpoints and YOLOv5 v6.0+/v7.0 ``.pt`` files,
recognised by their content and converted to this project's module names when
:class:`~sarl.checkpoint.YOLOCheckpointer` loads them.

    restricted_pickle.py   reads pickled YOLOv5 models with an allow-list unpickler (no YOLOv5 code runs)
    yolox.py, yolov5.py    one reader + name mapping per source
    common.py              the recognised checkpoint, the model's part prefixes, the error
    matching.py            class-count re-initialisation, SARL relay, the names/shapes check
    write.py               a converted checkpoint file for reuse (tools/convert_weights.py)
"""
from __future__ import annotations

from typing import Any, Optional

from .common import OfficialCheckpoint, OfficialWeightsError, TargetLayout
from .matching import fit_to_model
from .yolov5 import read_yolov5_checkpoint
from .yolox import yolox_checkpoint

__all__ = ["OfficialCheckpoint", "OfficialWeightsError", "TargetLayout", "as_official_checkpoint", "fit_to_model",
           "read_yolov5_checkpoint"]


def as_official_checkpoint(loaded: Any, path: str) -> Optional[OfficialCheckpoint]:
    """``loaded`` itself when it is an :class:`OfficialCheckpoint` (from :func:`read_yolov5_checkpoint`), the YOLOX
    weights it holds when it is a YOLOX release dict, else None (a checkpoint of this project, or another)."""
    if isinstance(loaded, OfficialCheckpoint):
        return loaded
    return yolox_checkpoint(loaded, path)
