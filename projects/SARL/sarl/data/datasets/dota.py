"""DOTA v1.0 / v1.5 / v2.0: label parsing and registration of the patches ``tools/prepare_dota.py`` writes.

DOTA images (up to ~20000 px) are split into patches for training (``tools/prepare_dota.py``); the registered
names read the prepared COCO json. Layout under the dataset root::

    DOTA-v2.0/train_1024/{images/*.png, annotations.json, full_images.json}
    DOTA-v2.0/val_1024/...            (DOTA-v1.0/..., DOTA-v1.5/... likewise)

Names: ``dota_{v1,v1_5,v2}_{train,val}_1024`` (patches) and ``dota_{...}_val_1024_full`` (the whole val images,
for scoring patch detections merged back with ``sarl.evaluation.dota_merge``).

Label files (``labelTxt/*.txt``): optional header lines ``imagesource:...`` and ``gsd:...``, then rows
``x1 y1 x2 y2 x3 y3 x4 y4 category difficult``. Horizontal boxes are the min/max of the four corners.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from .coco import register_aerial_coco
from .common import DatasetFormatError, normalize_class_name, parse_float

DOTA_V1_CLASSES = (
    "plane",
    "baseball-diamond",
    "bridge",
    "ground-track-field",
    "small-vehicle",
    "large-vehicle",
    "ship",
    "tennis-court",
    "basketball-court",
    "storage-tank",
    "soccer-ball-field",
    "roundabout",
    "harbor",
    "swimming-pool",
    "helicopter",
)
DOTA_V15_CLASSES = DOTA_V1_CLASSES + ("container-crane",)
DOTA_V2_CLASSES = DOTA_V15_CLASSES + ("airport", "helipad")

# version as given to prepare_dota.py -> (class names, folder under the root, name tag)
DOTA_VERSIONS: Dict[str, Tuple[Tuple[str, ...], str, str]] = {
    "v1.0": (DOTA_V1_CLASSES, "DOTA-v1.0", "v1"),
    "v1.5": (DOTA_V15_CLASSES, "DOTA-v1.5", "v1_5"),
    "v2.0": (DOTA_V2_CLASSES, "DOTA-v2.0", "v2"),
}

_HEADER_PREFIXES = ("imagesource", "gsd")


@dataclass
class DotaObject:
    """One labelled object: ``polygon`` [4, 2] float64 (x, y), its class name and difficult flag (0/1)."""

    polygon: np.ndarray
    category: str
    difficult: int
    line_number: int

    def horizontal_box(self) -> List[float]:
        """``[x1, y1, x2, y2]``: min/max of the four corners."""
        x1, y1 = self.polygon.min(axis=0)
        x2, y2 = self.polygon.max(axis=0)
        return [float(x1), float(y1), float(x2), float(y2)]


def parse_dota_labels(path: str, class_names: Tuple[str, ...]) -> List[DotaObject]:
    """Parse one DOTA ``labelTxt`` file; header lines are skipped, anything malformed raises naming file:line.

    ``difficult`` defaults to 0 when a row has 9 fields (some v1.0 files); categories outside ``class_names``
    are errors (a v2.0-only class in a v1.0 preparation means a wrong ``--version``).
    """
    known = {normalize_class_name(name): name for name in class_names}
    objects: List[DotaObject] = []
    with open(path) as f:
        for line_number, line in enumerate(f, start=1):
            stripped = line.strip()
            if not stripped or stripped.lower().startswith(_HEADER_PREFIXES):
                continue
            where = f"{path}:{line_number}"
            fields = stripped.split()
            if len(fields) not in (9, 10):
                raise DatasetFormatError(
                    f"{where}: expected 'x1 y1 x2 y2 x3 y3 x4 y4 category difficult', got {stripped!r}"
                )
            coordinates = [parse_float(token, where, f"coordinate {i + 1}") for i, token in enumerate(fields[:8])]
            category = known.get(normalize_class_name(fields[8]))
            if category is None:
                raise DatasetFormatError(
                    f"{where}: unknown category {fields[8]!r} (expected one of {list(class_names)})"
                )
            difficult = 0
            if len(fields) == 10:
                if fields[9] not in ("0", "1", "2"):
                    raise DatasetFormatError(f"{where}: difficult flag {fields[9]!r} is not 0 or 1")
                # DOTA_devkit writes 2 for "cut by a patch border": still difficult.
                difficult = min(int(fields[9]), 1)
            polygon = np.asarray(coordinates, dtype=np.float64).reshape(4, 2)
            objects.append(DotaObject(polygon, category, difficult, line_number))
    return objects


def prepared_dota_dir(root: str, version: str, split: str, patch_size: int) -> str:
    """Folder where ``tools/prepare_dota.py`` writes (and the registered names read) one prepared split."""
    folder = DOTA_VERSIONS[version][1]
    return os.path.join(root, folder, f"{split}_{patch_size}")


def register_all_dota(root: str, patch_size: int = 1024) -> None:
    """Register ``dota_{v1,v1_5,v2}_{train,val}_{patch_size}`` and the whole-image ``..._val_{patch_size}_full``."""
    for version, (class_names, _, tag) in DOTA_VERSIONS.items():
        for split in ("train", "val"):
            folder = prepared_dota_dir(root, version, split, patch_size)
            how_to_get = (
                f"Download DOTA-{version} (https://captain-whu.github.io/DOTA/) and run: python tools/prepare_dota.py "
                f"--src <DOTA>/{split} --dst {folder} --version {version} --split {split} --patch-size {patch_size}"
            )
            register_aerial_coco(
                f"dota_{tag}_{split}_{patch_size}",
                os.path.join(folder, "annotations.json"),
                os.path.join(folder, "images"),
                thing_classes=class_names,
                dataset_format="dota_patches",
                how_to_get=how_to_get,
                patch_size=patch_size,
            )
        folder = prepared_dota_dir(root, version, "val", patch_size)
        # full_images.json stores absolute source paths, so the image root is only a placeholder.
        register_aerial_coco(
            f"dota_{tag}_val_{patch_size}_full",
            os.path.join(folder, "full_images.json"),
            folder,
            thing_classes=class_names,
            dataset_format="dota_full",
            how_to_get=f"Run tools/prepare_dota.py for DOTA-{version} val (it writes full_images.json too).",
            patches_dataset=f"dota_{tag}_val_{patch_size}",
        )
