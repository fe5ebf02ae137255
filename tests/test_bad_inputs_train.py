"""Bad inputs to training and evaluation (issue #14): each stops ``tools/train_net.py`` with one line naming the file,
argument or key and what to do, exit status 2 and no traceback (``SARL_DEBUG=1`` raises it), or, for an unreadable
image, is skipped with a warning naming it and counted, never a crash after a finished training.

Subprocess tests where the exit status is the point; the datasets are generated (a few 64 px images).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN_NET = REPO / "tools" / "train_net.py"
CONFIG = str(REPO / "configs" / "demo" / "sarl_yolox_synthetic.yaml")
# A nano model at 64 px, 2 images per iteration, no periodic evaluation (the final one still runs).
NANO_CPU = [
    "MODEL.DEVICE", "cpu", "SEED", "5", "MODEL.CSPDARKNET.WIDTH_MULTIPLIER", "0.125", "MODEL.SARL.FUSED", "False",
    "INPUT.YOLO.IMG_SIZE", "64", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.YOLO.WARMUP_EPOCHS", "0", "SOLVER.YOLO.NO_AUG_EPOCHS", "0", "TEST.EVAL_PERIOD", "0",
]


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory) -> dict:
    """6 train + 3 val generated images (64 px) with their COCO jsons."""
    from sarl.data import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("bad_inputs")
    jsons = generate_synthetic_dataset(str(root), num_train=6, num_val=3, image_size=64, min_objects=2,
                                       max_objects=4, image_format="png")
    return {"root": root, "train": f"coco:{jsons['train']}:{root / 'images' / 'train'}",
            "val": f"coco:{jsons['val']}:{root / 'images' / 'val'}"}


def _train_net(args: list) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SARL_DEBUG", None)
    return subprocess.run([sys.executable, str(TRAIN_NET), "--config-file", CONFIG] + args, cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=600)


def _the_one_error_line(result: subprocess.CompletedProcess) -> str:
    """The run stopped with exit status 2 and exactly one line on stderr, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines[-20:]
    return lines[0]


