"""The training-throughput switches give the results of the plain paths: channels-last models
(``MODEL.YOLO.MEMORY_FORMAT``), the layout-keeping copy around the fused relay ops, BaseConv's out-of-place SiLU
under autograd, the multi-tensor EMA update and the fused optimizers (``SOLVER.YOLO.FUSED_OPTIMIZER``)."""
from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn as nn
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from hypothesis import given, settings
from hypothesis import strategies as st

import sarl.modeling  # noqa: F401  (registers YOLODetector, heads, backbone)
from sarl.config import add_sarl_config
from sarl.engine.ema import ModelEMA
from sarl.engine.optimizer import build_yolo_optimizer
from sarl.modeling.layers import BaseConv, is_channels_last, to_memory_format
from sarl.modeling.meta_arch import resolve_memory_format
from test_meta_arch import scene, tiny_cfg, train_step

pytestmark = pytest.mark.usefixtures("one_thread")


def _kit_like_cfg(memory_format: str):
    """The demo model as the KIT recipe trains it (depthwise YOLOX-nano, SARL, SAL), on a tiny input."""
    cfg = tiny_cfg()
    cfg.MODEL.CSPDARKNET.DEPTHWISE = True
    cfg.MODEL.YOLO.MEMORY_FORMAT = memory_format
    return cfg


def _twin_models():
    torch.manual_seed(0)
    plain = build_model(_kit_like_cfg("contiguous"))
    nhwc = build_model(_kit_like_cfg("channels_last"))
    nhwc.load_state_dict(plain.state_dict())
    return plain, nhwc


def test_memory_format_setting_resolves_per_device_and_rejects_unknown_names():
    assert resolve_memory_format("auto", "cpu") == torch.channels_last
    assert resolve_memory_format("auto", "cuda") == torch.contiguous_format
    assert resolve_memory_format("channels_last", "cuda") == torch.channels_last
    assert resolve_memory_format("contiguous", "cpu") == torch.contiguous_format
    with pytest.raises(ValueError, match="MEMORY_FORMAT"):
        resolve_memory_format("nhwc", "cpu")


def test_default_cpu_model_is_channels_last_and_contiguous_one_is_not():
    cfg = get_cfg()
    add_sarl_config(cfg)
    assert cfg.MODEL.YOLO.MEMORY_FORMAT == "auto"
    plain, _ = _twin_models()
    nhwc = build_model(_kit_like_cfg("auto"))  # MODEL.DEVICE cpu
    # (Depthwise [C, 1, k, k] and 1x1 weights are laid out the same way in both formats.)
    conv_weights = [m.weight for m in nhwc.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[1] > 1
                    and m.weight.shape[-1] > 1]
    assert conv_weights and all(is_channels_last(w) for w in conv_weights)
    assert not any(is_channels_last(m.weight) for m in plain.modules() if isinstance(m, nn.Conv2d))


def test_channels_last_training_step_matches_contiguous_losses_and_gradients():
    # In float64: in float32 both layouts are right but round differently (other summation orders in the
    # convolutions), and training-mode BatchNorm over the tiny maps of a 64 px input amplifies that to ~1e-3.
    plain, nhwc = (m.double() for m in _twin_models())
    torch.manual_seed(1)
    batch = [scene(3), scene(5), scene(1)]
    losses_plain = train_step(plain, copy.deepcopy(batch))
    losses_nhwc = train_step(nhwc, copy.deepcopy(batch))
    assert set(losses_plain) == set(losses_nhwc) == {"loss_box", "loss_obj", "loss_cls"}
    for name in losses_plain:
        torch.testing.assert_close(losses_nhwc[name], losses_plain[name], rtol=1e-6, atol=1e-9, msg=name)
    grads_plain = dict(plain.named_parameters())
    compared = 0
    for name, param in nhwc.named_parameters():
        expected = grads_plain[name].grad
        assert (param.grad is None) == (expected is None), name
        if expected is not None:
            torch.testing.assert_close(param.grad, expected, rtol=1e-6, atol=1e-9, msg=name)
            compared += 1
    assert compared > 100


