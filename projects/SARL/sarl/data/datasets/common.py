"""Validation and clipping helpers shared by the dataset readers.

Every reader follows the same rules (issue #4):
- a malformed file raises :class:`DatasetFormatError` naming the file and the line (text formats) or the
  record (json formats);
- a dataset that is not on disk raises :class:`DatasetNotFoundError` naming the path and how to get the data;
- boxes partly outside the image are clipped to it; boxes with zero area after clipping are dropped and their
  number is logged; nothing else is dropped silently.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class DatasetFormatError(ValueError):
    """A dataset file is malformed. The message starts with ``file:line`` or ``file (record ...)``."""


class DatasetNotFoundError(FileNotFoundError):
    """A registered dataset is not on disk. The message names the missing path and how to get the data."""


def require_path(path: str, dataset_name: str, how_to_get: str) -> None:
    """Raise :class:`DatasetNotFoundError` when ``path`` (file or folder) does not exist."""
    if not os.path.exists(path):
        # Datasets named by their own path (coco:..., yolo:..., see own_data.py) do not live under the root.
        named_by_path = dataset_name.startswith(("coco:", "yolo:"))
        root = "" if named_by_path else " (the dataset root is $DETECTRON2_DATASETS, default ./datasets)"
        raise DatasetNotFoundError(f"dataset '{dataset_name}': {path} does not exist. {how_to_get}{root}")


def parse_float(token: str, where: str, what: str) -> float:
    """Parse a finite float or raise an error naming ``where`` (file:line) and ``what`` (the column)."""
    try:
        value = float(token)
    except ValueError:
        raise DatasetFormatError(f"{where}: cannot parse {what} {token!r} as a number") from None
    if not math.isfinite(value):
        raise DatasetFormatError(f"{where}: {what} is {token!r}, not a finite number")
    return value


def check_box_size(width: float, height: float, where: str) -> None:
    """Negative or non-finite sizes are errors (not clipping cases): they mean a broken file."""
    if not (math.isfinite(width) and math.isfinite(height)):
        raise DatasetFormatError(f"{where}: box size ({width}, {height}) is not finite")
    if width < 0 or height < 0:
        raise DatasetFormatError(f"{where}: box has a negative width or height ({width}, {height})")


def clip_xywh(box: Sequence[float], image_width: float, image_height: float) -> Optional[List[float]]:
    """Clip an ``[x, y, w, h]`` box to the image; ``None`` when nothing of positive area remains."""
    x1 = min(max(float(box[0]), 0.0), image_width)
    y1 = min(max(float(box[1]), 0.0), image_height)
    x2 = min(max(float(box[0]) + float(box[2]), 0.0), image_width)
    y2 = min(max(float(box[1]) + float(box[3]), 0.0), image_height)
    if x2 <= x1 or y2 <= y1:
        return None
    return [x1, y1, x2 - x1, y2 - y1]


def clip_xyxy(box: Sequence[float], image_width: float, image_height: float) -> Optional[List[float]]:
    """Clip an ``[x1, y1, x2, y2]`` box to the image; ``None`` when nothing of positive area remains."""
    clipped = clip_xywh([box[0], box[1], box[2] - box[0], box[3] - box[1]], image_width, image_height)
    if clipped is None:
        return None
    return [clipped[0], clipped[1], clipped[0] + clipped[2], clipped[1] + clipped[3]]


# Zero-area boxes named (file:line or json record) in the log line; the rest are counted.
MAX_NAMED_DROPPED = 3


@dataclass
class ClipStats:
    """Counts what clipping did over one file set, and logs it once at the end, naming where the first dropped
    boxes are (so a broken label can be found and fixed)."""

    source: str
    clipped: int = 0
    dropped: int = 0
    kept: int = 0
    dropped_at: List[str] = field(default_factory=list)

    def add(self, original: Sequence[float], clipped: Optional[Sequence[float]], where: str = "") -> None:
        """Count one box: ``clipped`` is its clipped form (``None``: dropped); ``where`` names it (file:line)."""
        if clipped is None:
            self.dropped += 1
            if where and len(self.dropped_at) < MAX_NAMED_DROPPED:
                self.dropped_at.append(where)
            return
        self.kept += 1
        if any(abs(float(a) - float(b)) > 1e-9 for a, b in zip(original, clipped)):
            self.clipped += 1

    def log(self) -> None:
        if self.clipped:
            logger.info(f"{self.source}: clipped {self.clipped} boxes partly outside their image")
        if self.dropped:
            logger.warning(
                f"{self.source}: dropped {self.dropped} boxes of zero area after clipping to the image "
                f"({self.kept} kept){self.dropped_locations()}"
            )

    def dropped_locations(self) -> str:
        """``": file:line, file:line (and N more)"``: where the dropped boxes are, for the log line."""
        if not self.dropped_at:
            return ""
        more = self.dropped - len(self.dropped_at)
        return ": " + ", ".join(self.dropped_at) + (f" (and {more} more)" if more > 0 else "")


@dataclass
class ImageExistenceChecker:
    """Checks that image files exist with one directory listing per folder (cheap on big datasets)."""

    _listings: Dict[str, Set[str]] = field(default_factory=dict)

    def exists(self, path: str) -> bool:
        folder, name = os.path.split(os.path.abspath(path))
        listing = self._listings.get(folder)
        if listing is None:
            listing = set(os.listdir(folder)) if os.path.isdir(folder) else set()
            self._listings[folder] = listing
        return name in listing

    def require(self, path: str, where: str) -> None:
        if not self.exists(path):
            raise DatasetFormatError(f"{where}: image file {path} does not exist")


def read_image_size(path: str, where: str) -> Tuple[int, int]:
    """``(height, width)`` from the image header only (PIL does not decode the pixels)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise DatasetFormatError(f"{where}: image file {path} does not exist") from None
    except OSError as error:
        raise DatasetFormatError(f"{where}: cannot read the image header of {path}: {error}") from None
    return int(height), int(width)


def list_images(folder: str) -> List[str]:
    """Image file names (not paths) in ``folder``, sorted, for readers that enumerate images."""
    return sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS))


def normalize_class_name(name: str) -> str:
    """Names compared loosely: case, ``_`` / space / ``-`` differences do not matter."""
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def class_index(names: Iterable[str]) -> Dict[str, int]:
    """Map normalised class name -> contiguous id (position in ``names``)."""
    return {normalize_class_name(name): index for index, name in enumerate(names)}