def _load_train_net():
    spec = importlib.util.spec_from_file_location("sarl_train_net_bad_inputs", TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ 1. unreadable images
def test_unreadable_images_are_skipped_and_counted_in_training_and_evaluation(tiny_coco, tmp_path):
    root = tiny_coco["root"]
    broken_train = root / "images" / "train" / sorted(os.listdir(root / "images" / "train"))[0]
    broken_val = root / "images" / "val" / sorted(os.listdir(root / "images" / "val"))[0]
    train_bytes, val_bytes = broken_train.read_bytes(), broken_val.read_bytes()
    broken_train.write_bytes(b"not an image")
    broken_val.write_bytes(b"not an image")
    try:
        result = _train_net(NANO_CPU + ["OUTPUT_DIR", str(tmp_path / "run"), "SOLVER.YOLO.ITERS_PER_EPOCH", "3",
                                        "SOLVER.YOLO.EPOCHS", "1", "SOLVER.IMS_PER_BATCH", "6",
                                        "DATASETS.TRAIN", tiny_coco["train"], "DATASETS.TEST", tiny_coco["val"]])
    finally:
        broken_train.write_bytes(train_bytes)
        broken_val.write_bytes(val_bytes)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert f"cannot read image {broken_train}; skipped, another sample is used" in log
    assert "Training skipped" in log and "reads of unreadable images" in log
    assert f"cannot read image {broken_val}; skipped, not scored" in log
    # The summary under the AI-TOD table counts it, and only the 2 readable images are scored.
    assert "1 images unreadable, skipped (not scored" in log
    assert "AI-TOD eval (sarl): 2 images" in log
    assert "unreadable_images" in log  # a column of the metrics


def test_evaluator_leaves_unreadable_images_out_of_the_scores(tiny_coco):
    """In process: the placeholder the evaluation loader yields is counted, and its ground truth not scored."""
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Boxes, Instances

    from sarl.config import load_config
    from sarl.evaluation import AITODEvaluator

    name = tiny_coco["val"]
    load_config(CONFIG, ["DATASETS.TEST", name])  # registers the name
    records = DatasetCatalog.get(name)
    evaluator = AITODEvaluator(name, distributed=False, dump_arrays=False)
    evaluator.reset()
    for i, record in enumerate(records):
        boxes = torch.tensor([a["bbox"] for a in record["annotations"]], dtype=torch.float32)
        boxes[:, 2:] += boxes[:, :2]  # XYWH -> XYXY: perfect detections
        instances = Instances((record["height"], record["width"]), pred_boxes=Boxes(boxes),
                              scores=torch.ones(len(boxes)),
                              pred_classes=torch.tensor([a["category_id"] for a in record["annotations"]]))
        model_input = {"image_id": record["image_id"], "file_name": record["file_name"], "unreadable": i == 0}
        # The unreadable image's output is what the model made of a grey placeholder: empty here.
        evaluator.process([model_input], [{"instances": instances[:0] if i == 0 else instances}])
    metrics = evaluator.evaluate()["bbox"]
    assert metrics["unreadable_images"] == 1.0
    assert metrics["AR@1500"] == pytest.approx(100.0)  # the skipped image's objects are not counted as misses


# ------------------------------------------------------------------ 2. MODEL.WEIGHTS file missing
def test_missing_weights_file_is_one_line(tmp_path):
    missing = tmp_path / "no_such_model.pth"
    line = _the_one_error_line(_train_net(["OUTPUT_DIR", str(tmp_path / "run"), "MODEL.WEIGHTS", str(missing)]))
    assert "MODEL.WEIGHTS" in line and str(missing) in line and "does not exist" in line


def test_sarl_debug_raises_instead_of_the_one_line(tmp_path, monkeypatch):
    """Under SARL_DEBUG=1 the error propagates (the interpreter prints its traceback)."""
    from sarl.config import UserError

    monkeypatch.setenv("SARL_DEBUG", "1")
    with pytest.raises(UserError, match="MODEL.WEIGHTS"):
        _load_train_net().run(["--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHTS",
                               str(tmp_path / "x.pth")])


def test_resume_from_a_dangling_last_checkpoint_names_it(tmp_path):
    from sarl.config import UserError, load_config
    from sarl.engine.trainer import check_model_weights

    (tmp_path / "last_checkpoint").write_text("model_0000099.pth")
    cfg = load_config(CONFIG, ["OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(UserError, match=r"--resume: .*last_checkpoint names .*model_0000099.pth"):
        check_model_weights(cfg, resume=True)
    check_model_weights(cfg, resume=False)  # MODEL.WEIGHTS is empty: random weights, nothing to check
    (tmp_path / "model_0000099.pth").write_bytes(b"")
    check_model_weights(cfg, resume=True)


# ------------------------------------------------------------------ 3. empty datasets
def test_empty_dataset_folder_is_one_line(tmp_path):
    folder = tmp_path / "my_yolo_set"
    folder.mkdir()
    (folder / "classes.txt").write_text("car\n")
    line = _the_one_error_line(_train_net(NANO_CPU + ["OUTPUT_DIR", str(tmp_path / "run"), "DATASETS.TEST", "()",
                                                      "DATASETS.TRAIN", f"yolo:{folder}",
                                                      "MODEL.YOLO.NUM_CLASSES", "0"]))
    assert f"DATASETS.TRAIN: dataset 'yolo:{folder}' is empty" in line and "holds image files" in line


def test_empty_json_and_all_images_filtered_are_one_line_errors(tmp_path):
    from detectron2.data import get_detection_dataset_dicts

    from sarl.config import load_config
    from sarl.data import DatasetFormatError, explain_empty_datasets

    empty_json = tmp_path / "empty.json"
    empty_json.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "car"}]}))
    name = f"coco:{empty_json}"
    load_config("", ["DATASETS.TEST", name, "MODEL.YOLO.NUM_CLASSES", "1"])
    with pytest.raises(DatasetFormatError, match=f"DATASETS.TEST: dataset '{name}' is empty: check that "
                                                 f"{empty_json} lists images"):
        with explain_empty_datasets("DATASETS.TEST", [name]):
            get_detection_dataset_dicts([name], filter_empty=False)
    # Images without a single box, and FILTER_EMPTY_ANNOTATIONS: nothing is left to train on.
    (tmp_path / "a.png").write_bytes(b"")
    empty_json.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
                                      "annotations": [], "categories": [{"id": 1, "name": "car"}]}))
    with pytest.raises(DatasetFormatError, match="no image of .* has a box left .*FILTER_EMPTY_ANNOTATIONS"):
        with explain_empty_datasets("DATASETS.TRAIN", [name]):
            get_detection_dataset_dicts([name], filter_empty=True)


