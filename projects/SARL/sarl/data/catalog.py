"""The dataset names of a config: registering the ones given by path (``coco:...``, ``yolo:...``), checking that
every name is known and that ``MODEL.YOLO.NUM_CLASSES`` matches the data, and one-line errors for empty datasets.

``MODEL.YOLO.NUM_CLASSES 0`` means "from the data": :func:`prepare_config_datasets` (called by
``sarl.config.load_config``) sets it to the class count of the training sets (of the test sets when there is
none). Any other value must equal the class count of every dataset named in the config whose classes are known
(:func:`check_num_classes`), so a wrong count stops before training with one line, not with a traceback at
step 0 or a checkpoint whose head weights are silently skipped.
"""
from __future__ import annotations

import difflib
import os
import re
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..config import UserError
from .datasets.common import IMAGE_EXTENSIONS, DatasetFormatError
from .datasets.own_data import DATASET_SPEC_FORMS, DatasetSpecError, is_dataset_spec, register_dataset_spec

__all__ = [
    "check_dataset_names",
    "check_num_classes",
    "dataset_class_names",
    "explain_empty_datasets",
    "prepare_config_datasets",
]

# How a user finds the registered names, or adds data of their own (appended to the unknown-name error).
LIST_HINT = f"list all: python tools/train_net.py --list-datasets; own data: {DATASET_SPEC_FORMS}"


def _named_datasets(cfg, eval_only: bool = False) -> List[Tuple[str, str]]:
    """``(config key, dataset name)`` pairs: the training sets (unless ``eval_only``) then the test sets."""
    pairs = [] if eval_only else [("DATASETS.TRAIN", n) for n in cfg.DATASETS.TRAIN]
    return pairs + [("DATASETS.TEST", n) for n in cfg.DATASETS.TEST]


def prepare_config_datasets(cfg) -> None:
    """Register the ``coco:``/``yolo:`` names of ``cfg`` (not frozen) and resolve ``MODEL.YOLO.NUM_CLASSES 0``
    to the class count of the data. Raises :class:`~sarl.config.UserError` naming the key."""
    for key, name in _named_datasets(cfg):
        if is_dataset_spec(name):
            try:
                register_dataset_spec(name)
            except DatasetSpecError as error:
                raise UserError(f"{key}: {error}") from None
    if int(cfg.MODEL.YOLO.NUM_CLASSES) == 0:
        cfg.MODEL.YOLO.NUM_CLASSES = _num_classes_from_data(cfg)


def _num_classes_from_data(cfg) -> int:
    for dataset_names in (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST):  # the test sets when there is no training set
        for name in dataset_names:
            names = dataset_class_names(name)
            if names:
                return len(names)
    named = [n for _, n in _named_datasets(cfg)]
    missing = [path for path in map(_missing_path, named) if path]
    why = f": {missing[0]} does not exist" if missing else f" (DATASETS: {', '.join(named) or 'none'})"
    raise UserError(f"MODEL.YOLO.NUM_CLASSES is 0 (take it from the data) but no dataset of the config has known "
                    f"classes{why}; set MODEL.YOLO.NUM_CLASSES to the number of classes")


def _missing_path(name: str) -> Optional[str]:
    """The json or folder a registered dataset reads that is not on disk (``None``: all there, or unknown)."""
    if name not in DatasetCatalog.list():
        return None
    metadata = MetadataCatalog.get(name)
    for key in ("json_file", "image_root"):
        path = metadata.get(key)
        if path and not os.path.exists(path):
            return path
    return None


def dataset_class_names(name: str) -> Optional[List[str]]:
    """The ``thing_classes`` of a registered dataset; ``None`` when unregistered or not known before reading it."""
    if name not in DatasetCatalog.list():
        return None
    names = MetadataCatalog.get(name).get("thing_classes")
    return list(names) if names else None


def check_dataset_names(cfg, eval_only: bool = False) -> None:
    """Every dataset named in ``cfg`` (the test sets only with ``eval_only``) must be registered; an unknown one
    stops with one line: the key, the name, the closest registered names, how to list all or use own data."""
    known = DatasetCatalog.list()
    for key, name in _named_datasets(cfg, eval_only):
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            closest = f"; closest: {', '.join(close)}" if close else ""
            raise UserError(f"{key}: dataset '{name}' is not registered{closest} ({LIST_HINT})")


def check_num_classes(cfg, eval_only: bool = False) -> None:
    """``MODEL.YOLO.NUM_CLASSES`` must equal the class count of each named dataset whose classes are known."""
    expected = int(cfg.MODEL.YOLO.NUM_CLASSES)
    for key, name in _named_datasets(cfg, eval_only):
        names = dataset_class_names(name)
        if names is not None and len(names) != expected:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise UserError(f"MODEL.YOLO.NUM_CLASSES is {expected} but {key} '{name}' has {len(names)} classes "
                            f"({shown}): set MODEL.YOLO.NUM_CLASSES {len(names)} (or 0: from the data)")


def registered_datasets() -> List[Tuple[str, Optional[int]]]:
    """``(name, number of classes or None)`` of every registered dataset, sorted by name."""
    return [(name, len(dataset_class_names(name) or []) or None) for name in sorted(DatasetCatalog.list())]


@contextmanager
def explain_empty_datasets(key: str, names: Sequence[str]) -> Iterator[None]:
    """Turn detectron2's ``Dataset '...' is empty!`` / ``No valid data found`` assertions (raised by
    ``get_detection_dataset_dicts`` over ``names``) into a :class:`DatasetFormatError` naming ``key``, the dataset
    and what to check."""
    try:
        yield
    except AssertionError as error:
        empty = re.match(r"Dataset '(.*)' is empty!", str(error))
        if empty:
            raise DatasetFormatError(f"{key}: dataset '{empty.group(1)}' is empty: {_what_to_check(empty.group(1))}"
                                     ) from None
        if str(error).startswith("No valid data found"):
            raise DatasetFormatError(
                f"{key}: no image of {', '.join(names)} has a box left (DATALOADER.FILTER_EMPTY_ANNOTATIONS drops "
                f"images without boxes): check the labels (their class ids, and the label files' names)") from None
        raise


def _what_to_check(name: str) -> str:
    metadata = MetadataCatalog.get(name)
    if metadata.get("json_file"):
        return f"check that {metadata.json_file} lists images"
    if metadata.get("image_root"):
        return f"check that {metadata.image_root} holds image files ({' '.join(IMAGE_EXTENSIONS)})"
    return "check the files it was registered with"
