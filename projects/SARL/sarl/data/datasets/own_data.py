"""Datasets named by their files, usable in ``DATASETS.TRAIN`` / ``DATASETS.TEST`` without code.

    coco:ANN.json:IMAGE_DIR   a COCO detection json; its images' ``file_name`` are relative to IMAGE_DIR (without
                              ``:IMAGE_DIR``: the json's folder). Classes: the json's categories in id order.
    yolo:DIR                  YOLO txt labels (``class cx cy w h``, normalised; one file per image, none for a
                              background image): images and labels together in DIR (the KIT AIS layout), or
                              DIR/images + DIR/labels (Ultralytics), or DIR = .../images/<split> with labels in
                              .../labels/<split>. Classes, in id order: ``classes.txt`` or ``*.names`` (one name a
                              line) or the ``names`` of a ``*.yaml`` (Ultralytics' data.yaml), looked up in DIR
                              and, for a DIR under an ``images`` folder, in the folder holding it.

The name itself is registered (:func:`register_dataset_spec`; ``sarl.config.load_config`` calls it for every name
of a config) with the readers of :mod:`.coco` and :mod:`.kit_ais`; the class names are read at registration, so
``MODEL.YOLO.NUM_CLASSES`` can be checked against them (or taken from them: ``NUM_CLASSES 0``) before a loader is
built. Paths are relative to the working directory.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .coco import _categories_to_contiguous, _replace_registration, register_aerial_coco
from .common import DatasetFormatError, list_images, require_path
from .kit_ais import load_yolo_folder, read_class_names, register_yolo_folder

__all__ = ["DATASET_SPEC_FORMS", "is_dataset_spec", "register_dataset_spec"]

DATASET_SPEC_FORMS = "'coco:ANN.json:IMAGE_DIR' or 'yolo:DIR'"
_NAMES_FILES_HELP = "classes.txt or a *.names file (one class name a line), or a data.yaml with 'names'"


class DatasetSpecError(ValueError):
    """A ``coco:`` / ``yolo:`` dataset name that does not follow its form."""


def is_dataset_spec(name: str) -> bool:
    """``True`` for names of the forms ``coco:...`` and ``yolo:...``."""
    return name.startswith(("coco:", "yolo:"))


def register_dataset_spec(name: str) -> None:
    """Register ``name`` (``coco:ANN.json:IMAGE_DIR`` or ``yolo:DIR``) unless it already is.

    A missing json or folder is reported when the dataset is read (one line naming the path), so a config naming
    data that is not on this machine still loads (e.g. for prediction). Raises :class:`DatasetSpecError` for a
    name that does not follow its form, :class:`DatasetFormatError` for an unreadable json or class-names file.
    """
    if name in DatasetCatalog.list():
        return
    if name.startswith("coco:"):
        json_file, image_dir = _parse_coco_spec(name)
        how_to_get = "Check the path in the dataset name (coco:ANN.json:IMAGE_DIR, relative to the working directory)."
        register_aerial_coco(name, json_file, image_dir, how_to_get=how_to_get)
        if os.path.isfile(json_file):
            MetadataCatalog.get(name).thing_classes = json_class_names(json_file)
    elif name.startswith("yolo:"):
        _register_yolo_spec(name, name[len("yolo:"):])
    else:
        raise DatasetSpecError(f"dataset '{name}' is not of the form {DATASET_SPEC_FORMS}")


def _parse_coco_spec(name: str) -> Tuple[str, str]:
    """``coco:ANN.json[:IMAGE_DIR]`` -> (json file, image folder); the json's name ends in ``.json``."""
    rest = name[len("coco:"):]
    cut = rest.find(".json:")
    json_file, image_dir = (rest, "") if cut < 0 else (rest[:cut + len(".json")], rest[cut + len(".json:"):])
    if not json_file.endswith(".json"):
        raise DatasetSpecError(f"dataset '{name}': expected coco:ANN.json:IMAGE_DIR (the json's name ends in .json)")
    return json_file, image_dir or os.path.dirname(json_file) or "."


