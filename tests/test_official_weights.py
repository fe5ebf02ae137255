"""Official YOLOX / YOLOv5 checkpoints through ``MODEL.WEIGHTS``, checked against the official code.

The oracles are the PyPI packages ``yolox==0.3.0`` and ``yolov5==7.0.14`` (installed by scripts/setup_env.sh,
requirements-oracles.txt). They run in a subprocess (this file run as a script: YOLOv5 imports ultralytics, which
patches ``torch.load``/``torch.save`` process-wide): it builds YOLOX-nano, YOLOX-s, YOLOv5n and YOLOv5s with their
own constructors, gives them random weights (random BatchNorm statistics too, so a misplaced BatchNorm shows),
saves them in the official containers (YOLOX ``{"model": state_dict}``; YOLOv5 ``{"model": DetectionModel.half(),
...}`` as its train.py) and runs them on one 96x128 image. The tests load those files through ``MODEL.WEIGHTS``
into the configs/coco models and compare raw outputs (max abs difference <= 1e-4, float32) and decoded boxes and
scores. Without the oracle packages these tests skip, or fail under ``SARL_REQUIRE_ORACLES=1`` (``make test``).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MODELS = ("yolox_nano", "yolox_s", "yolov5n", "yolov5s")
HEIGHT, WIDTH = 96, 128
RAW_ATOL = 1e-4
REQUIRE_ORACLES = os.environ.get("SARL_REQUIRE_ORACLES", "0") == "1"
ORACLE_MISSING = 3  # exit status of the oracle script when a package is missing


# ---------------------------------------------------------------------------------------- oracle side (subprocess)
def _randomise(model: torch.nn.Module, predictions: torch.nn.ModuleList, generator: torch.Generator) -> None:
    """Random BatchNorm affines and statistics (a misplaced BatchNorm then shows), and prediction convs scaled up
    with random biases, so scores spread over (0, 1) and boxes over many sizes (their initial priors make every
    score ~1e-4, where a score comparison could not fail)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = 0.5 + torch.rand(n, generator=generator)
            module.bias.data = 0.1 * torch.randn(n, generator=generator)
            module.running_mean = 0.1 * torch.randn(n, generator=generator)
            module.running_var = 0.5 + torch.rand(n, generator=generator)
    for conv in predictions:
        conv.weight.data *= 4.0
        conv.bias.data = torch.randn(conv.bias.shape, generator=generator)


def _official_yolox(name: str, image_bgr: np.ndarray, out: Path, generator: torch.Generator) -> dict:
    from yolox.exp import get_exp

    model = get_exp(None, name.replace("_", "-")).get_model().eval()  # the Exp's own build and BatchNorm init
    _randomise(model, torch.nn.ModuleList([*model.head.cls_preds, *model.head.reg_preds, *model.head.obj_preds]),
               generator)
    torch.save({"model": model.state_dict(), "start_epoch": 300}, out / f"{name}.pth")
    logits = {"cls": [], "reg": [], "obj": []}
    for kind in logits:
        for conv in getattr(model.head, f"{kind}_preds"):
            conv.register_forward_hook(lambda _m, _i, y, kind=kind: logits[kind].append(y))
    x = torch.from_numpy(np.ascontiguousarray(image_bgr)).permute(2, 0, 1)[None].float()  # BGR 0..255
    with torch.no_grad():
        decoded = model(x)  # [1, A, 4 + 1 + 80]: cx, cy, w, h (pixels), obj and class probabilities
    flat = {k: torch.cat([t.flatten(2) for t in v], 2).permute(0, 2, 1) for k, v in logits.items()}
    return {"cls_logits": flat["cls"], "reg_deltas": flat["reg"], "obj_logits": flat["obj"][..., 0],
            "decoded": decoded}


