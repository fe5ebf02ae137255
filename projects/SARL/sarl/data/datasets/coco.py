"""COCO-json reader for aerial datasets (AI-TOD, prepared DOTA patches, the synthetic set, any COCO json).

Unlike detectron2's ``load_coco_json`` it
- maps json category ids to contiguous ids by the *order of names* given by the caller (AI-TOD's official order),
  not by json id order;
- validates every record and raises an error naming the file and the record;
- clips boxes partly outside the image and logs how many zero-area boxes it dropped;
- carries extra image-record keys (DOTA patch offsets, source image) into the dataset dicts.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .common import (
    ClipStats,
    DatasetFormatError,
    ImageExistenceChecker,
    class_index,
    clip_xywh,
    normalize_class_name,
    require_path,
)

logger = logging.getLogger(__name__)

# Image-record keys of COCO files that say nothing about the image content.
_IGNORED_IMAGE_KEYS = {"id", "file_name", "height", "width", "license", "coco_url", "flickr_url", "date_captured"}


def _categories_to_contiguous(
    json_file: str, categories: List[Dict[str, Any]], thing_classes: Optional[Sequence[str]]
) -> tuple[Dict[int, int], List[str]]:
    """json category id -> contiguous id, and the class names in contiguous order."""
    seen_ids = set()
    for index, category in enumerate(categories):
        if "id" not in category or "name" not in category:
            raise DatasetFormatError(f"{json_file} (categories[{index}]): a category needs 'id' and 'name'")
        if category["id"] in seen_ids:
            raise DatasetFormatError(f"{json_file} (categories[{index}]): duplicate category id {category['id']}")
        seen_ids.add(category["id"])
    if thing_classes is None:
        ordered = sorted(categories, key=lambda c: c["id"])
        return {c["id"]: i for i, c in enumerate(ordered)}, [c["name"] for c in ordered]
    by_name = class_index(thing_classes)
    mapping = {}
    for index, category in enumerate(categories):
        contiguous = by_name.get(normalize_class_name(category["name"]))
        if contiguous is None:
            raise DatasetFormatError(
                f"{json_file} (categories[{index}]): unknown category {category['name']!r}; "
                f"expected one of {list(thing_classes)}"
            )
        mapping[category["id"]] = contiguous
    return mapping, list(thing_classes)


def load_aerial_coco_json(
    json_file: str,
    image_root: str,
    thing_classes: Optional[Sequence[str]] = None,
    check_images: bool = True,
    dataset_name: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """Read a COCO json into detectron2 dataset dicts (the contract of ``sarl.data``).

    Args:
        json_file: COCO detection json (``images``, ``categories``, optional ``annotations``: test splits
            without labels are valid and give dicts with empty ``annotations``).
        image_root: folder the images' ``file_name`` are relative to.
        thing_classes: class names in contiguous-id order; json categories are matched by name (case and
            ``-``/``_`` insensitive). ``None``: json id order.
        check_images: check that every image file exists (one directory listing per folder).
        dataset_name: when given, sets ``thing_classes`` (if absent) and ``thing_dataset_id_to_contiguous_id``
            (json id -> contiguous id, what COCO-style evaluators use to map back) in its metadata.

    Returns:
        list of dicts with ``file_name``, ``image_id``, ``height``, ``width``, any extra image-record keys, and
        ``annotations``: list of {``bbox`` [x, y, w, h], ``bbox_mode`` XYWH_ABS, ``category_id`` (0-based),
        ``iscrowd``, ``area``, optional ``difficult``}.
    """
    with open(json_file) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise DatasetFormatError(f"{json_file}:{error.lineno}: invalid json: {error.msg}") from None
    for key in ("images", "categories"):
        if key not in data:
            raise DatasetFormatError(f"{json_file}: no '{key}' list")
    category_map, class_names = _categories_to_contiguous(json_file, data["categories"], thing_classes)
    if dataset_name is not None:
        metadata = MetadataCatalog.get(dataset_name)
        if not hasattr(metadata, "thing_classes"):
            metadata.thing_classes = class_names
        metadata.thing_dataset_id_to_contiguous_id = category_map

    checker = ImageExistenceChecker()
    dataset_dicts: Dict[Any, Dict[str, Any]] = {}
    for index, image in enumerate(data["images"]):
        where = f"{json_file} (images[{index}])"
        for key in ("id", "file_name", "height", "width"):
            if key not in image:
                raise DatasetFormatError(f"{where}: image record has no '{key}'")
        if not (image["height"] > 0 and image["width"] > 0):
            raise DatasetFormatError(f"{where}: image size {image['width']}x{image['height']} is not positive")
        if image["id"] in dataset_dicts:
            raise DatasetFormatError(f"{where}: duplicate image id {image['id']}")
        file_name = os.path.join(image_root, image["file_name"])
        if check_images:
            checker.require(file_name, where)
        record = {
            "file_name": file_name,
            "image_id": image["id"],
            "height": int(image["height"]),
            "width": int(image["width"]),
        }
        record.update({k: v for k, v in image.items() if k not in _IGNORED_IMAGE_KEYS})
        record["annotations"] = []
        dataset_dicts[image["id"]] = record

    stats = ClipStats(json_file)
    for index, annotation in enumerate(data.get("annotations", [])):
        where = f"{json_file} (annotations[{index}], id {annotation.get('id')})"
        for key in ("image_id", "bbox", "category_id"):
            if key not in annotation:
                raise DatasetFormatError(f"{where}: annotation has no '{key}'")
        record = dataset_dicts.get(annotation["image_id"])
        if record is None:
            raise DatasetFormatError(f"{where}: image_id {annotation['image_id']} is not in 'images'")
        if annotation["category_id"] not in category_map:
            raise DatasetFormatError(f"{where}: unknown category_id {annotation['category_id']}")
        bbox = annotation["bbox"]
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise DatasetFormatError(f"{where}: bbox {bbox!r} is not [x, y, w, h]")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
            raise DatasetFormatError(f"{where}: bbox {bbox!r} has a value that is not a finite number")
        if bbox[2] < 0 or bbox[3] < 0:
            raise DatasetFormatError(f"{where}: bbox {bbox!r} has a negative width or height")
        clipped = clip_xywh(bbox, record["width"], record["height"])
        stats.add(bbox, clipped, where)
        if clipped is None:
            continue
        was_clipped = clipped != [float(v) for v in bbox]
        out = {
            "bbox": clipped,
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": category_map[annotation["category_id"]],
            "iscrowd": int(annotation.get("iscrowd", 0)),
            # The json area is what official evaluation uses; recompute it only for clipped boxes.
            "area": float(clipped[2] * clipped[3]) if was_clipped or "area" not in annotation
            else float(annotation["area"]),
        }
        for flag in ("difficult", "ignore"):  # DOTA's difficult; some aerial jsons mark ignored boxes
            if flag in annotation:
                out[flag] = int(annotation[flag])
        record["annotations"].append(out)
    stats.log()
    logger.info(f"Loaded {len(dataset_dicts)} images from {json_file}")
    return list(dataset_dicts.values())


def _replace_registration(name: str) -> None:
    """Registering a name again re-points it (e.g. ``register_all_aerial(other_root)`` after import)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def register_aerial_coco(
    name: str,
    json_file: str,
    image_root: str,
    thing_classes: Optional[Sequence[str]] = None,
    dataset_format: str = "coco",
    how_to_get: str = "Point register_aerial_coco() at an existing COCO json.",
    **extra_metadata: Any,
) -> None:
    """Register a COCO-json dataset lazily (read on ``DatasetCatalog.get(name)``).

    A name that is already registered is re-pointed. Metadata: ``thing_classes`` (when ``None``, set from the
    json's categories in id order when the dataset is first loaded), ``evaluator_type`` "aitod", ``json_file``,
    ``image_root``, ``dataset_format`` and any ``extra_metadata``. ``how_to_get`` completes the error raised
    when the json or the image folder is missing.
    """
    _replace_registration(name)

    def load() -> List[Dict[str, Any]]:
        require_path(json_file, name, how_to_get)
        require_path(image_root, name, how_to_get)
        return load_aerial_coco_json(json_file, image_root, thing_classes, dataset_name=name)

    DatasetCatalog.register(name, load)
    metadata = {
        "json_file": json_file,
        "image_root": image_root,
        "evaluator_type": "aitod",
        "dataset_format": dataset_format,
        **extra_metadata,
    }
    if thing_classes is not None:
        metadata["thing_classes"] = list(thing_classes)
    MetadataCatalog.get(name).set(**metadata)
