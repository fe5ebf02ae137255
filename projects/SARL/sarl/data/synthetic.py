"""The bundled demo dataset: synthetic aerial scenes with tiny objects, needing no download.

``generate_synthetic_dataset(root, ...)`` writes, deterministically from a seed, scenes drawn by
:func:`~sarl.data.synthetic_scene.render_scene` (aerial-looking ground, roads, water, shadows; four classes of tiny
objects whose sizes follow an AI-TOD-like distribution) with their COCO annotations. Output layout under ``root``::

    images/train/000000.jpg ...        annotations/instances_train.json   (COCO, category ids 1..4)
    images/val/000000.jpg ...          annotations/instances_val.json
    generation.json                    the parameters it was made with

The default (200 train + 50 val images of 320x320, ~20 objects each) is generated in a few seconds and is small
enough for the CPU demo training; ``tools/make_synthetic.py --num-train 2000 --num-val 500 --image-size 640`` (or
``--preset large``) makes a bigger one. Every image has its own random stream, seeded by (seed, split, index), so
the val set does not change when the train set grows.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict

import cv2
import numpy as np

from .synthetic_scene import SYNTHETIC_CLASSES, render_scene

logger = logging.getLogger(__name__)

__all__ = ["SYNTHETIC_CLASSES", "SyntheticSpec", "dataset_statistics", "ensure_synthetic_dataset",
           "generate_synthetic_dataset", "render_scene", "synthetic_json_file"]

_SPLIT_CODES = {"train": 0, "val": 1}
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of one generated dataset (stored in ``generation.json``)."""

    num_train: int = 200
    num_val: int = 50
    image_size: int = 320
    seed: int = 0
    min_objects: int = 8
    max_objects: int = 32
    image_format: str = "jpg"
    version: int = _FORMAT_VERSION


def _write_split(root: str, split: str, count: int, spec: SyntheticSpec) -> str:
    image_dir = os.path.join(root, "images", split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    encode = [cv2.IMWRITE_JPEG_QUALITY, 95] if spec.image_format == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    for index in range(count):
        rng = np.random.default_rng([spec.seed, _SPLIT_CODES[split], index])
        image, objects = render_scene(rng, spec.image_size, spec.min_objects, spec.max_objects)
        file_name = f"{index:06d}.{spec.image_format}"
        if not cv2.imwrite(os.path.join(image_dir, file_name), image, encode):
            raise OSError(f"cannot write {os.path.join(image_dir, file_name)}")
        images.append({"id": index + 1, "file_name": file_name, "width": spec.image_size, "height": spec.image_size})
        for class_id, bbox in objects:
            bbox = [round(v, 2) for v in bbox]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": index + 1, "category_id": class_id + 1, "bbox": bbox,
                 "area": round(bbox[2] * bbox[3], 4), "iscrowd": 0}
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(SYNTHETIC_CLASSES)]
    json_file = os.path.join(root, "annotations", f"instances_{split}.json")
    os.makedirs(os.path.dirname(json_file), exist_ok=True)
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_file


def generate_synthetic_dataset(
    root: str,
    num_train: int = 200,
    num_val: int = 50,
    image_size: int = 320,
    seed: int = 0,
    image_format: str = "jpg",
    min_objects: int = 8,
    max_objects: int = 32,
) -> Dict[str, str]:
    """Write the synthetic dataset under ``root`` (layout in the module docstring); returns the json paths.

    Deterministic: the same arguments give the same files. ``image_format`` is "jpg" (quality 95) or "png".
    """
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if image_size < 64:
        raise ValueError(f"image_size must be at least 64 px, got {image_size}")
    if num_train < 0 or num_val < 0 or not 0 <= min_objects <= max_objects:
        raise ValueError(f"invalid counts: num_train={num_train}, num_val={num_val}, objects {min_objects}..{max_objects}")
    spec = SyntheticSpec(num_train, num_val, image_size, seed, min_objects, max_objects, image_format)
    start, start_cpu = time.perf_counter(), time.process_time()
    paths = {split: _write_split(root, split, count, spec) for split, count in (("train", num_train), ("val", num_val))}
    with open(os.path.join(root, "generation.json"), "w") as f:
        json.dump(asdict(spec), f, indent=1)
    logger.info(f"Generated the synthetic dataset in {root} ({num_train}+{num_val} images of {image_size} px) "
                f"in {time.perf_counter() - start:.1f} s ({time.process_time() - start_cpu:.1f} s CPU)")
    return paths


def synthetic_json_file(root: str, split: str) -> str:
    return os.path.join(root, "annotations", f"instances_{split}.json")


def ensure_synthetic_dataset(root: str, **generation_kwargs: Any) -> None:
    """Generate the dataset under ``root`` if it is absent (first use of ``synthetic_tiny_*``).

    ``generation_kwargs`` go to :func:`generate_synthetic_dataset` (default: the default set).

    Generation goes to a temporary sibling folder renamed into place, so concurrent processes (several workers,
    several ranks) never read a half-written dataset.
    """
    if all(os.path.isfile(synthetic_json_file(root, split)) for split in _SPLIT_CODES):
        return
    if os.path.exists(root) and os.listdir(root):
        raise FileNotFoundError(
            f"{root} exists but holds no complete synthetic dataset (annotations/instances_{{train,val}}.json): "
            f"delete it or run: python tools/make_synthetic.py --root {root} --force"
        )
    logger.info(f"Synthetic dataset not found in {root}: generating it (first use)")
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".synthetic_tiny.", dir=parent)
    try:
        generate_synthetic_dataset(staging, **generation_kwargs)
        if os.path.isdir(root) and not os.listdir(root):
            os.rmdir(root)
        try:
            os.rename(staging, root)
        except OSError:
            # Another process finished first: use its copy.
            if not all(os.path.isfile(synthetic_json_file(root, split)) for split in _SPLIT_CODES):
                raise
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)


def dataset_statistics(json_file: str) -> Dict[str, Any]:
    """Object-size statistics of a COCO json (sqrt of box area): count, mean, fraction in [2, 32] px, per class."""
    with open(json_file) as f:
        data = json.load(f)
    sizes = np.array([math.sqrt(a["bbox"][2] * a["bbox"][3]) for a in data["annotations"]])
    classes = np.array([a["category_id"] for a in data["annotations"]])
    return {
        "images": len(data["images"]),
        "objects": int(sizes.size),
        "mean_size": float(sizes.mean()) if sizes.size else 0.0,
        "fraction_2_32": float(((sizes >= 2) & (sizes <= 32)).mean()) if sizes.size else 0.0,
        "per_class": {c["name"]: int((classes == c["id"]).sum()) for c in data["categories"]},
    }