def test_channels_last_inference_matches_contiguous_and_checkpoints_load_across_layouts():
    plain, nhwc = _twin_models()
    # A checkpoint of the channels-last model loads into a contiguous one unchanged.
    reloaded = build_model(_kit_like_cfg("contiguous"))
    reloaded.load_state_dict(nhwc.state_dict())
    torch.manual_seed(2)
    inputs = [scene(4), scene(2)]
    outputs = []
    with torch.no_grad():
        for model in (plain, nhwc, reloaded):
            model.eval()
            images = model.preprocess_image(copy.deepcopy(inputs))
            assert is_channels_last(images.tensor) == (model is nhwc)
            features = model.backbone(images.tensor)
            outputs.append(model.head([features[f] for f in model.head_in_features]))
    for other in outputs[1:]:
        for field in ("cls_logits", "reg_deltas", "obj_logits"):
            torch.testing.assert_close(getattr(other, field), getattr(outputs[0], field), rtol=1e-4, atol=1e-5,
                                       msg=field)
    torch.testing.assert_close(outputs[2].cls_logits, outputs[0].cls_logits, rtol=0, atol=0)  # same layout


@settings(max_examples=15, deadline=None)
@given(st.sampled_from([torch.channels_last, torch.contiguous_format]),
       st.sampled_from([torch.channels_last, torch.contiguous_format]),
       st.integers(1, 3), st.integers(1, 6), st.integers(1, 5))
def test_to_memory_format_keeps_values_and_returns_gradients_in_the_input_layout(source, target, n, c, hw):
    x = torch.randn(n, c, hw, hw + 1, dtype=torch.float64).contiguous(memory_format=source).requires_grad_()
    y = to_memory_format(x, target)
    assert torch.equal(y, x)
    assert y.is_contiguous(memory_format=target)
    upstream = torch.randn(y.shape, dtype=torch.float64).contiguous(memory_format=target)
    (grad,) = torch.autograd.grad(y, x, upstream)
    assert torch.equal(grad, upstream)
    assert grad.is_contiguous(memory_format=source)
    assert torch.autograd.gradcheck(lambda t: to_memory_format(t, target), (x,))