# ------------------------------------------------------------------ 4. --eval-only without weights
def test_eval_only_without_weights_is_refused(tmp_path):
    line = _the_one_error_line(_train_net(["--eval-only", "OUTPUT_DIR", str(tmp_path / "run")]))
    assert "--eval-only" in line and "MODEL.WEIGHTS" in line


# ------------------------------------------------------------------ 5. unknown dataset name
def test_unknown_dataset_is_a_short_line_with_the_closest_names(capsys):
    train_net = _load_train_net()
    status = train_net.run(["--config-file", CONFIG, "DATASETS.TRAIN", "('aitod_trainval',)"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    line = err[0]
    assert len(line) < 300, len(line)  # not the 73 registered names
    assert "DATASETS.TRAIN" in line and "'aitod_trainval'" in line
    assert "closest: " in line and "aitod_v1_trainval" in line
    assert "--list-datasets" in line and "coco:ANN.json:IMAGE_DIR" in line
    assert train_net.run(["--list-datasets"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert "aitod_v1_trainval  8 classes" in listing and len(listing) > 20


# ------------------------------------------------------------------ 6. zero-area boxes: the log names the file
def test_zero_area_boxes_are_logged_with_their_file_and_line(tmp_path, caplog):
    import cv2
    import numpy as np

    from sarl.data.datasets.kit_ais import load_yolo_folder

    cv2.imwrite(str(tmp_path / "frame.png"), np.zeros((20, 30, 3), np.uint8))
    # Line 2 lies wholly right of the image: zero area once clipped.
    (tmp_path / "frame.txt").write_text("0 0.5 0.5 0.2 0.2\n0 1.5 0.5 0.2 0.2\n")
    with caplog.at_level(logging.WARNING, logger="sarl.data.datasets.common"):
        records = load_yolo_folder(str(tmp_path), ["car"])
    assert len(records[0]["annotations"]) == 1
    assert "dropped 1 boxes of zero area" in caplog.text and f"{tmp_path / 'frame.txt'}:2" in caplog.text
    # The json reader names the record.
    from sarl.data import load_aerial_coco_json

    json_file = tmp_path / "labels.json"
    json_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "frame.png", "height": 20, "width": 30}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [40, 5, 4, 4]}],
        "categories": [{"id": 1, "name": "car"}]}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sarl.data.datasets.common"):
        load_aerial_coco_json(str(json_file), str(tmp_path))
    assert f"{json_file} (annotations[0], id 7)" in caplog.text


def test_clip_stats_names_the_first_dropped_boxes_and_counts_the_rest():
    from sarl.data.datasets.common import MAX_NAMED_DROPPED, ClipStats

    stats = ClipStats("labels/")
    for line in range(1, MAX_NAMED_DROPPED + 3):
        stats.add([0, 0, 0, 0], None, f"a.txt:{line}")
    stats.add([0, 0, 1, 1], [0, 0, 1, 1], "a.txt:99")
    assert stats.dropped == MAX_NAMED_DROPPED + 2 and stats.kept == 1
    assert stats.dropped_locations() == ": a.txt:1, a.txt:2, a.txt:3 (and 2 more)"


@pytest.mark.parametrize("key, bad", [
    ("MODEL.YOLO.MEMORY_FORMAT", "nhwc"),
    ("SOLVER.YOLO.OPTIMIZER", "adam"),
    ("MODEL.SAL.WEIGHT_NORM", "max"),
    ("MODEL.YOLOV5.OBJ_TARGET", "giou"),
])
def test_a_word_outside_a_keys_choices_is_one_error_naming_key_and_choices(key, bad):
    from sarl.config import UserError, load_config

    with pytest.raises(UserError) as info:
        load_config(CONFIG, [key, bad])
    message = str(info.value)
    assert key in message and repr(bad) in message and "\n" not in message


@pytest.mark.parametrize("config", [""] + sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")))
def test_every_shipped_config_uses_the_keys_choices(config):
    from sarl.config import load_config

    load_config(str(REPO / config) if config else "", [])  # raises UserError on a word outside a key's choices
