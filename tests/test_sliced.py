"""Sliced inference: tiles cover the image, cut boxes are handled, objects of a large image assembled from small
ones are found exactly once, memory stays bounded, and the real detector runs through it."""
from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou

from sarl.inference import SlicedPredictor, drop_cut_boxes, tile_grid, tile_starts


pytestmark = pytest.mark.usefixtures("one_thread")


class BlobDetector:
    """A detector with a known answer: every connected bright blob of a tile is one object (score from its
    brightness, class 0 for grey-level < 200, else 1). Stands in for a trained model so the test checks the
    tiling and merging alone."""

    def __init__(self):
        self.calls = []

    def __call__(self, inputs):
        self.calls.append(len(inputs))
        outputs = []
        for x in inputs:
            image = x["image"].numpy().transpose(1, 2, 0).max(axis=2)
            count, _, stats, _ = cv2.connectedComponentsWithStats((image > 50).astype(np.uint8), connectivity=4)
            boxes, scores, classes = [], [], []
            for left, top, w, h, _ in stats[1:]:
                boxes.append([left, top, left + w, top + h])
                level = image[top:top + h, left:left + w].max()
                scores.append(level / 255.0)
                classes.append(int(level >= 200))
            inst = Instances((x["height"], x["width"]))
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.tensor(scores, dtype=torch.float32)
            inst.pred_classes = torch.tensor(classes, dtype=torch.long)
            outputs.append({"instances": inst})
        return outputs


@settings(max_examples=30, deadline=None)
@given(length=st.integers(1, 3000), slice_size=st.integers(16, 900), overlap=st.floats(0.0, 0.9))
def test_tiles_cover_the_axis(length, slice_size, overlap):
    starts = tile_starts(length, slice_size, overlap)
    assert starts[0] == 0
    assert min(starts[-1] + slice_size, length) == length  # reaches the end
    for a, b in zip(starts, starts[1:]):
        assert 0 < b - a <= slice_size  # no gap between consecutive tiles
    if length > slice_size:
        assert starts[-1] + slice_size == length  # full-size last tile


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="overlap"):
        SlicedPredictor(BlobDetector(), slice_size=100, overlap=1.0)
    with pytest.raises(ValueError, match="batch size"):
        SlicedPredictor(BlobDetector(), batch_size=0)
    with pytest.raises(ValueError, match="image"):
        SlicedPredictor(BlobDetector())(np.zeros((0, 5, 3), np.uint8))


def test_drop_cut_boxes_only_at_inner_edges():
    boxes = torch.tensor([[0.0, 50, 10, 60], [90, 50, 100, 60], [40, 0, 50, 8], [0.0, 0, 100, 100]])
    # Tile at the image's left/top border: only its right and bottom edges are inner.
    keep = drop_cut_boxes(boxes, (0, 0, 100, 100), (500, 500), overlap_px=20)
    assert keep.tolist() == [True, False, True, True]  # the large box cannot be whole anywhere: kept
    keep_inner = drop_cut_boxes(boxes, (100, 100, 200, 200), (500, 500), overlap_px=20)
    assert keep_inner.tolist() == [False, False, False, True]


def _mosaic_of_small_images(rng, grid=8, cell=96):
    """A (grid*cell)^2 image assembled from small images, each with one square object; a few objects are
    moved onto tile borders. Returns the image and the ground-truth boxes/classes."""
    big = np.zeros((grid * cell, grid * cell, 3), np.uint8)
    gts, classes = [], []
    for gy in range(grid):
        for gx in range(grid):
            small = np.zeros((cell, cell, 3), np.uint8)
            size = int(rng.integers(4, 24))
            x, y = (int(v) for v in rng.integers(2, cell - size - 2, size=2))
            level = int(rng.choice([120, 230]))
            small[y:y + size, x:x + size] = level
            big[gy * cell:(gy + 1) * cell, gx * cell:(gx + 1) * cell] = small
            gts.append([gx * cell + x, gy * cell + y, gx * cell + x + size, gy * cell + y + size])
            classes.append(int(level >= 200))
    return big, torch.tensor(gts, dtype=torch.float32), torch.tensor(classes)


