"""Data: aerial dataset registration (AI-TOD, VisDrone, DOTA patches, COCO json, the synthetic demo set, and
datasets named by path: ``coco:ANN.json:IMAGE_DIR``, ``yolo:DIR``), the YOLO-style training mapper and loader.

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
from .catalog import (  # noqa: E402
    check_dataset_names,
    check_num_classes,
    explain_empty_datasets,
    prepare_config_datasets,
)
from .mapper import YOLOMapper  # noqa: E402

__all__ = [
    "DatasetFormatError",
    "DatasetNotFoundError",
    "SYNTHETIC_CLASSES",
    "YOLOMapper",
    "build_yolo_test_loader",
    "build_yolo_train_loader",
    "check_dataset_names",
    "check_num_classes",
    "explain_empty_datasets",
    "generate_synthetic_dataset",
    "load_aerial_coco_json",
    "prepare_config_datasets",
    "register_aerial_coco",
    "register_all_aerial",
]
