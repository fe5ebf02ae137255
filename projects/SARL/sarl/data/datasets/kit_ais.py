"""YOLO-txt folders (one ``class cx cy w h`` file per image, normalised to [0, 1]), e.g. KIT AIS cars.

``kit_ais_cars`` is registered from ``<root>/kit_ais_cars`` (images ``*.png`` beside their ``*.txt``, class names
in ``aerial.names``: car, truck, bus, minibus, cyclist). An image without a txt is a background image (the YOLO
convention); their number is logged. ``kit_ais_cars_train`` / ``kit_ais_cars_val`` split it by sequence: the
validation frames are MOS155, MOS157, ..., MOS179 (13), training the others (20 in the published set).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .coco import _replace_registration
from .common import (
    ClipStats,
    DatasetFormatError,
    check_box_size,
    clip_xywh,
    list_images,
    parse_float,
    read_image_size,
    require_path,
)

logger = logging.getLogger(__name__)

KIT_AIS_CLASSES = ("car", "truck", "bus", "minibus", "cyclist")
# Validation frames of the sequence split (file stems); every other frame is training.
KIT_AIS_VAL_FRAMES = tuple(f"MOS{number}" for number in range(155, 180, 2))


def parse_yolo_label_file(
    path: str, num_classes: int, height: int, width: int, stats: ClipStats
) -> List[Dict[str, Any]]:
    """Parse ``class cx cy w h`` rows (normalised) into XYWH_ABS annotations of a ``height`` x ``width`` image."""
    annotations = []
    with open(path) as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}:{line_number}"
            if len(fields) != 5:
                raise DatasetFormatError(f"{where}: expected 'class cx cy w h', got {line.strip()!r}")
            class_value = parse_float(fields[0], where, "class")
            if class_value != int(class_value) or not 0 <= class_value < num_classes:
                raise DatasetFormatError(f"{where}: unknown class {fields[0]!r} (expected 0..{num_classes - 1})")
            cx, cy, w, h = (parse_float(t, where, c) for t, c in zip(fields[1:], ("cx", "cy", "w", "h")))
            check_box_size(w, h, where)
            box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            clipped = clip_xywh(box, width, height)
            stats.add(box, clipped, where)
            if clipped is None:
                continue
            annotations.append(
                {
                    "bbox": clipped,
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "category_id": int(class_value),
                    "iscrowd": 0,
                    "area": clipped[2] * clipped[3],
                }
            )
    return annotations


def load_yolo_folder(image_dir: str, class_names: Sequence[str], label_dir: Optional[str] = None) -> List[Dict]:
    """Dataset dicts for every image in ``image_dir`` with labels from ``label_dir`` (default: same folder)."""
    label_dir = label_dir or image_dir
    stats = ClipStats(label_dir)
    dataset_dicts = []
    background = 0
    for image_id, image_name in enumerate(list_images(image_dir)):
        file_name = os.path.join(image_dir, image_name)
        txt = os.path.join(label_dir, os.path.splitext(image_name)[0] + ".txt")
        height, width = read_image_size(file_name, file_name)
        record = {"file_name": file_name, "image_id": image_id, "height": height, "width": width}
        if os.path.isfile(txt):
            record["annotations"] = parse_yolo_label_file(txt, len(class_names), height, width, stats)
        else:
            record["annotations"] = []
            background += 1
        dataset_dicts.append(record)
    stats.log()
    if background:
        logger.info(f"{image_dir}: {background} images have no label file (background images)")
    return dataset_dicts


def read_class_names(names_file: str) -> List[str]:
    """One class name per line (darknet ``*.names``)."""
    with open(names_file) as f:
        return [line.strip() for line in f if line.strip()]


def select_frames(dataset_dicts: List[Dict], stems: Sequence[str], keep: bool, folder: str) -> List[Dict]:
    """The records whose file stem is in ``stems`` (``keep=True``) or not in it (``keep=False``). Every stem
    must name an image of the folder: a split that silently lost frames would score on fewer images."""
    wanted = set(stems)
    present = {os.path.splitext(os.path.basename(r["file_name"]))[0] for r in dataset_dicts}
    missing = sorted(wanted - present)
    if missing:
        raise DatasetFormatError(f"{folder}: the split names frames that are not in the folder: {', '.join(missing)}")
    return [r for r in dataset_dicts
            if (os.path.splitext(os.path.basename(r["file_name"]))[0] in wanted) == keep]


def register_yolo_folder(name: str, image_dir: str, class_names: Sequence[str], how_to_get: str,
                         frames: Optional[Sequence[str]] = None, keep_frames: bool = True,
                         label_dir: Optional[str] = None) -> None:
    """Register a YOLO-txt folder lazily under ``name``; with ``frames`` (file stems), only those images
    (``keep_frames``) or all the others; labels in ``label_dir`` (default: beside the images)."""
    _replace_registration(name)

    def load() -> List[Dict[str, Any]]:
        require_path(image_dir, name, how_to_get)
        records = load_yolo_folder(image_dir, class_names, label_dir)
        if frames is not None:
            records = select_frames(records, frames, keep_frames, image_dir)
        return records

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        thing_classes=list(class_names), evaluator_type="aitod", image_root=image_dir, dataset_format="yolo_txt"
    )


def register_kit_ais(root: str) -> None:
    how_to_get = "Get the aerial-cars-dataset (KIT AIS frames with YOLO labels) and put its files in that folder."
    image_dir = os.path.join(root, "kit_ais_cars")
    register_yolo_folder("kit_ais_cars", image_dir, KIT_AIS_CLASSES, how_to_get)
    register_yolo_folder("kit_ais_cars_train", image_dir, KIT_AIS_CLASSES, how_to_get, KIT_AIS_VAL_FRAMES, False)
    register_yolo_folder("kit_ais_cars_val", image_dir, KIT_AIS_CLASSES, how_to_get, KIT_AIS_VAL_FRAMES, True)
