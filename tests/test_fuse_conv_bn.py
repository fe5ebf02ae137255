"""BatchNorm folded into the convolutions of inference models (``sarl.modeling.fuse``, ``TEST.FUSE_CONV_BN``): the
same decoded outputs as the unfused model, for YOLOX (depthwise, SARL on) and YOLOv5, in both memory formats; no
folding of a training-mode model; no saving of a folded one; the config switch reaches the inference builder."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from sarl.checkpoint import YOLOCheckpointer
from sarl.config import load_config
from sarl.inference import build_inference_model
from sarl.inference.export import DecodedDetector
from sarl.modeling.fuse import fuse_conv_bn, is_conv_bn_fused
from sarl.modeling.layers import BaseConv

REPO = Path(__file__).resolve().parents[1]
YOLOX_KIT = str(REPO / "configs" / "kit_ais" / "sarl_yolox_kit_cpu.yaml")  # nano, depthwise, SARL on
YOLOV5 = str(REPO / "configs" / "Base-YOLOv5.yaml")
SMALL = ["MODEL.DEVICE", "cpu", "MODEL.CSPDARKNET.WIDTH_MULTIPLIER", "0.125", "MODEL.CSPDARKNET.DEPTH_MULTIPLIER",
         "0.33", "INPUT.YOLO.IMG_SIZE", "128"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _unfused(config: str, memory_format: str) -> torch.nn.Module:
    """An inference model with BatchNorm kept and statistics far from the initial (0, 1), so that folding them
    changes every weight (with mean 0 and variance 1 a wrong fold would go unnoticed)."""
    torch.manual_seed(0)
    model = build_inference_model(load_config(config, SMALL + ["TEST.FUSE_CONV_BN", "False",
                                                               "MODEL.YOLO.MEMORY_FORMAT", memory_format]))
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            shape = module.running_mean.shape
            module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(shape, generator=generator) * 2 + 0.2)
            module.weight.data.copy_(torch.rand(shape, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(shape, generator=generator) * 0.1)
    for module in model.head.modules():  # the score priors (about 0.01) would make every score alike
        if isinstance(module, torch.nn.Conv2d) and module.bias is not None:
            module.bias.data.zero_()
    return model


@pytest.mark.parametrize("config", [YOLOX_KIT, YOLOV5], ids=["yolox_nano_sarl", "yolov5"])
@pytest.mark.parametrize("memory_format", ["channels_last", "contiguous"])
def test_folded_model_decodes_the_same_boxes_and_scores(config, memory_format):
    unfused = _unfused(config, memory_format)
    fused = fuse_conv_bn(copy.deepcopy(unfused))
    assert is_conv_bn_fused(fused) and not is_conv_bn_fused(unfused)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    weight = next(m.conv.weight for m in fused.modules() if isinstance(m, BaseConv) and m.conv.kernel_size[0] > 1)
    assert weight.is_contiguous(memory_format=torch.channels_last) == (memory_format == "channels_last")
    images = torch.rand(2, 3, 128, 96, generator=torch.Generator().manual_seed(2)) * 255
    with torch.no_grad():
        boxes, scores = DecodedDetector(unfused)(images)
        fused_boxes, fused_scores = DecodedDetector(fused)(images)
    assert scores.std() > 1e-3 and boxes.std() > 1.0  # outputs that vary: not two constant tensors
    torch.testing.assert_close(fused_boxes, boxes, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(fused_scores, scores, rtol=1e-4, atol=1e-5)
    # Folding again changes nothing (idempotent).
    refolded = fuse_conv_bn(fused)
    with torch.no_grad():
        torch.testing.assert_close(DecodedDetector(refolded)(images)[1], fused_scores, rtol=0, atol=0)


def test_folding_a_training_model_is_refused():
    model = _unfused(YOLOX_KIT, "contiguous").train()
    with pytest.raises(ValueError, match="training mode; call model.eval"):
        fuse_conv_bn(model)
    assert not is_conv_bn_fused(model)


def test_the_config_switch_reaches_the_inference_builder():
    folded = build_inference_model(load_config(YOLOX_KIT, SMALL))  # TEST.FUSE_CONV_BN True by default
    kept = build_inference_model(load_config(YOLOX_KIT, SMALL + ["TEST.FUSE_CONV_BN", "False"]))
    assert is_conv_bn_fused(folded) and not is_conv_bn_fused(kept)


def test_a_folded_model_is_not_saved(tmp_path):
    model = build_inference_model(load_config(YOLOX_KIT, SMALL))
    with pytest.raises(ValueError, match="TEST.FUSE_CONV_BN False"):
        YOLOCheckpointer(model, str(tmp_path)).save("model_final")
    assert not list(tmp_path.iterdir())
