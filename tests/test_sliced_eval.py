"""Sliced evaluation (TEST.SLICED.ENABLED): the trainer's evaluation of whole frames equals scoring the
detections that the sliced predictor merges, image by image; small images keep the letterbox path."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from sarl.config import add_sarl_config
from sarl.data import YOLOMapper
from sarl.engine import YOLOTrainer
from sarl.evaluation import evaluate_detections
from sarl.inference import SlicedDetector, SlicedPredictor

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["car", "truck"]
SIZES = [(500, 1200), (430, 900), (200, 300)]  # (height, width); the last fits one tile: letterbox path


def _cfg(name: str):
    cfg = add_sarl_config(get_cfg())
    cfg.merge_from_file("configs/kit_ais/sarl_yolox_kit_cpu.yaml")
    cfg.MODEL.YOLO.NUM_CLASSES = len(CLASSES)
    cfg.INPUT.YOLO.IMG_SIZE = 320
    cfg.MODEL.YOLO.SCORE_THRESH_TEST = 0.0  # the untrained model's scores are ~1e-4: keep them all
    cfg.TEST.DETECTIONS_PER_IMAGE = 200
    cfg.DATASETS.TEST = (name,)
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def _write_images(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for i, (h, w) in enumerate(SIZES):
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        image = cv2.GaussianBlur(image, (0, 0), 3)
        path = str(tmp_path / f"img{i}.png")
        cv2.imwrite(path, image)
        records.append({"file_name": path, "image_id": i, "height": h, "width": w, "annotations": []})
    return records


def _manual_predictions(model, cfg, records):
    """What the sliced evaluation should score: SlicedPredictor on each large image read from disk, the
    model on the letterboxed small one."""
    predictor = SlicedPredictor(model, slice_size=cfg.INPUT.YOLO.IMG_SIZE, overlap=cfg.TEST.SLICED.OVERLAP,
                                batch_size=cfg.TEST.SLICED.BATCH_SIZE, nms_thresh=cfg.MODEL.YOLO.NMS_THRESH_TEST,
                                max_detections=cfg.TEST.DETECTIONS_PER_IMAGE)
    mapper = YOLOMapper(cfg, False, native_test=False)
    predictions = []
    for record in records:
        if max(record["height"], record["width"]) > cfg.INPUT.YOLO.IMG_SIZE:
            instances = predictor(cv2.imread(record["file_name"]))
        else:
            with torch.no_grad():
                instances = model([mapper(record)])[0]["instances"]
        predictions.append({"image_id": record["image_id"], "instances": instances})
    return predictions


def test_sliced_evaluation_equals_scoring_merged_detections(tmp_path):
    name = f"sliced_eval_{tmp_path.name}"
    records = _write_images(tmp_path)
    cfg = _cfg(name)
    torch.manual_seed(0)
    model = YOLOTrainer.build_model(cfg).eval()

    # Ground truth made from some of the merged detections, so that AP is neither 0 nor trivially 100.
    predictions = _manual_predictions(model, cfg, records)
    for record, prediction in zip(records, predictions):
        boxes = prediction["instances"].pred_boxes.tensor.numpy()
        classes = prediction["instances"].pred_classes.numpy()
        assert len(boxes) > 0
        picked = np.arange(0, len(boxes), 7)[:20]
        record["annotations"] = [
            {"bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
             "bbox_mode": BoxMode.XYWH_ABS, "category_id": int(c), "iscrowd": 0}
            for b, c in zip(boxes[picked], classes[picked])]
    DatasetCatalog.register(name, lambda: [dict(r) for r in records])
    MetadataCatalog.get(name).set(thing_classes=CLASSES, evaluator_type="aitod")
    try:
        expected = evaluate_detections(records, predictions, CLASSES)
        calls = []
        original_forward = SlicedDetector.forward

        def counting_forward(self, batched_inputs):
            calls.append([bool(x.get("sliced")) for x in batched_inputs])
            return original_forward(self, batched_inputs)

        SlicedDetector.forward = counting_forward
        try:
            results = YOLOTrainer.test(cfg, model)["bbox"]  # one test set: detectron2 unwraps it
        finally:
            SlicedDetector.forward = original_forward
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert sorted(sum(calls, [])) == [False, True, True]  # two frames tiled, the small image letterboxed
    assert 0 < expected["AP"] < 100
    for key in ("AP", "AP50", "AP75", "AP_s", "AP_m"):
        assert results[key] == pytest.approx(expected[key], abs=1e-9, nan_ok=True), key


def test_without_sliced_evaluation_frames_are_letterboxed(tmp_path):
    records = _write_images(tmp_path)
    cfg = _cfg("unused")
    cfg.TEST.SLICED.ENABLED = False
    out = YOLOMapper(cfg, False)(records[0])
    assert tuple(out["image"].shape) == (3, 320, 320) and "sliced" not in out
    cfg.TEST.SLICED.ENABLED = True
    out = YOLOMapper(cfg, False)(records[0])
    assert tuple(out["image"].shape) == (3, 500, 1200) and out["sliced"] and out["letterbox"] == (1.0, 0.0, 0.0)
