"""A predictor that tells the truth, on real KIT AIS frames (skips without ``../shared/data/kit_ais_cars``):

- ``YOLOTrainer`` stores the training set's class names in its checkpoints;
- ``tools/predict.py`` with another dataset's config (the demo's, whose classes are "vehicle", "ship", ...) labels
  the boxes with the checkpoint's names (car, truck, ...);
- the per-image cap's cut is reported;
- with ``--coco-json`` the results score with pycocotools against the KIT val labels written as a COCO json, as
  they are (integer image ids by file name, the json's category ids by name).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "demo" / "sarl_yolox_synthetic.yaml")
KIT = ["car", "truck", "bus", "minibus", "cyclist"]
# The demo architecture at nano width with the KIT classes; the same opts for training and prediction.
MODEL = ["MODEL.CSPDARKNET.WIDTH_MULTIPLIER", "0.125", "MODEL.SARL.FUSED", "False", "MODEL.YOLO.NUM_CLASSES", "5",
         "MODEL.DEVICE", "cpu"]
# Json category ids that are neither 0-based nor in the model's order: only a lookup by name gets them right.
CATEGORY_IDS = {"car": 30, "truck": 10, "bus": 20, "minibus": 50, "cyclist": 40}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def kit_datasets(kit_ais_dir):
    from sarl.data import register_all_aerial

    old_env = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(kit_ais_dir.parent)
    register_all_aerial(str(kit_ais_dir.parent))
    yield kit_ais_dir
    if old_env is None:
        os.environ.pop("DETECTRON2_DATASETS", None)
    else:
        os.environ["DETECTRON2_DATASETS"] = old_env
    register_all_aerial()


@pytest.fixture(scope="module")
def kit_checkpoint(kit_datasets, tmp_path_factory):
    """Two training iterations of a nano model on the KIT training frames: a checkpoint as the trainer writes it."""
    from sarl.config import load_config
    from sarl.engine import YOLOTrainer

    out = tmp_path_factory.mktemp("kit_train")
    cfg = load_config(CONFIG, MODEL + [
        "OUTPUT_DIR", str(out), "SEED", "3", "DATASETS.TRAIN", "('kit_ais_cars_train',)", "DATASETS.TEST", "()",
        "INPUT.YOLO.IMG_SIZE", "96", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.YOLO.ITERS_PER_EPOCH", "1", "SOLVER.YOLO.EPOCHS", "2", "SOLVER.YOLO.WARMUP_EPOCHS", "1",
        "SOLVER.YOLO.NO_AUG_EPOCHS", "1", "TEST.EVAL_PERIOD", "0",
    ])
    trainer = YOLOTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return out / "model_final.pth"


def test_the_trainer_stores_the_class_names(kit_checkpoint):
    checkpoint = torch.load(kit_checkpoint, map_location="cpu", weights_only=False)
    assert checkpoint["class_names"] == KIT
    assert "ema" in checkpoint  # the weights prediction loads


def _val_coco_json(path: Path) -> dict:
    """The KIT val frames' labels as a COCO json, from the registered dataset dicts."""
    from detectron2.data import DatasetCatalog

    images, annotations = [], []
    for index, record in enumerate(DatasetCatalog.get("kit_ais_cars_val")):
        image_id = 1000 + index
        images.append({"id": image_id, "file_name": os.path.basename(record["file_name"]),
                       "width": record["width"], "height": record["height"]})
        for ann in record["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": list(ann["bbox"]),
                                "area": ann["bbox"][2] * ann["bbox"][3], "iscrowd": 0,
                                "category_id": CATEGORY_IDS[KIT[ann["category_id"]]]})
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for n, i in sorted(CATEGORY_IDS.items(), key=lambda x: x[1])]}
    path.write_text(json.dumps(data))
    return data


def _load_predict():
    spec = importlib.util.spec_from_file_location("sarl_predict_kit", REPO / "tools" / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_predict_labels_kit_cars_car_and_scores_with_pycocotools(kit_datasets, kit_checkpoint, tmp_path, capsys,
                                                                   caplog):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = _val_coco_json(tmp_path / "kit_val.json")
    frames = [str(kit_datasets / image["file_name"]) for image in gt["images"]]
    caplog.set_level(logging.INFO, logger="sarl")
    predict = _load_predict()
    # The demo config: its datasets name 4 classes vehicle/ship/storage-tank/airplane; the checkpoint names them.
    # IMG_SIZE 320: the 1764x430 frames are more than twice as wide, so "auto" tiles them at 320 px.
    status = predict.main(["--config-file", CONFIG, "--input", *frames, "--output", str(tmp_path / "out"),
                           "--coco-json", str(tmp_path / "kit_val.json"), "--no-vis", *MODEL,
                           "MODEL.WEIGHTS", str(kit_checkpoint), "INPUT.YOLO.IMG_SIZE", "320",
                           "MODEL.YOLO.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "50"])
    # detectron2's setup_logger is cached per process: the "sarl" logs reach stdout, or caplog in later tests.
    out = capsys.readouterr().out + caplog.text
    assert status == 0, out
    assert f"class names (checkpoint model_final.pth): {', '.join(KIT)}" in out
    assert "TEST.DETECTIONS_PER_IMAGE=50 cut detections" in out  # score threshold 0: far more than 50 a frame
    assert f"{len(frames)} images predicted ({len(frames)} tiled, 0 whole)" in out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results) == 50 * len(frames)
    assert {r["image_id"] for r in results} == {image["id"] for image in gt["images"]}
    id_to_name = {i: n for n, i in CATEGORY_IDS.items()}
    assert all(id_to_name[r["category_id"]] == r["category_name"] for r in results)
    # Two iterations teach no class: which of the five wins a box is chance, but every label is a KIT name.
    assert {r["category_name"] for r in results} <= set(KIT)

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(tmp_path / "kit_val.json"))
        evaluation = COCOeval(coco_gt, coco_gt.loadRes(str(tmp_path / "out" / "results.json")), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert len(evaluation.stats) == 12 and evaluation.stats[0] >= 0.0  # -1 would mean nothing was matched against
