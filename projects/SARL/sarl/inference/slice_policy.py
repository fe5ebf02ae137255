"""When an image is tiled, and at which tile size: the rule behind ``--slice`` and ``Predictor(slice_size=...)``.

- ``"auto"`` (the default):
  - a config that evaluates sliced (``TEST.SLICED.ENABLED``) predicts as it is evaluated: every image larger than
    ``INPUT.YOLO.IMG_SIZE`` is tiled at ``TEST.SLICED.SLICE_SIZE`` (0: ``IMG_SIZE``) at native resolution;
  - otherwise an image is tiled at ``IMG_SIZE`` when its long side exceeds ``AUTO_SLICE_RATIO`` (2) x ``IMG_SIZE``:
    the letterbox would shrink its objects more than twice (a 6000 px frame at 800 px: 7.5x, a 12 px vehicle
    becomes 2 px), while images up to twice the input size keep the letterbox the model was trained with;
- ``0``: never tile (every image letterboxed to ``IMG_SIZE``);
- ``N`` > 0: tile images larger than N px at N px; smaller ones are letterboxed (and the run says so).

A tile size must be a multiple of the model's size divisibility (the stride of its coarsest feature map, 32 for
YOLOX): anything else is padded up to it by the model, a band of grey the detector never saw.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from ..config import UserError

__all__ = ["AUTO", "AUTO_SLICE_RATIO", "SlicePolicy", "SliceSettingError", "check_batch_size", "check_overlap",
           "check_slice_size", "parse_slice_size"]

AUTO = "auto"
AUTO_SLICE_RATIO = 2.0


class SliceSettingError(UserError, ValueError):
    """A bad slice size, overlap or batch size: a ``UserError`` for the tools (one line), a ``ValueError`` for
    Python callers."""


def parse_slice_size(value: Union[int, str, None]) -> Optional[int]:
    """``"auto"`` / None -> None (automatic); an int (or its text) -> that int, unchecked."""
    if value is None or (isinstance(value, str) and value.strip().lower() == AUTO):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SliceSettingError(f"slice size must be 'auto', 0 or a tile size in px, got {value!r}") from None


def check_slice_size(slice_size: Optional[int], divisibility: int, name: str = "slice size") -> None:
    """``slice_size`` (None: automatic) must be 0 (never tile) or a multiple of ``divisibility`` that is at least
    ``divisibility``; raises :class:`SliceSettingError` naming ``name`` otherwise."""
    if slice_size is None or slice_size == 0:
        return
    divisibility = max(int(divisibility), 1)
    if slice_size < divisibility or slice_size % divisibility:
        below = max(divisibility, slice_size // divisibility * divisibility)
        raise SliceSettingError(
            f"{name} {slice_size}: must be 0 (no tiling), 'auto', or a multiple of {divisibility} (the model's size "
            f"divisibility) of at least {divisibility}, e.g. {below} or {below + divisibility}")


def check_overlap(overlap: float, name: str = "overlap") -> None:
    """The tile overlap is a fraction of the tile in [0, 1) (1 would never advance)."""
    if not 0.0 <= float(overlap) < 1.0:
        raise SliceSettingError(f"{name} {overlap}: must be in [0, 1) (a fraction of the tile, e.g. 0.2)")


def check_batch_size(batch_size: int, name: str = "batch size") -> None:
    if int(batch_size) < 1:
        raise SliceSettingError(f"{name} {batch_size}: must be at least 1 (tiles per model call)")


@dataclass(frozen=True)
class SlicePolicy:
    """Tiling decision per image.

    Attributes:
        slice_size: None: automatic (module docstring); 0: never; N: tile images larger than N px.
        img_size: the letterbox size (``INPUT.YOLO.IMG_SIZE``).
        eval_slice_size: the tile size of a config that evaluates sliced (``TEST.SLICED``), 0 when it does not.
    """

    slice_size: Optional[int]
    img_size: int
    eval_slice_size: int = 0

    def tile_size(self, height: int, width: int) -> int:
        """The tile size for a ``height`` x ``width`` image; 0: predict it whole (letterboxed)."""
        long_side = max(height, width)
        if self.slice_size is None:
            if self.eval_slice_size > 0:
                return self.eval_slice_size if long_side > self.img_size else 0
            return self.img_size if long_side > AUTO_SLICE_RATIO * self.img_size else 0
        return self.slice_size if self.slice_size > 0 and long_side > self.slice_size else 0

    @property
    def explicit(self) -> bool:
        """A tile size was given: images it does not tile are worth a word."""
        return bool(self.slice_size)

    def describe(self) -> str:
        if self.slice_size == 0:
            return f"no tiling: every image letterboxed to {self.img_size} px"
        if self.slice_size is not None:
            return f"images larger than {self.slice_size} px tiled at {self.slice_size} px, others letterboxed"
        if self.eval_slice_size > 0:
            return (f"auto (as evaluated, TEST.SLICED): images larger than {self.img_size} px tiled at "
                    f"{self.eval_slice_size} px, others letterboxed to {self.img_size} px")
        return (f"auto: images larger than {AUTO_SLICE_RATIO:g} x {self.img_size} px tiled at {self.img_size} px, "
                f"others letterboxed to {self.img_size} px (--slice 0 never tiles)")
