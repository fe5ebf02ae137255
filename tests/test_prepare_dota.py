"""tools/prepare_dota.py: patch grid, box cutting, round trip of labels (patch -> whole image), merge + evaluation."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from sarl.data.datasets import DOTA_V2_CLASSES, DatasetFormatError, load_aerial_coco_json
from sarl.data.datasets.dota import prepared_dota_dir, register_all_dota
from sarl.data.datasets.dota_split import SplitOptions, boxes_in_patch, patch_origins, prepare_dota
from sarl.evaluation.dota_merge import DOTAMergeEvaluator, merge_patch_predictions, patch_boxes_to_source

REPO = Path(__file__).resolve().parents[1]
PATCH, OVERLAP = 128, 48


def _load_tool():
    spec = importlib.util.spec_from_file_location("prepare_dota_tool", REPO / "tools" / "prepare_dota.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@given(length=st.integers(1, 3000), patch=st.integers(16, 600), overlap_fraction=st.floats(0, 0.95))
@settings(max_examples=60, deadline=None)
def test_patch_origins_cover_the_image_with_full_patches(length, patch, overlap_fraction):
    overlap = int(patch * overlap_fraction)
    origins = patch_origins(length, patch, overlap)
    assert origins[0] == 0 and origins == sorted(set(origins))
    assert origins[-1] + patch >= length  # covered to the end
    assert all(o + patch <= max(length, patch) for o in origins)  # last one shifted back inside
    assert all(b - a <= patch - overlap for a, b in zip(origins, origins[1:]))  # overlap at least as asked


def test_boxes_in_patch_keeps_boxes_with_enough_area_inside():
    boxes = np.array([[10, 10, 20, 20], [120, 10, 140, 20], [100, 50, 130, 60], [130, 0, 150, 5]], np.float64)
    # box 1: 8/20 inside -> cut; box 2: 28/30 inside -> kept, clipped; box 3: outside.
    indices, inside = boxes_in_patch(boxes, 0, 0, 128, 128, min_visible=0.7)
    assert indices.tolist() == [0, 2]
    np.testing.assert_allclose(inside, [[10, 10, 20, 20], [100, 50, 128, 60]])
    indices, inside = boxes_in_patch(boxes, 100, 0, 128, 128, min_visible=0.7)
    assert indices.tolist() == [1, 2, 3]
    np.testing.assert_allclose(inside[0], [20, 10, 40, 20])


def _rotated_quad(rng, centre, length, width):
    angle = rng.uniform(0, np.pi)
    corners = np.array([[-length, -width], [length, -width], [length, width], [-length, width]]) / 2
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return corners @ rotation.T + centre


@pytest.fixture
def dota_source(tmp_path):
    """Two DOTA images (one smaller than a patch) with labelTxt files including the header lines."""
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labelTxt").mkdir()
    objects = {}
    for stem, (height, width, count) in {"P0001": (260, 300, 14), "P0002": (80, 100, 3)}.items():
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        cv2.imwrite(str(src / "images" / f"{stem}.png"), image)
        rows, hbbs = ["imagesource:GoogleEarth", "gsd:0.13"], []
        for i in range(count):
            size = rng.uniform(6, 36)
            centre = rng.uniform([size, size], [width - size, height - size])
            quad = _rotated_quad(rng, centre, size, size * rng.uniform(0.3, 1.0))
            category = DOTA_V2_CLASSES[int(rng.integers(len(DOTA_V2_CLASSES)))]
            difficult = int(i % 4 == 0)
            rows.append(" ".join(f"{v:.1f}" for v in quad.reshape(-1)) + f" {category} {difficult}")
            quad = np.round(quad, 1)
            hbbs.append((list(quad.min(0)) + list(quad.max(0)), DOTA_V2_CLASSES.index(category), difficult))
        (src / "labelTxt" / f"{stem}.txt").write_text("\n".join(rows) + "\n")
        objects[stem] = (image, hbbs)
    return src, objects


def test_prepare_dota_round_trip_maps_labels_back(dota_source, tmp_path):
    src, objects = dota_source
    dst = tmp_path / "dst"
    options = SplitOptions(patch_size=PATCH, overlap=OVERLAP, scales=(1.0, 0.5), keep_empty=True)
    summary = prepare_dota(str(src / "images"), str(src / "labelTxt"), str(dst), "v2.0", options)
    assert summary["images"] == 2 and summary["objects"] == 17
    assert summary["unplaced_objects"] == {1.0: 0, 0.5: 0}
    patches = json.loads((dst / "annotations.json").read_text())
    full = json.loads((dst / "full_images.json").read_text())
    # 300x260 at scale 1 -> 4x3 patches (last ones shifted back); at 0.5 -> 150x130 -> 2x2; the small image: 1 + 1.
    assert len(patches["images"]) == 12 + 4 + 2
    full_ids = {Path(i["file_name"]).stem: i["id"] for i in full["images"]}

    for image in patches["images"]:
        source, _ = objects[image["source_image"]]
        patch_pixels = cv2.imread(str(dst / "images" / image["file_name"]))
        assert patch_pixels.shape == (PATCH, PATCH, 3) and (image["width"], image["height"]) == (PATCH, PATCH)
        assert image["source_image_id"] == full_ids[image["source_image"]]
        if image["scale"] == 1.0:
            x0, y0 = image["patch_x0"], image["patch_y0"]
            crop = source[y0:y0 + PATCH, x0:x0 + PATCH]
            np.testing.assert_array_equal(patch_pixels[: crop.shape[0], : crop.shape[1]], crop)
            assert not patch_pixels[crop.shape[0]:, :].any() and not patch_pixels[:, crop.shape[1]:].any()  # padding

    records = {i["id"]: i for i in patches["images"]}
    mapped_back = {}  # (stem, scale) -> list of (box, category, difficult)
    for annotation in patches["annotations"]:
        record = records[annotation["image_id"]]
        x, y, w, h = annotation["bbox"]
        box = patch_boxes_to_source(np.array([[x, y, x + w, y + h]]), record)[0]
        mapped_back.setdefault((record["source_image"], record["scale"]), []).append(
            (box, annotation["category_id"] - 1, annotation["difficult"]))
    for stem, (_, hbbs) in objects.items():
        for scale in (1.0, 0.5):
            found = mapped_back[(stem, scale)]
            for hbb, category, difficult in hbbs:
                # Every object is whole in some patch of every scale, with its class and difficult flag...
                assert any(np.allclose(box, hbb, atol=1e-6) and (c, d) == (category, difficult) for box, c, d in found)
            for box, category, _ in found:
                # ... and every cut box is the visible part of an object of its class.
                assert any(c == category and box[0] >= h[0] - 1e-6 and box[1] >= h[1] - 1e-6 and box[2] <= h[2] + 1e-6
                           and box[3] <= h[3] + 1e-6 for h, c, _ in hbbs)
        gt = [a for a in full["annotations"] if a["image_id"] == full_ids[stem]]
        np.testing.assert_allclose([a["bbox"] for a in gt], [[h[0], h[1], h[2] - h[0], h[3] - h[1]] for h, _, _ in hbbs])

    dicts = load_aerial_coco_json(str(dst / "annotations.json"), str(dst / "images"), DOTA_V2_CLASSES)
    assert {"patch_x0", "patch_y0", "scale", "source_image_id", "source_file"} <= set(dicts[0])
    assert all(0 <= a["category_id"] < len(DOTA_V2_CLASSES) and a["difficult"] in (0, 1)
               for d in dicts for a in d["annotations"])


def test_merge_and_evaluate_whole_images_from_patches(dota_source, tmp_path):
    src, objects = dota_source
    root = tmp_path / "root"
    dst = Path(prepared_dota_dir(str(root), "v2.0", "val", PATCH))
    tool = _load_tool()
    assert tool.main(["--src", str(src), "--dst", str(dst), "--split", "val", "--patch-size", str(PATCH),
                      "--overlap", str(OVERLAP), "--scales", "1.0", "0.5"]) == 0
    register_all_dota(str(root), patch_size=PATCH)
    try:
        patch_dicts = DatasetCatalog.get(f"dota_v2_val_{PATCH}")
        full_dicts = DatasetCatalog.get(f"dota_v2_val_{PATCH}_full")
        # The patch ground truth as detections, scored by how much of its object each box shows: merging must
        # give back exactly the whole-image boxes (duplicates from overlaps and scales removed).
        full_by_id = {d["image_id"]: d for d in full_dicts}
        predictions = []
        for record in patch_dicts:
            boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in record["annotations"]]).reshape(-1, 4)
            scores = np.array([a["area"] for a in record["annotations"]]) / record["scale"] ** 2
            predictions.append({"image_id": record["image_id"], "boxes": boxes, "scores": scores,
                                "classes": np.array([a["category_id"] for a in record["annotations"]])})
        merged = merge_patch_predictions(predictions, {d["image_id"]: d for d in patch_dicts})
        assert len(merged) == 2
        for result in merged:
            expected = np.array([a["bbox"] for a in full_by_id[result["image_id"]]["annotations"]])
            expected[:, 2:] += expected[:, :2]
            order = np.lexsort(result["boxes"].T[::-1])
            np.testing.assert_allclose(result["boxes"][order], expected[np.lexsort(expected.T[::-1])], atol=1e-4)

        evaluator = DOTAMergeEvaluator(f"dota_v2_val_{PATCH}", distributed=False)
        evaluator.reset()
        for prediction in predictions:
            instances = Instances((PATCH, PATCH))
            instances.pred_boxes = Boxes(torch.as_tensor(prediction["boxes"], dtype=torch.float32))
            instances.scores = torch.as_tensor(prediction["scores"], dtype=torch.float32)
            instances.pred_classes = torch.as_tensor(prediction["classes"], dtype=torch.int64)
            evaluator.process([{"image_id": prediction["image_id"]}], [{"instances": instances}])
        metrics = evaluator.evaluate()["bbox"]
        assert metrics["AP"] == pytest.approx(100.0, abs=1e-3)
    finally:
        for tag in ("v1", "v1_5", "v2"):
            for name in (f"dota_{tag}_train_{PATCH}", f"dota_{tag}_val_{PATCH}", f"dota_{tag}_val_{PATCH}_full"):
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)


def test_prepare_dota_unlabelled_test_split_and_bad_label(dota_source, tmp_path):
    src, _ = dota_source
    tool = _load_tool()
    test_src = tmp_path / "test_src"
    (test_src / "images").mkdir(parents=True)
    for image in (src / "images").iterdir():
        (test_src / "images" / image.name).write_bytes(image.read_bytes())
    assert tool.main(["--src", str(test_src), "--dst", str(tmp_path / "t"), "--split", "test",
                      "--patch-size", str(PATCH), "--overlap", str(OVERLAP)]) == 0
    test_json = json.loads((tmp_path / "t" / "annotations.json").read_text())
    assert len(test_json["images"]) == 12 + 1 and test_json["annotations"] == []

    label = src / "labelTxt" / "P0002.txt"
    label.write_text(label.read_text() + "1 2 3 4 5 6 7 8 tractor 0\n")
    with pytest.raises(DatasetFormatError, match=r"P0002\.txt:6: unknown category 'tractor'"):
        prepare_dota(str(src / "images"), str(src / "labelTxt"), str(tmp_path / "bad"), "v2.0",
                     SplitOptions(patch_size=PATCH, overlap=OVERLAP))


def test_prepare_dota_help_documents_the_choices():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "prepare_dota.py"), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for text in ("--patch-size", "--overlap", "--scales", "--min-visible", "shifted back", "labelTxt",
                 "imagesource", "dota_v2_train_1024", "full_images.json"):
        assert text in result.stdout