def test_finds_each_object_of_a_large_image_once():
    rng = np.random.default_rng(0)
    image, gt, gt_classes = _mosaic_of_small_images(rng)
    detector = BlobDetector()
    predictor = SlicedPredictor(detector, slice_size=160, overlap=0.25, batch_size=5)
    result = predictor(image)
    # Many objects straddle tile edges (160 px tiles, 120 px stride over 96 px cells).
    tiles = tile_grid(*image.shape[:2], 160, 0.25)
    straddling = sum(any(t[0] < b[0] < t[2] < b[2] or t[1] < b[1] < t[3] < b[3] for t in tiles) for b in gt.tolist())
    assert straddling > 5
    assert max(detector.calls) == 5 and sum(detector.calls) == len(tiles) == predictor.num_tiles(*image.shape[:2])
    assert len(result) == len(gt)
    iou = box_iou(result.pred_boxes.tensor, gt)
    best = iou.max(dim=1)
    assert (best.values > 0.99).all()
    assert sorted(best.indices.tolist()) == list(range(len(gt)))  # each object exactly once
    assert torch.equal(result.pred_classes, gt_classes[best.indices])
    assert (result.scores[:-1] >= result.scores[1:]).all()  # NMS order: best first


def test_memory_is_bounded_by_the_tiles():
    image = np.zeros((2400, 2400, 3), np.uint8)
    image[1000:1010, 1500:1512] = 255
    tracemalloc.start()
    result = SlicedPredictor(BlobDetector(), slice_size=200, overlap=0.2, batch_size=4)(image)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(result) == 1 and result.pred_boxes.tensor[0].tolist() == [1500, 1000, 1512, 1010]
    assert peak < image.nbytes / 8  # a full-size float copy would be 4x the image


def test_real_detector_through_the_slicer():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import sarl.modeling  # noqa: F401
    from sarl.config import add_sarl_config

    cfg = add_sarl_config(get_cfg())
    cfg.merge_from_file("configs/demo/sarl_yolox_synthetic.yaml")
    cfg.MODEL.CSPDARKNET.WIDTH_MULTIPLIER = 0.125
    cfg.MODEL.SARL.FUSED = False
    cfg.TEST.DETECTIONS_PER_IMAGE = 50
    cfg.MODEL.YOLO.SCORE_THRESH_TEST = 0.0  # the untrained model's scores are ~1e-4: keep them, so boxes are checked
    model = build_model(cfg).eval()
    image = np.random.default_rng(1).integers(0, 255, (300, 420, 3), dtype=np.uint8)
    result = SlicedPredictor(model, slice_size=128, overlap=0.2, batch_size=4, max_detections=50)(image)
    assert result.image_size == (300, 420)
    boxes = result.pred_boxes.tensor
    assert 0 < len(result) <= 50 and torch.isfinite(boxes).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 420).all() and (boxes[:, 3] <= 300).all()


def test_predict_tool_folder_with_unreadable_image(tmp_path, capsys, caplog):
    import importlib.util
    import json
    import logging
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("sarl_predict", repo / "tools" / "predict.py")
    predict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(predict)

    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "big.png"), np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8))
    cv2.imwrite(str(images / "small.png"), np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    (images / "broken.png").write_bytes(b"not a png")
    caplog.set_level(logging.INFO, logger="sarl")
    status = predict.main([
        "--config-file", str(repo / "configs" / "demo" / "sarl_yolox_synthetic.yaml"), "--input", str(images),
        "--output", str(tmp_path / "out"), "--slice", "96", "--overlap", "0.2", "--batch", "2", "--vis-score", "0.0",
        "MODEL.CSPDARKNET.WIDTH_MULTIPLIER", "0.125", "MODEL.SARL.FUSED", "False", "INPUT.YOLO.IMG_SIZE", "64",
        "MODEL.YOLO.SCORE_THRESH_TEST", "0.005", "TEST.DETECTIONS_PER_IMAGE", "20",
    ])
    assert status == 0
    out = capsys.readouterr().out + caplog.text  # the "sarl" logger reaches stdout or caplog (cached set-up)
    assert "2 images predicted (1 tiled, 1 whole), 1 unreadable skipped" in out
    assert "small.png (80x60) is not larger than the slice size 96 px" in out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["image_id"] for r in results} <= {"big.png", "small.png"}
    for r in results:
        x, y, w, h = r["bbox"]
        assert w >= 0 and h >= 0 and 0 <= r["score"] <= 1
    assert sorted(p.name for p in (tmp_path / "out" / "vis").iterdir()) == ["big.jpg", "small.jpg"]
    assert predict.main(["--config-file", "x.yaml", "--input", str(tmp_path / "nothing*.png")]) == 2
