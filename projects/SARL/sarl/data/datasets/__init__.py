"""Registration of the aerial datasets (detectron2 ``DatasetCatalog`` / ``MetadataCatalog``).

``register_all_aerial(root)`` registers every name below under ``root``; importing ``sarl.data`` calls it with
``$DETECTRON2_DATASETS`` (default ``./datasets``). Registration is lazy: files are read by
``DatasetCatalog.get(name)``, and a dataset that is not on disk then raises one error naming the missing path and
how to get the data. Calling it again with another root re-points the names.

    aitod_v1_trainval, aitod_v1_test                          AI-TOD/        (aitod.py)
    aitod_v2_train, aitod_v2_val, aitod_v2_trainval, aitod_v2_test   AI-TOD-v2/
    visdrone2019_det_train, _val, _test_dev                   VisDrone2019-DET-<split>/  (visdrone.py)
    dota_{v1,v1_5,v2}_{train,val}_1024, dota_{...}_val_1024_full    DOTA-v<x>/<split>_1024/ (dota.py; prepare_dota.py)
    synthetic_tiny_train, synthetic_tiny_val                  synthetic_tiny/ (generated on first use)
    kit_ais_cars, kit_ais_cars_{train,val}                    kit_ais_cars/  (YOLO txt; kit_ais.py; split by sequence)
    coco:ANN.json:IMAGE_DIR, yolo:DIR                         any path (own_data.py; registered when a config
                                                              naming them is loaded, not by register_all_aerial)

Dataset dicts follow detectron2's standard: ``file_name``, ``image_id``, ``height``, ``width``, ``annotations`` (list
of {``bbox`` [x, y, w, h], ``bbox_mode`` XYWH_ABS, ``category_id`` 0-based contiguous, ``iscrowd``, ``area``,
optional ``difficult``}); VisDrone adds ``ignore_regions`` ([x1, y1, x2, y2] of categories 0 and 11).
Metadata: ``thing_classes``, ``evaluator_type`` ("aitod"), ``image_root``, ``json_file`` (json formats),
``dataset_format``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..synthetic import SYNTHETIC_CLASSES, ensure_synthetic_dataset, synthetic_json_file
from .aitod import AITOD_CLASSES, AITOD_SPLITS, register_all_aitod
from .coco import _replace_registration, load_aerial_coco_json, register_aerial_coco
from .common import DatasetFormatError, DatasetNotFoundError
from .dota import DOTA_V1_CLASSES, DOTA_V2_CLASSES, DOTA_V15_CLASSES, parse_dota_labels, register_all_dota
from .kit_ais import KIT_AIS_CLASSES, load_yolo_folder, register_kit_ais
from .visdrone import VISDRONE_CLASSES, VISDRONE_SPLITS, load_visdrone, register_all_visdrone

__all__ = [
    "AITOD_CLASSES",
    "DOTA_V1_CLASSES",
    "DOTA_V15_CLASSES",
    "DOTA_V2_CLASSES",
    "KIT_AIS_CLASSES",
    "SYNTHETIC_CLASSES",
    "VISDRONE_CLASSES",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "load_aerial_coco_json",
    "load_visdrone",
    "load_yolo_folder",
    "parse_dota_labels",
    "register_aerial_coco",
    "register_all_aerial",
    "register_synthetic",
    "default_datasets_root",
]


def default_datasets_root() -> str:
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def register_synthetic(root: str) -> None:
    """Register ``synthetic_tiny_{train,val}`` from ``<root>``; the default set is generated there on first use."""
    for split in ("train", "val"):
        name = f"synthetic_tiny_{split}"
        json_file = synthetic_json_file(root, split)
        image_root = os.path.join(root, "images", split)
        _replace_registration(name)

        def load(json_file: str = json_file, image_root: str = image_root, name: str = name) -> List[Dict[str, Any]]:
            ensure_synthetic_dataset(root)
            return load_aerial_coco_json(json_file, image_root, SYNTHETIC_CLASSES, dataset_name=name)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            thing_classes=list(SYNTHETIC_CLASSES),
            evaluator_type="aitod",
            json_file=json_file,
            image_root=image_root,
            dataset_format="synthetic",
        )


def register_all_aerial(root: str | None = None) -> None:
    """Register (or re-point) every dataset name of the project under ``root`` (default $DETECTRON2_DATASETS)."""
    root = default_datasets_root() if root is None else root
    register_all_aitod(root)
    register_all_visdrone(root)
    register_all_dota(root)
    register_synthetic(os.path.join(root, "synthetic_tiny"))
    register_kit_ais(root)
