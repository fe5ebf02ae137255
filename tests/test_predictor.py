"""``sarl.inference.Predictor``: from a config file to boxes in the original image's pixels, with scores, class
ids and class names (the checkpoint's); whole images letterboxed, large ones tiled by the "auto" rule or a given
size; a cut by the per-image cap is reported, never silent; COCO ids of a json; progress lines with an ETA."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances

from sarl.config import UserError, load_config
from sarl.inference import CocoJsonIds, Prediction, Predictor, Progress, SlicePolicy, SliceSettingError
from sarl.inference import parse_class_names

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "demo" / "sarl_yolox_synthetic.yaml")
TINY = ["MODEL.CSPDARKNET.WIDTH_MULTIPLIER", "0.125", "MODEL.SARL.FUSED", "False", "INPUT.YOLO.IMG_SIZE", "64",
        "MODEL.YOLO.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "20"]
SYNTHETIC = ["vehicle", "ship", "storage-tank", "airplane"]
KIT = ["car", "truck", "bus", "minibus", "cyclist"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor.from_config(CONFIG, weights="", opts=TINY, device="cpu", slice_size=0)


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
    assert predictor.class_names == SYNTHETIC  # no checkpoint: the config's training set names them
    image = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "scene.png"), image)
    from_path = predictor.predict(str(tmp_path / "scene.png"))
    _check(from_path, 150, 200, SYNTHETIC)
    assert from_path.tiles == 0  # slice_size=0: letterboxed whole
    from_array = predictor.predict(image)
    np.testing.assert_allclose(from_array.boxes, from_path.boxes)
    sliced = predictor.predict(image, slice_size=96)
    _check(sliced, 150, 200, SYNTHETIC)
    assert sliced.tiles == 6  # 2 rows x 3 columns of 96 px tiles, 20% overlap
    assert not np.array_equal(sliced.boxes, from_array.boxes)  # tiles at native resolution, not the letterbox
    threshold = float(np.median(from_path.scores))
    shown, kept = from_path.above(threshold), int((from_path.scores > threshold).sum())
    assert len(shown) == len(shown.instances) == len(shown.class_names) == kept
    assert shown.class_names == from_path.class_names[:kept]  # best first: the kept ones lead
    coco = from_path.to_coco_results("scene.png")
    x0, y0, x1, y1 = from_path.boxes[0]
    assert coco[0]["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0]) and coco[0]["image_id"] == "scene.png"
    assert coco[0]["category_name"] == from_path.class_names[0]
    # A mapping leaves out the classes it lacks instead of writing an id the dataset does not have.
    only_first = {int(from_path.class_ids[0]): 7}
    mapped = from_path.to_coco_results(3, only_first)
    assert mapped and {r["category_id"] for r in mapped} == {7}
    assert len(mapped) == int((from_path.class_ids == from_path.class_ids[0]).sum())


def test_auto_slicing_rule():
    auto = SlicePolicy(None, img_size=640)
    assert auto.tile_size(430, 1764) == 640  # a KIT frame: 2.8x the input size
    assert auto.tile_size(6000, 6000) == 640
    assert auto.tile_size(800, 1200) == 0  # up to 2x: the letterbox the model was trained with
    as_evaluated = SlicePolicy(None, img_size=640, eval_slice_size=800)  # TEST.SLICED.ENABLED
    assert as_evaluated.tile_size(430, 700) == 800 and as_evaluated.tile_size(640, 640) == 0
    fixed = SlicePolicy(96, img_size=64)
    assert fixed.tile_size(150, 200) == 96 and fixed.tile_size(60, 80) == 0 and fixed.explicit
    assert SlicePolicy(0, img_size=64).tile_size(6000, 6000) == 0


def test_slice_settings_are_checked(predictor):
    for bad, needle in ((7, "multiple of 32"), (-5, "multiple of 32"), (48, "e.g. 32 or 64")):
        with pytest.raises(SliceSettingError, match=needle):
            predictor.predict(np.zeros((8, 8, 3), np.uint8), slice_size=bad)
    with pytest.raises(ValueError, match=r"overlap 1.0: must be in \[0, 1\)"):
        Predictor(predictor.model, 64, overlap=1.0)
    with pytest.raises(ValueError, match="batch size 0"):
        Predictor(predictor.model, 64, batch_size=0)
    assert isinstance(SliceSettingError("x"), UserError)  # the tools print it as one line


class CountingDetector(torch.nn.Module):
    """Returns ``count`` boxes (scores descending) per input, cut to its ``max_detections_per_image`` cap as the
    YOLODetector does: whether a cut shows is then known exactly."""

    def __init__(self, count: int, cap: int):
        super().__init__()
        self.count, self.max_detections_per_image, self.size_divisibility = count, cap, 32

    def forward(self, inputs):
        outputs = []
        for x in inputs:
            n = min(self.count, self.max_detections_per_image)
            h, w = x["height"], x["width"]
            inst = Instances((h, w))
            xs = torch.linspace(0, w - 4, n)
            inst.pred_boxes = Boxes(torch.stack([xs, torch.zeros(n), xs + 3, torch.full((n,), 3.0)], dim=1))
            inst.scores = torch.linspace(0.9, 0.1, n)
            inst.pred_classes = torch.zeros(n, dtype=torch.long)
            outputs.append({"instances": inst})
        return outputs


@pytest.mark.parametrize("count, cut", [(5, False), (8, True)])
def test_a_cut_by_the_per_image_cap_is_reported(count, cut, caplog):
    model = CountingDetector(count, cap=5)
    predictor = Predictor(model, img_size=64, slice_size=0, max_detections=5)
    with caplog.at_level(logging.WARNING, logger="sarl.inference.predictor"):
        result = predictor.predict(np.zeros((40, 64, 3), np.uint8), name="frame.png")
    assert len(result) == 5 and result.truncated == cut and result.tiles == 0
    assert model.max_detections_per_image == 5  # restored after asking for one more
    messages = [r.getMessage() for r in caplog.records]
    assert bool(messages) == cut
    if cut:
        assert "frame.png" in messages[0] and "TEST.DETECTIONS_PER_IMAGE=5" in messages[0]


def test_tiles_and_merge_over_the_cap_are_reported(caplog):
    # 4 tiles of 5 boxes each, at distinct places: 20 after merging, kept 8 -> the merge cut.
    predictor = Predictor(CountingDetector(5, cap=5), img_size=64, slice_size=64, overlap=0.0, max_detections=8)
    with caplog.at_level(logging.WARNING, logger="sarl.inference.predictor"):
        result = predictor.predict(np.zeros((128, 128, 3), np.uint8))
    assert result.tiles == 4 and len(result) == 8 and result.truncated
    assert "after merging 4 tiles" in caplog.records[-1].getMessage()
    # Each tile cut (6 boxes, cap 5), the merge not (20 <= 100).
    caplog.clear()
    predictor = Predictor(CountingDetector(6, cap=5), img_size=64, slice_size=64, overlap=0.0, max_detections=100)
    with caplog.at_level(logging.WARNING, logger="sarl.inference.predictor"):
        result = predictor.predict(np.zeros((128, 128, 3), np.uint8))
    assert result.truncated and len(result) == 20
    assert "in 4 of 4 tiles" in caplog.records[-1].getMessage()


def _checkpoint(tmp_path, class_names, num_classes=5) -> str:
    from sarl.checkpoint import YOLOCheckpointer
    from sarl.inference import build_inference_model

    model = build_inference_model(load_config(CONFIG, TINY + ["MODEL.YOLO.NUM_CLASSES", str(num_classes),
                                                              "TEST.FUSE_CONV_BN", "False"]))
    YOLOCheckpointer(model, str(tmp_path), class_names=class_names).save("model_kit")
    return str(tmp_path / "model_kit.pth")


def test_class_names_come_from_the_checkpoint(tmp_path):
    weights = _checkpoint(tmp_path, KIT)
    assert torch.load(weights, weights_only=False)["class_names"] == KIT
    five = TINY + ["MODEL.YOLO.NUM_CLASSES", "5"]
    # The demo config's datasets are named vehicle/ship/...: the checkpoint's names win.
    predictor = Predictor.from_config(CONFIG, weights, opts=five, slice_size=0)
    assert predictor.class_names == KIT and predictor.metadata.thing_classes == KIT
    result = predictor.predict(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert len(result) and set(result.class_names) <= set(KIT)
    given = ["a", "b", "c", "d", "e"]
    assert Predictor.from_config(CONFIG, weights, opts=five, class_names=given).class_names == given
    with pytest.raises(UserError, match="--class-names gives 2 names"):
        Predictor.from_config(CONFIG, weights, opts=five, class_names=["car", "truck"])
    with pytest.raises(UserError, match="trained for 5 classes .* set MODEL.YOLO.NUM_CLASSES 5"):
        Predictor.from_config(CONFIG, weights, opts=TINY)  # the demo config's 4 classes


def test_a_checkpoint_without_names_falls_back_to_the_config_with_a_warning(tmp_path, caplog):
    weights = _checkpoint(tmp_path, [], num_classes=4)
    with caplog.at_level(logging.WARNING, logger="sarl.inference.class_names"):
        predictor = Predictor.from_config(CONFIG, weights, opts=TINY)
    assert predictor.class_names == SYNTHETIC
    assert any("stores no class names" in r.getMessage() for r in caplog.records)


def test_training_class_names_fit_the_model(caplog):
    from sarl.checkpoint import training_class_names

    assert training_class_names(load_config(CONFIG, [])) == SYNTHETIC
    with caplog.at_level(logging.WARNING, logger="sarl.checkpoint"):
        assert training_class_names(load_config(CONFIG, ["MODEL.YOLO.NUM_CLASSES", "5"])) == []
    assert "stores no class names" in caplog.records[-1].getMessage()


def test_parse_class_names(tmp_path):
    assert parse_class_names("car, truck") == ["car", "truck"]
    names_file = tmp_path / "aerial.names"
    names_file.write_text("car\ntruck\n\nbus\n")
    assert parse_class_names(str(names_file)) == ["car", "truck", "bus"]
    for bad in ("car,,truck", " ", str(tmp_path / "missing.names")):
        with pytest.raises(UserError, match="--class-names"):
            parse_class_names(bad)


def test_coco_json_ids_by_file_name_and_class_name(tmp_path, caplog):
    ann = {"images": [{"id": 11, "file_name": "a/MOS1.png"}, {"id": 12, "file_name": "b/MOS1.png"},
                      {"id": 13, "file_name": "MOS2.png"}],
           "categories": [{"id": 40, "name": "Storage Tank"}, {"id": 7, "name": "vehicle"}, {"id": 9, "name": "x"}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    with caplog.at_level(logging.WARNING, logger="sarl.inference.coco_ids"):
        ids = CocoJsonIds(str(tmp_path / "ann.json"), SYNTHETIC)
    assert ids.category_ids == {0: 7, 2: 40}  # by name, loosely; ship and airplane are not in the json
    assert "ship, airplane" in caplog.records[-1].getMessage()
    assert ids.image_id("/data/MOS2.png") == 13 and ids.image_id("/data/b/MOS1.png") == 12
    assert ids.image_id("/data/c/MOS1.png") is None and ids.image_id("MOS3.png") is None
    with pytest.raises(UserError, match="none of its categories"):
        CocoJsonIds(str(tmp_path / "ann.json"), ["car", "truck"])
    (tmp_path / "bad.json").write_text("{\"images\": 3")
    with pytest.raises(UserError, match="--coco-json .*bad.json"):
        CocoJsonIds(str(tmp_path / "bad.json"), SYNTHETIC)


def test_progress_lines_have_an_eta_when_not_a_terminal(caplog):
    with caplog.at_level(logging.INFO, logger="sarl.predict"):
        with Progress(4, interactive=False, log_every_s=0.0) as progress:
            for index in range(4):
                progress.start(f"img{index}.png")
                progress.tiles(1, 2)
                progress.advance()
    lines = [r.getMessage() for r in caplog.records]
    assert "img0.png tile 1/2" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("predict: 4/4 images") and "done in" in lines[-1]
    assert not any("\r" in line for line in lines)


def test_errors_are_named(predictor, tmp_path):
    with pytest.raises(ValueError, match="cannot read image"):
        predictor.predict(str(tmp_path / "missing.png"))
    with pytest.raises(UserError, match="does not exist"):
        Predictor.from_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(UserError, match="MODEL.NOPE"):
        Predictor.from_config(CONFIG, opts=["MODEL.NOPE", "1"])