def _official_yolov5(name: str, image_bgr: np.ndarray, out: Path, generator: torch.Generator) -> dict:
    from copy import deepcopy

    import yolov5
    from yolov5.models.yolo import DetectionModel

    model = DetectionModel(cfg=str(Path(yolov5.__file__).parent / "models" / f"{name}.yaml")).eval()
    _randomise(model, model.model[-1].m, generator)
    model.names = [f"class{i}" for i in range(80)]
    # As train.py saves it: the whole module in half precision; the oracle runs the same rounded weights.
    ckpt = {"epoch": -1, "best_fitness": None, "model": deepcopy(model).half(), "ema": None, "updates": None,
            "optimizer": None, "opt": {"img_size": 640}, "date": "2024-01-01T00:00:00"}
    torch.save(ckpt, out / f"{name}.pt")
    model = model.half().float()
    x = torch.from_numpy(np.ascontiguousarray(image_bgr[..., ::-1])).permute(2, 0, 1)[None].float() / 255  # RGB/255
    with torch.no_grad():
        decoded, raw = model(x)  # [1, A, 85] cx, cy, w, h (pixels), obj, classes; per level [1, 3, H, W, 85]
    return {**{f"raw{i}": r for i, r in enumerate(raw)}, "decoded": decoded}


def write_oracle_outputs(out: Path) -> None:
    """Build the official models, save their weights in the official containers and their outputs on image.npy."""
    try:
        import ultralytics  # noqa: F401  (yolov5's import; missing = oracles not installed)
        import yolov5  # noqa: F401
        import yolox  # noqa: F401
    except ImportError as e:
        print(f"oracle package missing: {e}", file=sys.stderr)
        sys.exit(ORACLE_MISSING)
    # Not pytest's seed 0: the project's modules are created in the official order, so under the same seed their
    # initial weights would equal the oracle's, and weights that failed to load would go unnoticed.
    torch.manual_seed(2024)
    generator = torch.Generator().manual_seed(1)
    image = np.load(out / "image.npy")
    outputs = {}
    for name in MODELS:
        build = _official_yolox if name.startswith("yolox") else _official_yolov5
        outputs[name] = build(name, image, out, generator)
    torch.save(outputs, out / "outputs.pt")


# ---------------------------------------------------------------------------------------- project side (pytest)
@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("official")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[20:60, 30:90] = (40, 200, 120)  # a flat patch beside the noise
    np.save(out / "image.npy", image)
    env = dict(os.environ, YOLO_OFFLINE="true", YOLO_CONFIG_DIR=str(out / "config"), YOLO_VERBOSE="false",
               YOLOV5_CONFIG_DIR=str(out / "config"), YOLOv5_VERBOSE="false", YOLOv5_AUTOINSTALL="false",
               MPLBACKEND="Agg")
    os.makedirs(out / "config", exist_ok=True)
    done = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    if done.returncode == ORACLE_MISSING:
        reason = (f"{done.stderr.strip().splitlines()[-1]} (scripts/setup_env.sh installs yolox==0.3.0, "
                  "yolov5==7.0.14 and requirements-oracles.txt)")
        if REQUIRE_ORACLES:
            pytest.fail(f"{reason} and SARL_REQUIRE_ORACLES=1")
        pytest.skip(reason)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _build(name: str, *opts: str) -> tuple:
    from sarl.config import load_config
    from sarl.engine import YOLOTrainer

    cfg = load_config(str(REPO / "configs" / "coco" / f"{name}.yaml"), ["MODEL.DEVICE", "cpu", *opts])
    return cfg, YOLOTrainer.build_model(cfg).eval()


def _project_outputs(cfg, model, image_bgr: np.ndarray):
    """Raw head outputs and decoded (boxes XYXY, scores) of the project model on the image in ``INPUT.FORMAT``."""
    image = image_bgr[..., ::-1] if cfg.INPUT.FORMAT == "RGB" else image_bgr
    inputs = [{"image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)}]
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        raw = model.head([features[f] for f in model.head_in_features])
        return raw, model.head.decode(raw)


def _cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], -1)


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.float() - b.float()).abs().max())