def json_class_names(json_file: str) -> List[str]:
    """The class names of a COCO json: its categories in id order (what the reader maps them to)."""
    with open(json_file) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise DatasetFormatError(f"{json_file}:{error.lineno}: invalid json: {error.msg}") from None
    if not isinstance(data, dict) or "categories" not in data:
        raise DatasetFormatError(f"{json_file}: no 'categories' list (a COCO detection json needs one)")
    return _categories_to_contiguous(json_file, data["categories"], None)[1]


def _register_yolo_spec(name: str, directory: str) -> None:
    how_to_get = "Check the path in the dataset name (yolo:DIR, relative to the working directory)."
    if not directory:
        raise DatasetSpecError(f"dataset '{name}': expected yolo:DIR (a folder of images and YOLO .txt labels)")
    if not os.path.isdir(directory):
        # Registered without classes (unknown until the folder exists): reading it stops with one line naming it.
        def load() -> List[Dict]:
            require_path(directory, name, how_to_get)
            image_dir, label_dir = yolo_layout(directory)
            return load_yolo_folder(image_dir, yolo_class_names(directory), label_dir)

        _replace_registration(name)
        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(evaluator_type="aitod", image_root=directory, dataset_format="yolo_txt")
        return
    image_dir, label_dir = yolo_layout(directory)
    register_yolo_folder(name, image_dir, yolo_class_names(directory), how_to_get, label_dir=label_dir)


def yolo_layout(directory: str) -> Tuple[str, str]:
    """(image folder, label folder) of a YOLO dataset folder (see the module docstring)."""
    images, labels = os.path.join(directory, "images"), os.path.join(directory, "labels")
    if os.path.isdir(images) and not list_images(directory):
        return images, labels if os.path.isdir(labels) else images
    parts = os.path.normpath(directory).split(os.sep)
    if "images" in parts:  # Ultralytics: .../images/<split> -> .../labels/<split>
        index = len(parts) - 1 - parts[::-1].index("images")
        candidate = os.sep.join(parts[:index] + ["labels"] + parts[index + 1:])
        if os.path.isdir(candidate):
            return directory, candidate
    return directory, directory


def _names_folders(directory: str) -> List[str]:
    """Where class-name files are looked for: DIR, and the folder holding its ``images`` component."""
    folders = [directory]
    parts = os.path.normpath(os.path.abspath(directory)).split(os.sep)
    if "images" in parts:
        folders.append(os.sep.join(parts[:len(parts) - 1 - parts[::-1].index("images")]) or os.sep)
    return folders


def yolo_class_names(directory: str) -> List[str]:
    """Class names of a YOLO dataset folder, in id order (see the module docstring for where they are read)."""
    for folder in _names_folders(directory):
        classes_txt = os.path.join(folder, "classes.txt")
        if os.path.isfile(classes_txt):
            return _non_empty(read_class_names(classes_txt), classes_txt)
        for names_file in sorted(glob.glob(os.path.join(glob.escape(folder), "*.names"))):
            return _non_empty(read_class_names(names_file), names_file)
        for yaml_file in sorted(glob.glob(os.path.join(glob.escape(folder), "*.yaml"))):
            names = _yaml_names(yaml_file)
            if names is not None:
                return _non_empty(names, yaml_file)
    raise DatasetFormatError(f"{directory}: no class names found; add {_NAMES_FILES_HELP}")


def _non_empty(names: Sequence[str], source: str) -> List[str]:
    if not names:
        raise DatasetFormatError(f"{source}: lists no class names")
    return list(names)


def _yaml_names(yaml_file: str) -> Optional[List[str]]:
    """The ``names`` of an Ultralytics data yaml (a list, or a {id: name} mapping); ``None`` without that key."""
    import yaml

    try:
        with open(yaml_file) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as error:
        raise DatasetFormatError(f"{yaml_file}: invalid yaml: {str(error).splitlines()[0]}") from None
    names = data.get("names") if isinstance(data, dict) else None
    if names is None:
        return None
    if isinstance(names, dict):
        ids = sorted(names)
        if ids != list(range(len(ids))):
            raise DatasetFormatError(f"{yaml_file}: 'names' ids must be 0..{len(ids) - 1}, got {ids}")
        names = [names[i] for i in ids]
    if not isinstance(names, list):
        raise DatasetFormatError(f"{yaml_file}: 'names' must be a list or an {{id: name}} mapping")
    return [str(n) for n in names]
