"""AI-TOD v1 and AI-TOD-v2 (COCO json, 800x800 images, 8 classes).

Expected layout under the dataset root ($DETECTRON2_DATASETS, default ./datasets)::

    AI-TOD/annotations/small_trainval_v1_1.0.json      AI-TOD/trainval/images/*.png
    AI-TOD/annotations/small_test_v1_1.0.json          AI-TOD/test/images/*.png
    AI-TOD-v2/annotations/small_train_v2_1.0.json      AI-TOD-v2/train/images/*.png
    AI-TOD-v2/annotations/small_val_v2_1.0.json        AI-TOD-v2/val/images/*.png
    AI-TOD-v2/annotations/small_trainval_v2_2.0.json   AI-TOD-v2/trainval/images/*.png
    AI-TOD-v2/annotations/small_test_v2_2.0.json       AI-TOD-v2/test/images/*.png

AI-TOD is distributed as a generation toolkit (https://github.com/jwwangchn/AI-TOD) that assembles the images from
xView, DOTA, VisDrone, ... ; its output folders are ``{split}/images`` and ``annotations``. AI-TOD-v2 test labels
are withheld: its test json has no annotations (report on val).
"""
from __future__ import annotations

import os
from typing import Dict, Tuple

from .coco import register_aerial_coco

# Official order (REFERENCE.md section 3); json category ids are mapped to these by name.
AITOD_CLASSES = (
    "airplane",
    "bridge",
    "storage-tank",
    "ship",
    "swimming-pool",
    "vehicle",
    "person",
    "wind-mill",
)

# name -> (folder under the root, json under <folder>/annotations, image folder under <folder>)
AITOD_SPLITS: Dict[str, Tuple[str, str, str]] = {
    "aitod_v1_trainval": ("AI-TOD", "small_trainval_v1_1.0.json", "trainval/images"),
    "aitod_v1_test": ("AI-TOD", "small_test_v1_1.0.json", "test/images"),
    "aitod_v2_train": ("AI-TOD-v2", "small_train_v2_1.0.json", "train/images"),
    "aitod_v2_val": ("AI-TOD-v2", "small_val_v2_1.0.json", "val/images"),
    "aitod_v2_trainval": ("AI-TOD-v2", "small_trainval_v2_2.0.json", "trainval/images"),
    "aitod_v2_test": ("AI-TOD-v2", "small_test_v2_2.0.json", "test/images"),
}

_HOW_TO_GET = (
    "Generate AI-TOD with its toolkit (https://github.com/jwwangchn/AI-TOD) and place it as the layout in "
    "sarl/data/datasets/aitod.py (and the README) describes."
)


def register_all_aitod(root: str) -> None:
    """Register the six AI-TOD names under ``root`` (lazy: nothing is read now)."""
    for name, (folder, json_name, image_dir) in AITOD_SPLITS.items():
        register_aerial_coco(
            name,
            os.path.join(root, folder, "annotations", json_name),
            os.path.join(root, folder, image_dir),
            thing_classes=AITOD_CLASSES,
            dataset_format="aitod",
            how_to_get=_HOW_TO_GET,
        )
