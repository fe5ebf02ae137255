"""Which names label a model's classes.

In order: names given by the caller (``--class-names car,truck`` or a names file; ``--metadata DATASET``), the
names stored in the checkpoint at training time (``checkpoint["class_names"]``, written by ``YOLOTrainer``), and
only then the config's datasets (``DATASETS.TRAIN[0]``, then ``DATASETS.TEST[0]``), a guess that is logged as one:
a checkpoint run with another dataset's config would otherwise draw KIT cars as that dataset's "vehicle".
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

from ..config import UserError

logger = logging.getLogger(__name__)

__all__ = ["ClassNames", "parse_class_names", "resolve_class_names"]


@dataclass(frozen=True)
class ClassNames:
    """``names[i]`` labels contiguous class id i; ``source`` says where they came from (for the log)."""

    names: List[str]
    source: str


def parse_class_names(value: str) -> List[str]:
    """``--class-names``: a names file (one name a line, as YOLO's ``.names``; blank lines skipped) or names
    separated by commas. Raises :class:`UserError` for an empty list or an unreadable file."""
    if os.path.isfile(value):
        try:
            with open(value, encoding="utf-8") as f:
                names = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--class-names {value}: cannot read the names file ({e})") from None
        if not names:
            raise UserError(f"--class-names {value}: the names file holds no name (one name a line)")
        return names
    if os.sep in value or value.endswith((".names", ".txt")):
        raise UserError(f"--class-names {value}: no such names file (or give names separated by commas)")
    names = [name.strip() for name in value.split(",")]
    if not value.strip() or any(not name for name in names):
        raise UserError(f"--class-names {value!r}: give names separated by commas (car,truck) or a names file "
                        f"(one name a line)")
    return names


def _dataset_names(dataset: str) -> List[str]:
    import sarl.data  # noqa: F401  (registers the datasets, so their metadata has the class names)
    from detectron2.data import MetadataCatalog

    return list(MetadataCatalog.get(dataset).get("thing_classes", []) or [])


def _shown(names: Sequence[str]) -> str:
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


def resolve_class_names(num_classes: int, given: Optional[Sequence[str]] = None, metadata_name: Optional[str] = None,
                        checkpoint_names: Sequence[str] = (), checkpoint_path: str = "",
                        config_datasets: Sequence[str] = ()) -> ClassNames:
    """The names of a model with ``num_classes`` classes (module docstring for the order).

    Given names, ``metadata_name``'s and the checkpoint's must number ``num_classes``, else :class:`UserError`
    (names that do not fit would mislabel every box); config datasets that do not fit are skipped with a warning.
    """
    if given:
        given = list(given)
        if len(given) != num_classes:
            raise UserError(f"--class-names gives {len(given)} names ({_shown(given)}) but the model has "
                            f"{num_classes} classes (MODEL.YOLO.NUM_CLASSES)")
        return ClassNames(given, "--class-names")
    if metadata_name:
        names = _dataset_names(metadata_name)
        if len(names) != num_classes:
            raise UserError(f"--metadata {metadata_name}: the dataset has {len(names)} class names "
                            f"({_shown(names) or 'none'}) but the model has {num_classes} classes")
        return ClassNames(names, f"dataset {metadata_name}")
    if checkpoint_names:
        names = list(checkpoint_names)
        if len(names) != num_classes:
            raise UserError(f"{checkpoint_path} was trained for {len(names)} classes ({_shown(names)}) but "
                            f"MODEL.YOLO.NUM_CLASSES is {num_classes}: set MODEL.YOLO.NUM_CLASSES {len(names)} (or "
                            f"use the config it was trained with)")
        return ClassNames(names, f"checkpoint {os.path.basename(checkpoint_path)}")
    why = (f"{checkpoint_path} stores no class names (written before they were saved)" if checkpoint_path
           else "no checkpoint names the classes")
    for dataset in config_datasets:
        names = _dataset_names(dataset)
        if not names:
            continue
        if len(names) != num_classes:
            logger.warning(f"dataset {dataset} has {len(names)} class names but the model has {num_classes} "
                           f"classes: not using them")
            continue
        log = logger.warning if checkpoint_path else logger.info
        log(f"{why}: labelling with the class names of the config's dataset {dataset} ({_shown(names)}); "
            f"--class-names sets them")
        return ClassNames(names, f"dataset {dataset} (config)")
    logger.warning(f"{why} and the config's datasets give none that fit: classes are labelled by their ids; "
                   f"--class-names sets names")
    return ClassNames([], "none")
