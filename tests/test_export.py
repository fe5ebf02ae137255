"""Exports of the detector with decoding inside match the eager model: ``torch.export`` (dynamic batch, fused SARL
ops kept in the graph) and TorchScript; the command-line tool end to end (ONNX: the pinned environment has no
``onnx`` package, so only the skip message is checked)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from sarl.inference import export

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def _export_tool():
    spec = importlib.util.spec_from_file_location("sarl_export_model", REPO / "tools" / "export_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_model(config: str, num_classes: int = 4, fused: bool = False):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import sarl.modeling  # noqa: F401
    from sarl.config import add_sarl_config

    cfg = add_sarl_config(get_cfg())
    cfg.merge_from_file(str(REPO / "configs" / config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.YOLO.NUM_CLASSES = num_classes
    cfg.MODEL.CSPDARKNET.WIDTH_MULTIPLIER = 0.125
    cfg.MODEL.SARL.ENABLED = True
    cfg.MODEL.SARL.FUSED = fused
    cfg.MODEL.YOLO.SCORE_THRESH_TEST = 0.05
    return build_model(cfg).eval()


@pytest.mark.parametrize("config", ["demo/sarl_yolox_synthetic.yaml", "Base-YOLOv5.yaml"])
def test_torchscript_export_matches_eager(config, tmp_path):
    model = _tiny_model(config)
    traced = export.export_torchscript(model, size=64)
    traced.save(str(tmp_path / "model.ts"))
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    diffs = export.compare_with_eager(model, loaded, size=64, batch=2)
    assert diffs["boxes"] < 1e-3 and diffs["scores"] < 1e-5, diffs
    assert "detections_count" not in diffs and diffs.get("detections", 0.0) < 1e-3, diffs
    boxes, scores = loaded(torch.rand(1, 3, 64, 64) * 255)
    num_anchors = boxes.shape[1]
    assert boxes.shape == (1, num_anchors, 4) and scores.shape == (1, num_anchors, 4)
    assert ((scores >= 0) & (scores <= 1)).all()


@pytest.mark.parametrize("config,fused", [("demo/sarl_yolox_synthetic.yaml", True), ("Base-YOLOv5.yaml", False)])
def test_torch_export_matches_eager_with_dynamic_batch(config, fused, tmp_path):
    import sarl.ops

    model = _tiny_model(config, fused=fused)
    program = export.export_program(model, size=64, max_batch=8)
    sarl_ops = {str(n.target) for n in program.graph.nodes if str(n.target).startswith("sarl.")}
    # The fused relay ops stay in the graph as custom ops (the C++ kernels run), else plain aten ops.
    assert sarl_ops == ({"sarl.relay_pool.default", "sarl.relay_gate.default"}
                        if fused and sarl.ops.extension_available() else set()), sarl_ops
    torch.export.save(program, str(tmp_path / "model.pt2"))
    loaded = torch.export.load(str(tmp_path / "model.pt2")).module()
    diffs = export.compare_with_eager(model, loaded, size=64, batch=3)  # exported with batch 2: the batch is dynamic
    assert diffs["boxes"] < 1e-3 and diffs["scores"] < 1e-5, diffs
    assert "detections_count" not in diffs and diffs.get("detections", 0.0) < 1e-3, diffs
    assert loaded(torch.rand(1, 3, 64, 64) * 255)[0].shape[0] == 1


def test_export_command_writes_and_checks_every_format(tmp_path, capsys):
    tool = _export_tool()
    opts = ["MODEL.DEVICE", "cpu", "MODEL.CSPDARKNET.WIDTH_MULTIPLIER", "0.125", "INPUT.YOLO.IMG_SIZE", "64"]
    config = str(REPO / "configs" / "demo" / "sarl_yolox_synthetic.yaml")
    assert tool.main(["--config-file", config, "--output", str(tmp_path), "--format", "all", "--max-batch", "4"]
                     + opts) == 0
    printed = capsys.readouterr().out
    assert printed.count("-> OK") == 2 and "MISMATCH" not in printed, printed
    assert (tmp_path / "model.pt2").stat().st_size > 0 and (tmp_path / "model.ts").stat().st_size > 0
    assert tool.main(["--config-file", config, "--size", "70"] + opts) == 2  # not a multiple of the stride


def test_onnx_reports_missing_package(tmp_path):
    try:
        import onnx  # noqa: F401
    except ImportError:
        message = export.try_export_onnx(export.DecodedDetector(_tiny_model("demo/sarl_yolox_synthetic.yaml")), 64,
                                       str(tmp_path / "m.onnx"))
        assert "onnx" in message and "not installed" in message
    else:
        pytest.skip("onnx is installed; the ONNX path is exercised by tools/export_model.py --format onnx")