def test_relay_of_a_channels_last_model_sends_channels_last_gradients_to_the_backbone():
    _, nhwc = _twin_models()
    relay = nhwc.backbone.bottom_up
    assert type(relay).__name__ == "SARLRelay" and relay.fused
    torch.manual_seed(3)
    features = {name: torch.randn(2, shape.channels, 64 // shape.stride, 64 // shape.stride)
                .contiguous(memory_format=torch.channels_last).requires_grad_()
                for name, shape in relay.bottom_up.output_shape().items()}
    plain_features = {k: v.detach().contiguous().requires_grad_() for k, v in features.items()}
    out = relay.relay(features)
    expected = relay.relay(plain_features)
    loss = sum((v * torch.linspace(-1, 1, v.numel()).view(v.shape)).sum() for v in out.values())
    loss_plain = sum((v * torch.linspace(-1, 1, v.numel()).view(v.shape)).sum() for v in expected.values())
    loss.backward()
    loss_plain.backward()
    for name in relay.in_features:
        assert is_channels_last(out[name]), name
        torch.testing.assert_close(out[name], expected[name], rtol=1e-5, atol=1e-6)
        assert is_channels_last(features[name].grad), name
        torch.testing.assert_close(features[name].grad, plain_features[name].grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("requires_grad", [True, False])
def test_baseconv_out_of_place_silu_matches_the_in_place_module(requires_grad):
    torch.manual_seed(4)
    conv = BaseConv(3, 5, 3, 1).train()
    reference = nn.Sequential(conv.conv, copy.deepcopy(conv.bn), nn.SiLU(inplace=True)).train()
    x = torch.randn(2, 3, 9, 9, requires_grad=requires_grad)
    x_ref = x.detach().clone().requires_grad_(requires_grad)
    with torch.set_grad_enabled(requires_grad):
        y, y_ref = conv(x), reference(x_ref)
    assert torch.equal(y, y_ref)
    assert torch.equal(conv.bn.running_mean, reference[1].running_mean)
    if requires_grad:
        upstream = torch.randn_like(y)
        (g,) = torch.autograd.grad(y, x, upstream)
        (g_ref,) = torch.autograd.grad(y_ref, x_ref, upstream)
        assert torch.equal(g, g_ref)


def _per_tensor_ema_update(ema_state, model_state, d):
    """The per-tensor EMA update (the form before the multi-tensor one)."""
    for name, value in ema_state.items():
        if value.dtype.is_floating_point:
            value.mul_(d).add_(model_state[name].to(value.dtype), alpha=1.0 - d)
        else:
            value.copy_(model_state[name])


def test_multi_tensor_ema_update_equals_the_per_tensor_update_bit_for_bit():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(5, 2))
    ema = ModelEMA(model, decay=0.9998, ramp=10.0)
    reference = copy.deepcopy(ema.module.state_dict())
    for step in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
            model[1].num_batches_tracked.add_(1)
        ema.update(model)
        _per_tensor_ema_update(reference, model.state_dict(), ema.decay())
        for name, value in ema.module.state_dict().items():
            assert torch.equal(value, reference[name]), (step, name)
    assert int(ema.module[1].num_batches_tracked) == 4


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_optimizer_matches_the_per_parameter_loop(name):
    torch.manual_seed(6)
    # (No bias before the BatchNorm: its gradient would be rounding noise, which Adam scales up to full steps.)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.SiLU(), nn.Conv2d(4, 2, 1))
    twin = copy.deepcopy(model)
    initial = copy.deepcopy(model)
    fused = build_yolo_optimizer(name, model, 0.01, 0.9, 5e-4, fused=True)
    looped = build_yolo_optimizer(name, twin, 0.01, 0.9, 5e-4, fused=False)
    assert fused.defaults["fused"] and not looped.defaults.get("fused")
    x = torch.randn(4, 3, 8, 8)
    for _ in range(5):
        for net, opt in ((model, fused), (twin, looped)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for p, q, start in zip(model.parameters(), twin.parameters(), initial.parameters()):
        assert not torch.equal(p, start)  # the steps moved every parameter
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_trainer_builds_the_fused_optimizer_from_the_config():
    from sarl.engine import YOLOTrainer

    cfg = _kit_like_cfg("auto")
    cfg.SOLVER.YOLO.OPTIMIZER = "adamw"
    model = build_model(cfg)
    assert cfg.SOLVER.YOLO.FUSED_OPTIMIZER is True
    assert YOLOTrainer.build_optimizer(cfg, model).defaults["fused"]
    cfg.SOLVER.YOLO.FUSED_OPTIMIZER = False
    assert not YOLOTrainer.build_optimizer(cfg, model).defaults.get("fused")


# Run in a fresh interpreter: OpenCV's thread state belongs to the process, and pytest's has touched it already.
_WORKER_THREADS_SCRIPT = """
import json, os, sys
import cv2, numpy as np, torch
from sarl.data.mapper import limit_opencv_threads_in_loader_worker

def run_opencv_pool():  # a resize and a warp of a 1500 px image, as the mapper does: both run on OpenCV's pool
    image = np.ones((1500, 1500, 3), np.float32)
    cv2.resize(image, (2500, 2500))
    cv2.warpAffine(image, np.eye(2, 3), (1500, 1500))

class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 2
    def __getitem__(self, index):
        limit_opencv_threads_in_loader_worker()
        before = len(os.listdir("/proc/self/task"))
        run_opencv_pool()
        return before, len(os.listdir("/proc/self/task"))

if sys.argv[1] == "parent_used_opencv":
    run_opencv_pool()
environ = dict(os.environ)
counts = list(torch.utils.data.DataLoader(Items(), batch_size=None, num_workers=1, timeout=60))
print(json.dumps({"counts": counts, "parent_environ_kept": dict(os.environ) == environ}))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc to count a process's threads")
@pytest.mark.parametrize("parent", ["parent_used_opencv", "parent_untouched"])
def test_loader_workers_add_no_opencv_threads_and_never_hang(parent):
    """A worker adds no OpenCV pool threads, whether its parent had started its own pool before the fork or not
    (``cv2.setNumThreads`` in the child of a parent with a pool hung the test suite; the DataLoader's ``timeout``
    turns such a hang into a failure). Without the setting, the untouched parent's worker starts a pool thread."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _WORKER_THREADS_SCRIPT, parent], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["parent_environ_kept"]  # the main process keeps its own OpenCV setting
    assert all(after <= before for before, after in result["counts"]), result["counts"]
