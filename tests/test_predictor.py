"""``sarl.inference.Predictor``: from a config file to boxes in the original image's pixels, with scores, class
ids and class names; whole images are letterboxed, large ones tiled when asked."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sarl.config import UserError
from sarl.inference import Prediction, Predictor

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "demo" / "sarl_yolox_synthetic.yaml")
TINY = ["MODEL.CSPDARKNET.WIDTH_MULTIPLIER", "0.125", "MODEL.SARL.FUSED", "False", "INPUT.YOLO.IMG_SIZE", "64",
        "MODEL.YOLO.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "20"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor.from_config(CONFIG, weights="", opts=TINY, device="cpu")


def _check(result: Prediction, height: int, width: int, names):
    n = len(result)
    assert 0 < n <= 20
    assert result.boxes.shape == (n, 4) and result.scores.shape == (n,) and result.class_ids.shape == (n,)
    assert result.class_ids.dtype == np.int64 and len(result.class_names) == n
    assert result.class_names == [names[c] for c in result.class_ids]
    assert np.all(np.diff(result.scores) <= 0)  # best first
    assert (result.boxes[:, 0] >= 0).all() and (result.boxes[:, 2] <= width).all()
    assert (result.boxes[:, 1] >= 0).all() and (result.boxes[:, 3] <= height).all()


def test_predict_a_path_or_an_array_whole_or_sliced(predictor, tmp_path):
    from detectron2.data import MetadataCatalog

    names = MetadataCatalog.get("synthetic_tiny_val").thing_classes
    assert predictor.class_names == names and len(names) == 4
    image = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "scene.png"), image)
    from_path = predictor.predict(str(tmp_path / "scene.png"))
    _check(from_path, 150, 200, names)
    from_array = predictor.predict(image)
    np.testing.assert_allclose(from_array.boxes, from_path.boxes)
    sliced = predictor.predict(image, slice_size=96)
    _check(sliced, 150, 200, names)
    assert not np.array_equal(sliced.boxes, from_array.boxes)  # tiles at native resolution, not the letterbox
    threshold = float(np.median(from_path.scores))
    shown, kept = from_path.above(threshold), int((from_path.scores > threshold).sum())
    assert len(shown) == len(shown.instances) == len(shown.class_names) == kept
    assert shown.class_names == from_path.class_names[:kept]  # best first: the kept ones lead
    coco = from_path.to_coco_results("scene.png")
    x0, y0, x1, y1 = from_path.boxes[0]
    assert coco[0]["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0]) and coco[0]["image_id"] == "scene.png"


def test_errors_are_named(predictor, tmp_path):
    with pytest.raises(ValueError, match="cannot read image"):
        predictor.predict(str(tmp_path / "missing.png"))
    with pytest.raises(UserError, match="does not exist"):
        Predictor.from_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(UserError, match="MODEL.NOPE"):
        Predictor.from_config(CONFIG, opts=["MODEL.NOPE", "1"])
