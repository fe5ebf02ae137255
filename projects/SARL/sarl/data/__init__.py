"""Data: aerial dataset registration (AI-TOD, VisDrone, DOTA patches, COCO json, the synthetic demo set), the
YOLO-style training mapper and loader.

Importing this package registers every dataset name under ``$DETECTRON2_DATASETS`` (default ``./datasets``)
lazily; ``register_all_aerial(root)`` re-points them to another root. See ``sarl.data.datasets`` for the names.
"""
from .datasets import (
    DatasetFormatError,
    DatasetNotFoundError,
    load_aerial_coco_json,
    register_aerial_coco,
    register_all_aerial,
)
from .synthetic import SYNTHETIC_CLASSES, generate_synthetic_dataset

register_all_aerial()

from .build import build_yolo_test_loader, build_yolo_train_loader  # noqa: E402  (after registration: the loader looks names up)
from .mapper import YOLOMapper  # noqa: E402

__all__ = [
    "DatasetFormatError",
    "DatasetNotFoundError",
    "SYNTHETIC_CLASSES",
    "YOLOMapper",
    "build_yolo_test_loader",
    "build_yolo_train_loader",
    "generate_synthetic_dataset",
    "load_aerial_coco_json",
    "register_aerial_coco",
    "register_all_aerial",
]
