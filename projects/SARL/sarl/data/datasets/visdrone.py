"""VisDrone2019-DET, from the folders as the official archives unpack.

Layout under the dataset root::

    VisDrone2019-DET-train/{images/*.jpg, annotations/*.txt}
    VisDrone2019-DET-val/{images, annotations}
    VisDrone2019-DET-test-dev/{images, annotations}

Each txt row is ``left,top,width,height,score,category,truncation,occlusion`` (a trailing comma is tolerated).
Categories: 1..10 are the objects (pedestrian ... motor -> contiguous ids 0..9); 0 is an "ignored region" and 11
"others" is not an object class of the benchmark either: both become ``ignore_regions`` ([x1, y1, x2, y2]) of the
dataset dict, so that the evaluator does not count detections inside them and the training mapper can use them,
and neither is an annotation. A row with score 0 (VisDrone: "ignored in evaluation") is an ignore region too.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List

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

VISDRONE_CLASSES = (
    "pedestrian",
    "people",
    "bicycle",
    "car",
    "van",
    "truck",
    "tricycle",
    "awning-tricycle",
    "bus",
    "motor",
)
_COLUMNS = ("left", "top", "width", "height", "score", "category", "truncation", "occlusion")
VISDRONE_IGNORED_REGION = 0
VISDRONE_OTHERS = 11

VISDRONE_SPLITS = {
    "visdrone2019_det_train": "VisDrone2019-DET-train",
    "visdrone2019_det_val": "VisDrone2019-DET-val",
    "visdrone2019_det_test_dev": "VisDrone2019-DET-test-dev",
}

_HOW_TO_GET = (
    "Download VisDrone2019-DET from https://github.com/VisDrone/VisDrone-Dataset and unpack the archives "
    "into the dataset root (folders VisDrone2019-DET-<split>/images and /annotations)."
)


def parse_visdrone_annotation(path: str, height: int, width: int, stats: ClipStats) -> Dict[str, List]:
    """Parse one VisDrone txt: ``{"annotations": [...], "ignore_regions": [[x1, y1, x2, y2], ...]}``."""
    annotations: List[Dict[str, Any]] = []
    ignore_regions: List[List[float]] = []
    with open(path) as f:
        for line_number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            where = f"{path}:{line_number}"
            fields = [token.strip() for token in line.split(",")]
            while fields and fields[-1] == "":
                fields.pop()
            if len(fields) < 6:
                raise DatasetFormatError(
                    f"{where}: expected 'left,top,width,height,score,category,truncation,occlusion', got {line!r}"
                )
            values = [parse_float(token, where, column) for token, column in zip(fields, _COLUMNS)]
            left, top, box_width, box_height = values[:4]
            check_box_size(box_width, box_height, where)
            category = int(values[5])
            if category != values[5] or not 0 <= category <= VISDRONE_OTHERS:
                raise DatasetFormatError(f"{where}: unknown category {fields[5]!r} (VisDrone uses 0..11)")
            box = [left, top, box_width, box_height]
            clipped = clip_xywh(box, width, height)
            stats.add(box, clipped, where)
            if clipped is None:
                continue
            # Score 0 in a ground-truth file means "ignored in evaluation" (VisDrone's definition).
            if category in (VISDRONE_IGNORED_REGION, VISDRONE_OTHERS) or values[4] == 0:
                x, y, w, h = clipped
                ignore_regions.append([x, y, x + w, y + h])
                continue
            annotation = {
                "bbox": clipped,
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": category - 1,
                "iscrowd": 0,
                "area": clipped[2] * clipped[3],
            }
            if len(values) >= 8:
                annotation["truncation"] = int(values[6])
                annotation["occlusion"] = int(values[7])
            annotations.append(annotation)
    return {"annotations": annotations, "ignore_regions": ignore_regions}


def load_visdrone(split_dir: str) -> List[Dict[str, Any]]:
    """Read one VisDrone2019-DET split folder (``images/`` + ``annotations/``) into dataset dicts.

    Every image needs its txt and every txt its image: a mismatch raises an error naming the file. Image sizes
    come from the image headers. ``image_id`` is the index of the image in sorted file-name order.
    """
    image_dir = os.path.join(split_dir, "images")
    annotation_dir = os.path.join(split_dir, "annotations")
    for folder in (image_dir, annotation_dir):
        if not os.path.isdir(folder):
            raise DatasetFormatError(f"{split_dir}: no '{os.path.basename(folder)}' folder")
    image_names = list_images(image_dir)
    image_stems = {os.path.splitext(name)[0] for name in image_names}
    for txt in sorted(os.listdir(annotation_dir)):
        if txt.endswith(".txt") and os.path.splitext(txt)[0] not in image_stems:
            raise DatasetFormatError(f"{os.path.join(annotation_dir, txt)}: no image with this name in {image_dir}")

    stats = ClipStats(annotation_dir)
    dataset_dicts = []
    for image_id, image_name in enumerate(image_names):
        file_name = os.path.join(image_dir, image_name)
        txt = os.path.join(annotation_dir, os.path.splitext(image_name)[0] + ".txt")
        if not os.path.isfile(txt):
            raise DatasetFormatError(f"{file_name}: no annotation file {txt}")
        height, width = read_image_size(file_name, txt)
        record = {"file_name": file_name, "image_id": image_id, "height": height, "width": width}
        record.update(parse_visdrone_annotation(txt, height, width, stats))
        dataset_dicts.append(record)
    stats.log()
    logger.info(f"Loaded {len(dataset_dicts)} images from {split_dir}")
    return dataset_dicts


def register_visdrone(name: str, split_dir: str) -> None:
    """Register one VisDrone2019-DET split folder lazily under ``name``."""
    _replace_registration(name)

    def load() -> List[Dict[str, Any]]:
        require_path(split_dir, name, _HOW_TO_GET)
        return load_visdrone(split_dir)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        thing_classes=list(VISDRONE_CLASSES),
        evaluator_type="aitod",
        image_root=os.path.join(split_dir, "images"),
        dataset_format="visdrone",
    )


def register_all_visdrone(root: str) -> None:
    """Register the three VisDrone2019-DET names under ``root``."""
    for name, folder in VISDRONE_SPLITS.items():
        register_visdrone(name, os.path.join(root, folder))
