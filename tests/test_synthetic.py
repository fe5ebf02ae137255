"""The bundled synthetic dataset: determinism, AI-TOD-like size distribution, contrast, files, lazy generation."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog

from sarl.data.datasets import load_aerial_coco_json, register_all_aerial, default_datasets_root
from sarl.data.synthetic import (
    SYNTHETIC_CLASSES,
    dataset_statistics,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    render_scene,
)

SMALL = dict(num_train=3, num_val=2, image_size=128, seed=7)


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_from_the_seed(tmp_path):
    generate_synthetic_dataset(str(tmp_path / "a"), **SMALL)
    generate_synthetic_dataset(str(tmp_path / "b"), **SMALL)
    generate_synthetic_dataset(str(tmp_path / "c"), **{**SMALL, "seed": 8})
    first, second, other = (_files(tmp_path / name) for name in "abc")
    assert sorted(first) == [
        "annotations/instances_train.json", "annotations/instances_val.json", "generation.json",
        "images/train/000000.jpg", "images/train/000001.jpg", "images/train/000002.jpg",
        "images/val/000000.jpg", "images/val/000001.jpg",
    ]
    assert first == second
    assert first["images/train/000000.jpg"] != other["images/train/000000.jpg"]
    # The val images do not depend on the size of the train split.
    generate_synthetic_dataset(str(tmp_path / "d"), **{**SMALL, "num_train": 1})
    assert _files(tmp_path / "d")["images/val/000001.jpg"] == first["images/val/000001.jpg"]


def test_object_sizes_follow_aitod_and_boxes_lie_inside():
    sizes, classes = [], []
    for index in range(20):
        image, objects = render_scene(np.random.default_rng([0, 0, index]), 320, 8, 32)
        assert image.shape == (320, 320, 3) and image.dtype == np.uint8
        assert 8 <= len(objects) <= 32
        for class_id, (x, y, w, h) in objects:
            assert 0 <= x and 0 <= y and x + w <= 320 and y + h <= 320 and w > 0 and h > 0
            sizes.append(math.sqrt(w * h))
            classes.append(class_id)
    sizes = np.array(sizes)
    # AI-TOD: mean object size 12.8 px, most objects between 2 and 32 px.
    assert 11.0 <= sizes.mean() <= 14.6, sizes.mean()
    assert ((sizes >= 2) & (sizes <= 32)).mean() >= 0.95
    assert (sizes < 8).mean() >= 0.1  # "very tiny" objects exist
    assert set(classes) == set(range(len(SYNTHETIC_CLASSES)))


def test_objects_stand_out_from_their_surroundings():
    """Learnable: the object's pixels differ clearly from a ring of background around its box."""
    contrasts = []
    for index in range(10):
        image, objects = render_scene(np.random.default_rng([1, 0, index]), 320, 8, 32)
        image = image.astype(np.float32)
        for _, (x, y, w, h) in objects:
            if min(w, h) < 6:
                continue
            x1, y1, x2, y2 = int(x), int(y), int(math.ceil(x + w)), int(math.ceil(y + h))
            cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
            centre = image[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3).mean(0)
            outer = image[max(0, y1 - 4):y2 + 4, max(0, x1 - 4):x2 + 4]
            ring_mask = np.ones(outer.shape[:2], bool)
            ring_mask[y1 - max(0, y1 - 4):y1 - max(0, y1 - 4) + (y2 - y1),
                      x1 - max(0, x1 - 4):x1 - max(0, x1 - 4) + (x2 - x1)] = False
            ring = outer[ring_mask].mean(0)
            contrasts.append(np.abs(centre - ring).max())
    contrasts = np.array(contrasts)
    assert len(contrasts) > 50
    assert np.median(contrasts) > 40 and (contrasts > 15).mean() > 0.8


def test_files_load_through_the_reader_and_match_the_scene(tmp_path):
    paths = generate_synthetic_dataset(str(tmp_path), **SMALL)
    dicts = load_aerial_coco_json(paths["train"], str(tmp_path / "images" / "train"), SYNTHETIC_CLASSES)
    assert len(dicts) == 3
    _, objects = render_scene(np.random.default_rng([7, 0, 0]), 128, 8, 32)
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [c for c, _ in objects]
    np.testing.assert_allclose([a["bbox"] for a in dicts[0]["annotations"]], [b for _, b in objects], atol=0.01)
    assert cv2.imread(dicts[0]["file_name"]).shape == (128, 128, 3)
    stats = dataset_statistics(paths["val"])
    assert stats["images"] == 2 and stats["objects"] == sum(stats["per_class"].values()) > 0
    assert json.loads((tmp_path / "generation.json").read_text())["seed"] == 7


def test_registered_names_generate_on_first_use(tmp_path, caplog, monkeypatch):
    import sarl.data.synthetic as synthetic

    root = tmp_path / "synthetic_tiny"
    # Generate a small set instead of the default one, to keep the test fast.
    original = synthetic.generate_synthetic_dataset
    monkeypatch.setattr(synthetic, "generate_synthetic_dataset", lambda r, **kw: original(r, **SMALL))
    register_all_aerial(str(tmp_path))
    try:
        with caplog.at_level(logging.INFO):
            train = DatasetCatalog.get("synthetic_tiny_train")
        assert "generating it (first use)" in caplog.text
        assert len(train) == 3 and len(DatasetCatalog.get("synthetic_tiny_val")) == 2
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".synthetic_tiny.")]  # staging cleaned up
    finally:
        register_all_aerial(default_datasets_root())
    # A folder with something else in it is not overwritten.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileNotFoundError, match="holds no complete synthetic dataset"):
        ensure_synthetic_dataset(str(tmp_path / "other"))


def test_invalid_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="image_format"):
        generate_synthetic_dataset(str(tmp_path), image_format="gif")
    with pytest.raises(ValueError, match="image_size"):
        generate_synthetic_dataset(str(tmp_path), image_size=16)
