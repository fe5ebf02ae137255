"""The pure parts of ``tools/benchmark_real.py`` (this project vs Ultralytics YOLOv8n on KIT AIS frames):

- the split: validation = MOS155, MOS157, ..., MOS179 (13 frames), training = the other 20;
- the YOLO-layout export writes ``class cx cy w h`` lines from the dataset dicts, links the images, and a
  ``data.yaml`` with the class names;
- a (fake) Ultralytics result becomes this project's prediction format and is scored by the AI-TOD evaluator;
- bad arguments stop the tool with one line naming the argument and exit status 2.

Training either side is not tested here (minutes of CPU, and Ultralytics is not a project dependency).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sarl.benchmark import kit_split, peer_results, yolo_layout
from sarl.benchmark.real_report import ratios, report_table

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "benchmark_real.py"
VAL_FRAMES = [f"MOS{n}" for n in range(155, 180, 2)]
TRAIN_FRAMES = [f"MOS{n}" for n in range(74, 93, 2)] + [f"MunichStreet02-MOS{n}" for n in range(74, 93, 2)]


def _record(name, image_id, boxes, width=200, height=100, folder="/data"):
    return {"file_name": f"{folder}/{name}.png", "image_id": image_id, "width": width, "height": height,
            "annotations": [{"bbox": list(b), "bbox_mode": 1, "category_id": c, "iscrowd": 0} for b, c in boxes]}


def test_split_is_the_13_validation_frames_and_20_others():
    assert list(kit_split.KIT_AIS_VAL_FRAMES) == VAL_FRAMES and len(VAL_FRAMES) == 13
    records = [_record(n, i, []) for i, n in enumerate(TRAIN_FRAMES + VAL_FRAMES)]
    train, val = kit_split.split_records(records)
    assert sorted(kit_split.frame_name(r["file_name"]) for r in val) == sorted(VAL_FRAMES)
    assert sorted(kit_split.frame_name(r["file_name"]) for r in train) == sorted(TRAIN_FRAMES)
    assert not kit_split.is_val_frame("/x/MunichStreet02-MOS155.png") and kit_split.is_val_frame("/x/MOS155.png")
    kit_split.check_split(val, "val")
    kit_split.check_split(train, "train")
    with pytest.raises(ValueError, match="MOS155"):
        kit_split.check_split(train + val[:1], "train")
    with pytest.raises(ValueError, match="kit_ais_cars_val"):
        kit_split.check_split(val[1:], "val")


def test_split_of_the_real_frames(kit_ais_dir):
    from detectron2.data import DatasetCatalog
    from sarl.data.datasets import default_datasets_root
    from sarl.data.datasets.kit_ais import register_kit_ais

    try:
        train, names, _ = kit_split.load_kit_ais_split(str(kit_ais_dir.parent), "train")
        val, _, _ = kit_split.load_kit_ais_split(str(kit_ais_dir.parent), "val")
    finally:
        register_kit_ais(default_datasets_root())  # leave the names as the other tests expect them
    assert names == ["car", "truck", "bus", "minibus", "cyclist"]
    assert sorted(kit_split.frame_name(r["file_name"]) for r in val) == sorted(VAL_FRAMES)
    assert sorted(kit_split.frame_name(r["file_name"]) for r in train) == sorted(TRAIN_FRAMES)
    assert "kit_ais_cars" in DatasetCatalog.list()


def test_yolo_layout_export_writes_label_lines_links_and_yaml(tmp_path):
    images = tmp_path / "src"
    images.mkdir()
    for name in ("MOS74", "MOS155"):
        (images / f"{name}.png").write_bytes(b"png")
    train = [_record("MOS74", 0, [((10, 20, 30, 40), 1), ((0, 0, 200, 100), 0)], folder=str(images))]
    train[0]["annotations"].append({"bbox": [5, 5, 5, 5], "bbox_mode": 1, "category_id": 0, "iscrowd": 1})
    train[0]["annotations"].append({"bbox": [40, 30, 60, 50], "bbox_mode": 0, "category_id": 4})  # XYXY_ABS
    val = [_record("MOS155", 3, [], folder=str(images))]
    out = tmp_path / "peer_data"
    (out / "labels").mkdir(parents=True)
    (out / "labels" / "train.cache").write_text("stale")
    yaml_path = yolo_layout.export_yolo_layout({"train": train, "val": val}, ["car", "truck", "bus", "minibus", "cyclist"],
                                      str(out))
    lines = (out / "labels" / "train" / "MOS74.txt").read_text().splitlines()
    assert lines == ["1 0.125000 0.400000 0.150000 0.400000",  # (10+15)/200, (20+20)/100, 30/200, 40/100
                     "0 0.500000 0.500000 1.000000 1.000000",
                     "4 0.250000 0.400000 0.100000 0.200000"]  # the crowd box is left out
    assert (out / "labels" / "val" / "MOS155.txt").read_text() == ""  # background frame
    link = out / "images" / "train" / "MOS74.png"
    assert link.is_symlink() and os.path.realpath(link) == str(images / "MOS74.png")
    assert not (out / "labels" / "train.cache").exists()
    text = Path(yaml_path).read_text()
    assert f'path: "{out}"' in text and "train: images/train" in text and "val: images/val" in text
    assert '  0: "car"' in text and '  4: "cyclist"' in text
    # Exporting again replaces the folders (no stale frames).
    yolo_layout.export_yolo_layout({"train": [], "val": val}, ["car"], str(out))
    assert os.listdir(out / "images" / "train") == []


def test_yolo_label_lines_round_trip_the_real_labels(kit_ais_dir):
    from sarl.data.datasets.kit_ais import KIT_AIS_CLASSES, load_yolo_folder

    records = [r for r in load_yolo_folder(str(kit_ais_dir), KIT_AIS_CLASSES) if kit_split.is_val_frame(r["file_name"])]
    record = records[0]
    source = (kit_ais_dir / (kit_split.frame_name(record["file_name"]) + ".txt")).read_text().split("\n")
    source = [line.split() for line in source if line.strip()]
    exported = [line.split() for line in yolo_layout.yolo_label_lines(record)]
    assert len(exported) == len(record["annotations"]) == len(source)
    for ours, theirs in zip(exported, source):
        assert ours[0] == theirs[0]
        # Boxes inside the frame come back to the 6th decimal (the reader clips boxes that stick out).
        if all(0 <= float(theirs[i]) - float(theirs[i + 2]) / 2 and float(theirs[i]) + float(theirs[i + 2]) / 2 <= 1
               for i in (1, 2)):
            np.testing.assert_allclose([float(v) for v in ours[1:]], [float(v) for v in theirs[1:]], atol=1e-6)


def _fake_result(path, xyxy, conf, cls):
    boxes = SimpleNamespace(xyxy=torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4),
                            conf=torch.tensor(conf, dtype=torch.float32), cls=torch.tensor(cls, dtype=torch.float32))
    return SimpleNamespace(path=path, boxes=boxes)


def test_ultralytics_results_become_project_predictions_and_are_scored():
    from sarl.evaluation import evaluate_detections

    records = [_record("MOS155", 7, [((10, 20, 30, 40), 1)]), _record("MOS157", 9, [((50, 10, 20, 20), 0)])]
    results = [_fake_result("/peer/images/val/MOS155.png", [[10, 20, 40, 60], [100, 50, 120, 70]], [0.9, 0.2],
                            [1.0, 0.0]),
               _fake_result("/peer/images/val/MOS157.png", [], [], [])]
    raw = json.loads(json.dumps([peer_results.ultralytics_result_to_raw(r) for r in results]))  # what the worker writes
    assert raw[0] == {"frame": "MOS155", "boxes": [[10.0, 20.0, 40.0, 60.0], [100.0, 50.0, 120.0, 70.0]],
                      "scores": [pytest.approx(0.9), pytest.approx(0.2)], "classes": [1, 0]}
    predictions = peer_results.raw_to_predictions(raw, records)
    assert [p["image_id"] for p in predictions] == [7, 9]
    np.testing.assert_allclose(predictions[0]["boxes"], [[10, 20, 40, 60], [100, 50, 120, 70]])
    assert predictions[0]["classes"].dtype == np.int64 and predictions[1]["boxes"].shape == (0, 4)

    metrics = evaluate_detections(records, predictions, ["car", "truck"])
    assert metrics["AP-truck"] == pytest.approx(100.0)  # the truck box is found exactly
    assert metrics["AP-car"] == pytest.approx(0.0)  # the car is missed
    gt, dt = peer_results.class_agnostic(records, predictions)
    assert {a["category_id"] for r in gt for a in r["annotations"]} == {0}
    assert records[1]["annotations"][0]["category_id"] == 0 and records[0]["annotations"][0]["category_id"] == 1
    agnostic = evaluate_detections(gt, dt, ["object"])
    assert agnostic["AP50"] == pytest.approx(50.0, abs=1.0)  # 1 of 2 objects found, at the top score

    with pytest.raises(ValueError, match="MOS999"):
        peer_results.raw_to_predictions([{"frame": "MOS999", "boxes": [], "scores": [], "classes": []}], records)


def test_predict_py_coco_results_become_raw_detections():
    raw = peer_results.coco_results_to_raw([
        {"image_id": "MOS155.png", "category_id": 0, "bbox": [1, 2, 3, 4], "score": 0.5},
        {"image_id": "MOS155.png", "category_id": 2, "bbox": [5, 6, 1, 1], "score": 0.25},
    ])
    assert raw == [{"frame": "MOS155", "boxes": [[1, 2, 4, 6], [5, 6, 6, 7]], "scores": [0.5, 0.25],
                    "classes": [0, 2]}]


def _run_tool(*args, env=None):
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120,
                          cwd=str(REPO), env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, names", [
    (["--budget-min", "0"], "--budget-min"),
    (["--budget-min", "-3"], "--budget-min"),
    (["--threads", "0"], "--threads"),
    (["--config", "configs/no_such_config.yaml"], "--config"),
    (["--skip-ours", "--skip-peer"], "--skip-ours"),
])
def test_bad_arguments_exit_2_with_one_line(args, names):
    result = _run_tool(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0]


def test_missing_data_folder_exits_2_naming_datasets(tmp_path):
    result = _run_tool("--datasets", str(tmp_path), "--skip-ours")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --datasets: no kit_ais_cars folder in {tmp_path} (pass --datasets or set DETECTRON2_DATASETS to "
        f"the folder that holds it)"]
    result = _run_tool("--skip-ours", env={"DETECTRON2_DATASETS": str(tmp_path / "nowhere")})
    assert result.returncode == 2 and "--datasets" in result.stderr


def test_ratios_and_table():
    ours = {"AP": 12.0, "AP50": 30.0, "train_images_per_s": 4.0, "AP_t": None}
    peer = {"AP": 6.0, "AP50": 0.0, "train_images_per_s": 8.0}
    ours_over_peer = ratios(ours, peer)
    assert ours_over_peer == {"AP": 2.0, "AP50": None, "train_images_per_s": 0.5}
    table = report_table({"ours": ours, "peer": peer, "ratios": ours_over_peer,
                               "settings": {"budget_min": 12.0, "threads": 2}})
    assert "budget 12 min, 2 threads" in table
    row = next(line for line in table.splitlines() if line.startswith("AP "))
    assert row.split() == ["AP", "12", "6", "2"]
    assert next(line for line in table.splitlines() if line.startswith("AP_t")).split()[1:] == ["-", "-", "-"]


def test_peer_worker_runs_as_a_module_on_the_standard_library():
    """The peer environment runs ``python -m sarl.benchmark.peer_worker``: its import must not need torch or
    detectron2 (only ``run_worker`` imports them, with ultralytics)."""
    code = ("import sys, sarl.benchmark.peer_worker; "
            "print(sorted(m for m in ('torch', 'numpy', 'detectron2', 'ultralytics') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
    result = subprocess.run([sys.executable, "-m", "sarl.benchmark.peer_worker", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "--budget-min" in result.stdout