@pytest.mark.parametrize("name", MODELS)
def test_outputs_match_the_official_model(oracle, name, record_property):
    from sarl.checkpoint import load_inference_weights

    weights = oracle / (f"{name}.pth" if name.startswith("yolox") else f"{name}.pt")
    cfg, model = _build(name, "MODEL.WEIGHTS", str(weights))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_inference_weights(model, cfg.MODEL.WEIGHTS)
    floats = [k for k, v in before.items() if v.is_floating_point()]
    changed = sum(not torch.equal(before[k], model.state_dict()[k]) for k in floats)
    assert changed > 0.9 * len(floats)  # the file's random weights replaced the model's own
    official = torch.load(oracle / "outputs.pt", weights_only=True)[name]
    raw, (boxes, scores) = _project_outputs(cfg, model, np.load(oracle / "image.npy"))

    if name.startswith("yolox"):
        diffs = {k: _max_abs(getattr(raw, k), official[k]) for k in ("cls_logits", "reg_deltas", "obj_logits")}
    else:
        diffs = {f"level{i}": _max_abs(r, official[f"raw{i}"]) for i, r in enumerate(raw)}
    decoded = official["decoded"]
    official_boxes = _cxcywh_to_xyxy(decoded[..., :4])
    official_scores = decoded[..., 4:5] * decoded[..., 5:]
    box_scale = float(official_boxes.abs().max())
    diffs["boxes"] = _max_abs(boxes, official_boxes)
    diffs["scores"] = _max_abs(scores, official_scores)
    record_property("max_abs_differences", json.dumps(diffs))
    print(f"{name}: max abs differences {diffs} (largest box coordinate {box_scale:.1f} px)")
    assert all(v <= RAW_ATOL for k, v in diffs.items() if k != "boxes"), diffs
    # Box coordinates are pixels (up to ~1e3 with random weights): float32 rounding scales with them.
    assert diffs["boxes"] <= RAW_ATOL * max(1.0, box_scale / 100), (diffs, box_scale)
    assert float(official_scores.max()) > 0.25 and box_scale > 1.0  # outputs that could have differed


@pytest.mark.parametrize("name", ["yolox_nano", "yolov5n"])
def test_other_class_count_reinitialises_only_the_class_layers(oracle, name, caplog):
    from sarl.checkpoint import load_inference_weights

    weights = oracle / (f"{name}.pth" if name.startswith("yolox") else f"{name}.pt")
    _, model = _build(name, "MODEL.YOLO.NUM_CLASSES", "3")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO):
        load_inference_weights(model, str(weights))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Class count")]
    assert len(lines) == 1 and "checkpoint has 80 classes, the model 3" in lines[0], lines
    after = model.state_dict()
    if name.startswith("yolox"):
        official = torch.load(weights, weights_only=True)["model"]
        for level in range(3):
            assert torch.equal(after[f"head.cls_preds.{level}.weight"], before[f"head.cls_preds.{level}.weight"])
            assert torch.equal(after[f"head.reg_preds.{level}.weight"], official[f"head.reg_preds.{level}.weight"])
        assert torch.equal(after["backbone.bottom_up.bottom_up.stem.conv.conv.weight"],
                           official["backbone.backbone.stem.conv.conv.weight"])
    else:
        rows = after["head.predictors.0.weight"].view(3, 8, -1)
        fresh = before["head.predictors.0.weight"].view(3, 8, -1)
        assert torch.equal(rows[:, 5:], fresh[:, 5:])  # class rows: the model's own
        assert not torch.equal(rows[:, :5], fresh[:, :5])  # box and objectness rows: the file's
        assert torch.equal(after["head.anchors"], after["head.anchors"].new_tensor(
            [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]], [[116, 90], [156, 198], [373, 326]]]))


