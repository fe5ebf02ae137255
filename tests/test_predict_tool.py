"""``tools/predict.py`` as a user meets it: bad arguments stop with one line naming the argument and a non-zero
status (run as a subprocess, as from a shell); a run that predicts nothing fails; an image not larger than
``--slice`` is said to be letterboxed; a video gives an annotated video and per-frame json."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PREDICT = REPO / "tools" / "predict.py"
CONFIG = str(REPO / "configs" / "demo" / "sarl_yolox_synthetic.yaml")
TINY = ["MODEL.CSPDARKNET.WIDTH_MULTIPLIER", "0.125", "MODEL.SARL.FUSED", "False", "INPUT.YOLO.IMG_SIZE", "64",
        "MODEL.YOLO.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "20", "MODEL.DEVICE", "cpu"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _printed(capsys, caplog) -> str:
    """What an in-process run printed and logged: detectron2's ``setup_logger`` is cached per process, so the
    "sarl" logger writes to stdout only in the first test that runs a tool; later ones reach ``caplog``."""
    return capsys.readouterr().out + caplog.text


def _load_predict():
    spec = importlib.util.spec_from_file_location("sarl_predict_tool", PREDICT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    cv2.imwrite(str(folder / "scene.png"), np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    return folder


def _run_tool(*args: str):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SARL_DEBUG", None)
    done = subprocess.run([sys.executable, str(PREDICT), "--config-file", CONFIG, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr.strip().splitlines()


@pytest.mark.parametrize("args, named, what", [
    (["--overlap", "1.0"], "--overlap 1.0", "[0, 1)"),
    (["--slice", "-5"], "--slice -5", "multiple of 32"),
    (["--slice", "7"], "--slice 7", "multiple of 32"),
])
def test_bad_slice_arguments_are_one_line(image_dir, args, named, what):
    status, err = _run_tool("--input", str(image_dir), *args, *TINY)
    assert status != 0
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0] and what in err[0], err


def test_zero_images_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    status, err = _run_tool("--input", str(tmp_path / "empty"), *TINY)
    assert status != 0
    assert len(err) == 1 and "--input" in err[0] and "no image or video file" in err[0], err
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "a.png").write_bytes(b"not a png")
    (unreadable / "b.jpg").write_bytes(b"")
    status, err = _run_tool("--input", str(unreadable), "--output", str(tmp_path / "out"), *TINY)
    assert status != 0
    assert len(err) == 1 and "nothing was predicted" in err[0] and "a.png" in err[0], err


def test_an_image_not_larger_than_slice_is_said_to_be_letterboxed(image_dir, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="sarl")
    predict = _load_predict()
    status = predict.main(["--config-file", CONFIG, "--input", str(image_dir / "scene.png"), "--slice", "96",
                           "--output", str(tmp_path / "out"), *TINY])
    out = _printed(capsys, caplog)
    assert status == 0
    assert "scene.png (80x60) is not larger than the slice size 96 px: predicted whole" in out
    assert "1 images predicted (0 tiled, 1 whole)" in out


def _write_video(path: Path, frames: int, size=(128, 96)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()


def test_a_video_gives_an_annotated_video_and_per_frame_json(tmp_path, capsys, caplog):
    _write_video(tmp_path / "clip.mp4", frames=3)
    (tmp_path / "broken.avi").write_bytes(b"not a video")
    caplog.set_level(logging.INFO, logger="sarl")
    predict = _load_predict()
    status = predict.main(["--config-file", CONFIG, "--input", str(tmp_path / "clip.mp4"), str(tmp_path / "broken.avi"),
                           "--output", str(tmp_path / "out"), "--vis-score", "0", "--class-names", "a,b,c,d", *TINY])
    out = _printed(capsys, caplog)
    assert status == 0, out
    assert "cannot read video" in out and "broken.avi" in out
    frames = json.loads((tmp_path / "out" / "videos" / "clip.json").read_text())
    assert frames["num_frames"] == 3 and [f["frame"] for f in frames["frames"]] == [0, 1, 2]
    assert frames["class_names"] == ["a", "b", "c", "d"] and frames["fps"] == pytest.approx(10.0)
    detections = [d for f in frames["frames"] for d in f["detections"]]
    assert detections and {d["category_name"] for d in detections} <= {"a", "b", "c", "d"}
    for d in detections:
        x, y, w, h = d["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 128.01 and y + h <= 96.01
    annotated = cv2.VideoCapture(str(tmp_path / "out" / "vis" / "clip.mp4"))
    read = 0
    while annotated.read()[0]:
        read += 1
    assert read == 3
    assert "clip.mp4: 3 frames" in out
