"""Own data without code (issue #11): ``coco:ANN.json:IMAGE_DIR`` and ``yolo:DIR`` dataset names in
``DATASETS.TRAIN``/``TEST`` (``sarl.data.datasets.own_data``), ``MODEL.YOLO.NUM_CLASSES 0`` = from the data, and a
class-count mismatch stopping with one line (``sarl.data.catalog``).

The end-to-end tests run ``tools/train_net.py`` as a subprocess for 2 iterations of a nano model at 64 px on a
generated 4-class set (a few seconds of compute; most of the time is imports).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN_NET = REPO / "tools" / "train_net.py"
CONFIG = str(REPO / "configs" / "demo" / "sarl_yolox_synthetic.yaml")
# 2 iterations of 2 images at 64 px, no evaluation unless a test set is named.
TWO_ITERATIONS = [
    "MODEL.DEVICE", "cpu", "SEED", "3", "MODEL.CSPDARKNET.WIDTH_MULTIPLIER", "0.125", "MODEL.SARL.FUSED", "False",
    "INPUT.YOLO.IMG_SIZE", "64", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.YOLO.ITERS_PER_EPOCH", "1", "SOLVER.YOLO.EPOCHS", "2", "SOLVER.YOLO.WARMUP_EPOCHS", "0",
    "SOLVER.YOLO.NO_AUG_EPOCHS", "0", "TEST.EVAL_PERIOD", "0",
]
DATA_NAMES = ["car", "boat", "tank", "plane"]  # not the synthetic set's names: the run must take these


@pytest.fixture(scope="module")
def coco_data(tmp_path_factory) -> dict:
    """A generated COCO json set (4 train + 2 val images of 64 px, 4 classes)."""
    from sarl.data import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("own_coco")
    jsons = generate_synthetic_dataset(str(root), num_train=4, num_val=2, image_size=64, min_objects=2,
                                       max_objects=4, image_format="png")
    return {"root": root, "train_json": jsons["train"], "val_json": jsons["val"],
            "train_images": root / "images" / "train", "val_images": root / "images" / "val"}


def _write_yolo_split(json_file: str, image_dir: Path, out_images: Path, out_labels: Path) -> None:
    """Copy a COCO split to YOLO txt: ``class cx cy w h`` normalised, one file per image."""
    data = json.loads(Path(json_file).read_text())
    out_images.mkdir(parents=True, exist_ok=True)
    out_labels.mkdir(parents=True, exist_ok=True)
    order = sorted(c["id"] for c in data["categories"])
    rows = {image["id"]: [] for image in data["images"]}
    sizes = {image["id"]: (image["width"], image["height"]) for image in data["images"]}
    for a in data["annotations"]:
        w_img, h_img = sizes[a["image_id"]]
        x, y, w, h = a["bbox"]
        rows[a["image_id"]].append(f"{order.index(a['category_id'])} {(x + w / 2) / w_img} {(y + h / 2) / h_img} "
                                   f"{w / w_img} {h / h_img}")
    for image in data["images"]:
        (out_images / image["file_name"]).write_bytes((image_dir / image["file_name"]).read_bytes())
        (out_labels / (Path(image["file_name"]).stem + ".txt")).write_text("\n".join(rows[image["id"]]))


@pytest.fixture(scope="module")
def yolo_data(coco_data, tmp_path_factory) -> dict:
    """The same images as YOLO txt: training set in Ultralytics' layout (images/, labels/, data.yaml with an
    {id: name} mapping), validation set flat (images and labels in one folder, classes.txt)."""
    root = tmp_path_factory.mktemp("own_yolo")
    train = root / "train_set"
    _write_yolo_split(coco_data["train_json"], coco_data["train_images"], train / "images", train / "labels")
    (train / "data.yaml").write_text("path: .\nnames:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(DATA_NAMES)))
    val = root / "val_flat"
    _write_yolo_split(coco_data["val_json"], coco_data["val_images"], val, val)
    (val / "classes.txt").write_text("\n".join(DATA_NAMES) + "\n")
    return {"train": train, "val": val}


def _train_net(args: list, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SARL_DEBUG", None)
    return subprocess.run([sys.executable, str(TRAIN_NET), "--config-file", CONFIG] + args, cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=timeout)


def _saved_num_classes(output_dir: Path) -> int:
    from sarl.config import load_config

    return int(load_config(str(output_dir / "config.yaml")).MODEL.YOLO.NUM_CLASSES)


def _load_train_net():
    import importlib.util

    module_spec = importlib.util.spec_from_file_location("sarl_train_net_own_data", TRAIN_NET)
    train_net = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(train_net)
    return train_net


@pytest.fixture(scope="module")
def coco_run(coco_data, tmp_path_factory) -> Path:
    """The output folder of 2 training iterations on ``coco:TRAIN.json:IMAGES`` given on the command line."""
    out = tmp_path_factory.mktemp("coco_run")
    spec = f"coco:{coco_data['train_json']}:{coco_data['train_images']}"
    result = _train_net(TWO_ITERATIONS + ["OUTPUT_DIR", str(out), "DATASETS.TRAIN", spec,  # a bare name
                                          "DATASETS.TEST", "()", "MODEL.YOLO.NUM_CLASSES", "0"])
    assert result.returncode == 0, result.stderr[-3000:]
    return out


# ------------------------------------------------------------------ end to end (train_net subprocesses)
def test_train_two_iterations_from_a_coco_json_on_the_command_line(coco_run):
    checkpoint = torch.load(coco_run / "model_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["iteration"] == 1  # iterations 0 and 1
    assert _saved_num_classes(coco_run) == 4  # NUM_CLASSES 0 became the json's class count
    assert checkpoint["model"]["head.cls_preds.0.weight"].shape[0] == 4
    assert checkpoint["class_names"] == ["vehicle", "ship", "storage-tank", "airplane"]  # the json's


def test_eval_only_with_the_saved_config_and_a_checkpoint_of_another_class_count(coco_data, coco_run, capsys):
    """In process (``run`` returns the exit status). The README's command: the run's own config.yaml scores."""
    train_net = _load_train_net()
    weights = str(coco_run / "model_final.pth")
    val = f"coco:{coco_data['val_json']}:{coco_data['val_images']}"
    status = train_net.run(["--config-file", str(coco_run / "config.yaml"), "--eval-only", "MODEL.WEIGHTS", weights,
                            "DATASETS.TEST", val, "OUTPUT_DIR", str(coco_run / "eval")])
    assert status == 0
    assert "AI-TOD evaluation results" in capsys.readouterr().out
    # A model of 2 classes cannot use this 4-class head: refused (one line, exit 2) instead of scoring random
    # class outputs after the loader skipped the head's weights.
    with pytest.raises(SystemExit) as stopped:
        train_net.run(["--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS", weights, "DATASETS.TEST", "()",
                       "MODEL.YOLO.NUM_CLASSES", "2", "OUTPUT_DIR", str(coco_run / "eval2")] + TWO_ITERATIONS)
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == (f"error: MODEL.WEIGHTS {weights} was trained for 4 classes but MODEL.YOLO.NUM_CLASSES is "
                         f"2: evaluate with the config it was trained with")


def test_train_two_iterations_from_a_yolo_folder_and_score_with_its_class_names(yolo_data, tmp_path):
    out = tmp_path / "run"
    result = _train_net(TWO_ITERATIONS + ["OUTPUT_DIR", str(out), "DATASETS.TRAIN", f"yolo:{yolo_data['train']}",
                                          "DATASETS.TEST", f"('yolo:{yolo_data['val']}',)",
                                          "MODEL.YOLO.NUM_CLASSES", "0"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model_final.pth").is_file()
    assert _saved_num_classes(out) == 4
    # The final evaluation's per-class table carries the names of the data's names files.
    table = result.stdout[result.stdout.index("Per-class AP"):]
    assert all(name in table.splitlines()[1] for name in DATA_NAMES), table[:500]


def test_num_classes_mismatch_is_one_line(coco_data, tmp_path):
    spec = f"coco:{coco_data['train_json']}:{coco_data['train_images']}"
    result = _train_net(TWO_ITERATIONS + ["OUTPUT_DIR", str(tmp_path / "a"), "DATASETS.TRAIN", spec,
                                          "DATASETS.TEST", "()", "MODEL.YOLO.NUM_CLASSES", "3"])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MODEL.YOLO.NUM_CLASSES is 3" in lines[0] and "4 classes" in lines[0], lines
    assert "set MODEL.YOLO.NUM_CLASSES 4" in lines[0]


def test_num_classes_mismatch_stops_eval_only_before_loading_weights(coco_data, tmp_path, capsys):
    """In process (``run`` returns the exit status): an --eval-only run checks the test set's classes first."""
    train_net = _load_train_net()
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"not read: the class check comes first")
    spec = f"coco:{coco_data['val_json']}:{coco_data['val_images']}"
    status = train_net.run(["--config-file", CONFIG, "--eval-only", "OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHTS",
                            str(weights), "DATASETS.TEST", f"('{spec}',)", "MODEL.YOLO.NUM_CLASSES", "1"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1, lines
    assert f"MODEL.YOLO.NUM_CLASSES is 1 but DATASETS.TEST '{spec}' has 4 classes" in lines[0]


# ------------------------------------------------------------------ in process: layouts, names, config
def test_yolo_layouts_and_class_name_files(yolo_data, tmp_path):
    from sarl.data.datasets.own_data import yolo_class_names, yolo_layout

    train = yolo_data["train"]
    assert yolo_layout(str(train)) == (str(train / "images"), str(train / "labels"))
    assert yolo_class_names(str(train)) == DATA_NAMES  # data.yaml's {id: name}
    assert yolo_layout(str(yolo_data["val"])) == (str(yolo_data["val"]), str(yolo_data["val"]))
    # Ultralytics' split folders: .../images/<split> reads .../labels/<split>, names beside images/.
    split = tmp_path / "ds" / "images" / "val"
    (tmp_path / "ds" / "labels" / "val").mkdir(parents=True)
    split.mkdir(parents=True)
    (tmp_path / "ds" / "obj.names").write_text("a\nb\n")
    assert yolo_layout(str(split)) == (str(split), str(tmp_path / "ds" / "labels" / "val"))
    assert yolo_class_names(str(split)) == ["a", "b"]
    (tmp_path / "ds" / "data.yaml").write_text("names: [x, y, z]\n")  # *.names is looked for before *.yaml
    assert yolo_class_names(str(split)) == ["a", "b"]
    (tmp_path / "ds" / "obj.names").unlink()
    assert yolo_class_names(str(split)) == ["x", "y", "z"]


def test_dataset_names_are_registered_when_the_config_is_loaded(coco_data, yolo_data):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from sarl.config import load_config

    # Without :IMAGE_DIR, images are looked up beside the json: here they are not, so reading names the folder.
    bare = f"coco:{coco_data['val_json']}"
    cfg = load_config(CONFIG, ["DATASETS.TRAIN", f"yolo:{yolo_data['train']}", "DATASETS.TEST", bare,
                               "MODEL.YOLO.NUM_CLASSES", "0"])
    assert cfg.DATASETS.TRAIN == (f"yolo:{yolo_data['train']}",)
    assert cfg.MODEL.YOLO.NUM_CLASSES == 4
    assert MetadataCatalog.get(bare).thing_classes == ["vehicle", "ship", "storage-tank", "airplane"]
    from sarl.data import DatasetFormatError

    with pytest.raises(DatasetFormatError, match="does not exist"):
        DatasetCatalog.get(bare)
    records = DatasetCatalog.get(f"yolo:{yolo_data['train']}")
    assert len(records) == 4 and sum(len(r["annotations"]) for r in records) > 0


def test_bad_dataset_names_and_unknown_class_counts_are_user_errors(tmp_path):
    from sarl.config import UserError, load_config

    with pytest.raises(UserError, match=r"DATASETS.TRAIN: dataset 'coco:a.txt': expected coco:ANN.json"):
        load_config(CONFIG, ["DATASETS.TRAIN", "coco:a.txt"])
    with pytest.raises(UserError, match=r"NUM_CLASSES is 0 .* no dataset .* known classes"):
        load_config("", ["MODEL.YOLO.NUM_CLASSES", "0"])
    missing = tmp_path / "not_here"
    with pytest.raises(UserError, match=f"{missing} does not exist"):
        load_config(CONFIG, ["DATASETS.TRAIN", f"yolo:{missing}", "DATASETS.TEST", "()",
                             "MODEL.YOLO.NUM_CLASSES", "0"])