def test_sarl_relay_keeps_its_initialisation(oracle, caplog):
    from sarl.checkpoint import load_inference_weights

    _, model = _build("yolox_nano", "MODEL.SARL.ENABLED", "True")
    relay = {k: v.clone() for k, v in model.state_dict().items()
             if k.startswith("backbone.bottom_up.") and not k.startswith("backbone.bottom_up.bottom_up.")}
    with caplog.at_level(logging.INFO):
        load_inference_weights(model, str(oracle / "yolox_nano.pth"))
    assert relay and all(torch.equal(model.state_dict()[k], v) for k, v in relay.items())
    assert any(f"SARL relay: {len(relay)} tensors" in r.getMessage() for r in caplog.records)


def test_wrong_size_is_one_error_naming_the_keys(oracle):
    from sarl.checkpoint import load_inference_weights
    from sarl.checkpoint_convert import OfficialWeightsError

    _, model = _build("yolox_nano")
    with pytest.raises(OfficialWeightsError) as error:
        load_inference_weights(model, str(oracle / "yolox_s.pth"))
    message = str(error.value)
    assert "\n" not in message and "mis-shaped" in message and "stem.conv.conv.weight" in message
    assert "the checkpoint's stem has 32 channels, the model's 16" in message
    with pytest.raises(OfficialWeightsError, match="the checkpoint's stem has 32 channels, the model's 16"):
        load_inference_weights(_build("yolov5n")[1], str(oracle / "yolov5s.pt"))


def test_convert_weights_tool(oracle, tmp_path, capsys):
    import importlib.util

    from sarl.checkpoint import load_inference_weights

    spec = importlib.util.spec_from_file_location("convert_weights", REPO / "tools" / "convert_weights.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    converted = tmp_path / "yolov5n_converted.pth"
    base = ["--config-file", str(REPO / "configs" / "coco" / "yolov5n.yaml"), "--output", str(converted)]
    assert tool.main(base + ["--weights", str(oracle / "yolov5n.pt")]) == 0
    saved = torch.load(converted, weights_only=True)  # plain tensors and names: no pickled classes left
    assert saved["class_names"][:2] == ["class0", "class1"]
    direct, via_file = _build("yolov5n")[1], _build("yolov5n")[1]
    load_inference_weights(direct, str(oracle / "yolov5n.pt"))
    assert load_inference_weights(via_file, str(converted))["class_names"] == saved["class_names"]
    assert all(torch.equal(v, via_file.state_dict()[k]) for k, v in direct.state_dict().items())

    capsys.readouterr()
    assert tool.main(base + ["--weights", str(converted)]) == 2  # already converted: not an official file
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither an official YOLOX nor an official YOLOv5 checkpoint" in err[0], err


def test_restricted_unpickler_runs_no_code_from_the_file(tmp_path, monkeypatch):
    """A file that names a YOLOv5 class and a callable outside the allow-list is refused before the call."""
    from sarl.checkpoint_convert import OfficialWeightsError, read_yolov5_checkpoint

    marker = tmp_path / "created_by_the_file"

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    fake = types.ModuleType("models.yolo")
    model_class = type("DetectionModel", (torch.nn.Module,), {"__module__": "models.yolo"})
    fake.DetectionModel = model_class
    monkeypatch.setitem(sys.modules, "models", types.ModuleType("models"))
    monkeypatch.setitem(sys.modules, "models.yolo", fake)
    path = tmp_path / "evil.pt"
    torch.save({"model": model_class(), "payload": Payload()}, path)
    monkeypatch.delitem(sys.modules, "models.yolo")
    with pytest.raises(OfficialWeightsError, match=r"os\.makedirs|posix\.makedirs"):
        read_yolov5_checkpoint(str(path))
    assert not marker.exists()
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "plain.pt")
    assert read_yolov5_checkpoint(str(tmp_path / "plain.pt")) is None  # nothing of YOLOv5's: not read here


if __name__ == "__main__":
    write_oracle_outputs(Path(sys.argv[1]))
