"""Unit tests of the training engine: lr schedule, parameter groups, EMA, sampler, no-aug hook,
checkpoint loading of EMA weights, gradient clipping. Small modules; no dataset needed."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn as nn
from detectron2.engine.train_loop import TrainerBase
from detectron2.solver import LRMultiplier
from hypothesis import given, settings
from hypothesis import strategies as st

from sarl.engine import (
    AutoAnchorHook,
    EMAHook,
    EpochPlan,
    ModelEMA,
    NoAugHook,
    ResumableTrainingSampler,
    YOLOCheckpointer,
    YOLOStepRunner,
    YOLOXWarmCosineMultiplier,
    build_yolo_sgd,
    yolo_param_groups,
)


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2, bias=False)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


# ------------------------------------------------------------------ schedule
def test_yoloxwarmcos_shape():
    sched = YOLOXWarmCosineMultiplier(max_iter=100, warmup_iters=10, no_aug_iters=20, min_lr_ratio=0.05)
    assert sched.at_iter(0) == 0.0
    assert sched.at_iter(5) == pytest.approx(0.25)  # quadratic warmup
    assert sched.at_iter(10) == pytest.approx(1.0)  # cosine starts at the base lr
    assert sched.at_iter(45) == pytest.approx(0.05 + 0.95 * 0.5)  # cosine midpoint
    for t in (80, 90, 99):  # flat over the no-aug iterations
        assert sched.at_iter(t) == pytest.approx(0.05)
    values = [sched.at_iter(t) for t in range(10, 100)]
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:]))  # non-increasing after warmup


def test_yoloxwarmcos_drives_optimizer_lr():
    net = _TinyNet()
    opt = build_yolo_sgd(net, lr=0.08, momentum=0.9, weight_decay=5e-4)
    scheduler = LRMultiplier(opt, YOLOXWarmCosineMultiplier(20, 4, 5, 0.1), max_iter=20)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    expected = [0.08 * YOLOXWarmCosineMultiplier(20, 4, 5, 0.1).at_iter(t) for t in range(20)]
    assert lrs == pytest.approx(expected)
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)


def test_epoch_plan():
    plan = EpochPlan.from_epochs(iters_per_epoch=7, epochs=10, warmup_epochs=2, no_aug_epochs=3)
    assert (plan.max_iter, plan.warmup_iters, plan.no_aug_start_iter) == (70, 14, 49)
    assert plan.epochs == 10
    # Phases longer than the run shrink, keeping one cosine iteration.
    short = EpochPlan.from_epochs(iters_per_epoch=1, epochs=3, warmup_epochs=5, no_aug_epochs=15)
    assert short.warmup_iters + (short.max_iter - short.no_aug_start_iter) < short.max_iter
    with pytest.raises(ValueError, match="ITERS_PER_EPOCH"):
        EpochPlan.from_epochs(0, 10, 1, 1)
    with pytest.raises(ValueError, match="EPOCHS"):
        EpochPlan.from_epochs(5, 0, 1, 1)


def test_param_groups_decay_conv_weights_only():
    net = _TinyNet()
    groups = yolo_param_groups(net, 5e-4)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    assert decay == {id(net.conv.weight), id(net.fc.weight)}
    assert no_decay == {id(net.conv.bias), id(net.bn.weight), id(net.bn.bias)}
    assert decay | no_decay == {id(p) for p in net.parameters()}


# ------------------------------------------------------------------ EMA
def test_model_ema_update_rule_and_state():
    net = _TinyNet()
    ema = ModelEMA(net, decay=0.9, ramp=3.0)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net.bn.num_batches_tracked.fill_(7)
    ema.update(net)
    d = 0.9 * (1 - math.exp(-1 / 3.0))
    assert ema.decay() == pytest.approx(d)
    for name, value in ema.module.state_dict().items():
        current = net.state_dict()[name]
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, d * start[name] + (1 - d) * current)
        else:
            assert torch.equal(value, current)  # integer buffers are copied
    assert not any(p.requires_grad for p in ema.module.parameters())
    # Round trip through the checkpointable state.
    other = ModelEMA(_TinyNet(), decay=0.9, ramp=3.0)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1
    for (k, a), b in zip(ema.module.state_dict().items(), other.module.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="DECAY"):
        ModelEMA(net, decay=1.0)


@settings(max_examples=20, deadline=None)
@given(updates=st.integers(min_value=0, max_value=10**6), ramp=st.floats(min_value=1.0, max_value=1e4))
def test_ema_decay_ramps_to_base(updates, ramp):
    ema = ModelEMA(nn.Linear(1, 1), decay=0.9998, ramp=ramp)
    d = ema.decay(updates)
    assert 0.0 <= d <= 0.9998
    assert ema.decay(updates + 1) >= d


# ------------------------------------------------------------------ sampler
@settings(max_examples=10, deadline=None)
@given(size=st.integers(1, 13), start=st.integers(0, 40), seed=st.integers(0, 2**31 - 1))
def test_resumable_sampler_continues_the_stream(size, start, seed):
    full = list(itertools.islice(iter(ResumableTrainingSampler(size, seed=seed)), start + size + 10))
    resumed = list(itertools.islice(iter(ResumableTrainingSampler(size, seed=seed, start_index=start)), 10))
    assert resumed == full[start:start + 10]
    assert sorted(full[:size]) == list(range(size))  # each pass is a permutation


@settings(max_examples=10, deadline=None)
@given(size=st.integers(1, 13), start=st.integers(0, 40), world=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_sampler_stream_keys_carry_global_positions(size, start, world, seed):
    """With positions on, each key decodes to (global position, index): the indices are the plain sampler's, the
    positions are this rank's slots of the one stream (rank + k * world), also after a resume."""
    from sarl.data.samplers import StreamRecords, decode_stream_key

    for rank in range(world):
        plain = ResumableTrainingSampler(size, seed=seed, start_index=start)
        keyed = ResumableTrainingSampler(size, seed=seed, start_index=start, with_positions=True)
        for sampler in (plain, keyed):
            sampler._rank, sampler._world_size = rank, world  # as detectron2 sets them from comm under DDP
        indices = list(itertools.islice(iter(plain), 6))
        decoded = [decode_stream_key(k, size) for k in itertools.islice(iter(keyed), 6)]
        assert [index for _, index in decoded] == indices
        assert [position for position, _ in decoded] == [rank + (start + k) * world for k in range(6)]
    records = StreamRecords([{"file_name": f"{i}.png"} for i in range(size)], seed=seed)
    position, index = decoded[-1]
    item = records[position * size + index]
    assert item == {"file_name": f"{index}.png", "sample_seed": (seed, position)}
    assert len(records) == size and "sample_seed" not in records._records[index]  # records are copied


# ------------------------------------------------------------------ no-aug hook
class _CountingTrainer(TrainerBase):
    def run_step(self):
        self.storage.put_scalar("x", 0.0)


def test_no_aug_hook_switches_once_and_survives_resume():
    calls = []
    trainer = _CountingTrainer()
    hook = NoAugHook(start_iter=3, switch_fn=lambda: calls.append(trainer.iter))
    trainer.register_hooks([hook])
    trainer.train(0, 6)
    assert calls == [3] and hook.active
    state = trainer.state_dict()
    assert state["hooks"]["NoAugHook"] == {"active": True}

    # A new process resumes from that state at iteration 5: switches before its first step.
    calls2 = []
    resumed = _CountingTrainer()
    hook2 = NoAugHook(start_iter=3, switch_fn=lambda: calls2.append(resumed.iter))
    resumed.register_hooks([hook2])
    resumed.load_state_dict(state)
    resumed.train(5, 6)
    assert calls2 == [5] and hook2.active

    # Before the phase: no switch.
    calls3 = []
    early = _CountingTrainer()
    early.register_hooks([NoAugHook(start_iter=10, switch_fn=lambda: calls3.append(1))])
    early.train(0, 4)
    assert calls3 == []


def test_ema_hook_updates_every_step():
    net = _TinyNet()
    ema = ModelEMA(net, decay=0.99, ramp=10.0)

    class _T(_CountingTrainer):
        model = net

    trainer = _T()
    trainer.register_hooks([EMAHook(ema)])
    trainer.train(0, 4)
    assert ema.updates == 4


# ------------------------------------------------------------------ AutoAnchor hook
def test_autoanchor_hook_fits_anchors_before_fresh_training_only():
    from detectron2.structures import BoxMode

    from sarl.modeling.heads.yolov5_head import YOLOv5Head

    coco_anchors = [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]],
                    [[116, 90], [156, 198], [373, 326]]]

    class _Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = YOLOv5Head(in_channels=[8, 16, 32], strides=[8, 16, 32], anchors=coco_anchors, num_classes=2)

    rng = torch.Generator().manual_seed(0)
    sizes = 2 + 6 * torch.rand(10, 30, 2, generator=rng)  # 2-8 px boxes: the COCO anchors miss most of them
    dicts = [{"file_name": f"{i}.png", "height": 640, "width": 640,
              "annotations": [{"bbox": [10.0, 10.0, w, h], "bbox_mode": BoxMode.XYWH_ABS} for w, h in image_sizes]}
             for i, image_sizes in enumerate(sizes.tolist())]

    def run(start_iter):
        net = _Net()
        ema = ModelEMA(net)

        class _T(_CountingTrainer):
            model = net

        trainer = _T()
        trainer.register_hooks([AutoAnchorHook(net.head, dicts, 640, generations=10, ema=ema)])
        trainer.train(start_iter, start_iter + 1)
        return net, ema

    resumed, resumed_ema = run(5)  # resumed: the checkpoint's anchors are kept
    torch.testing.assert_close(resumed.head.anchors, torch.tensor(coco_anchors, dtype=torch.float32))
    fresh, fresh_ema = run(0)
    assert fresh.head.anchors.max() < 60  # refitted to the tiny boxes
    torch.testing.assert_close(fresh_ema.module.head.anchors, fresh.head.anchors)  # the EMA copy follows


# ------------------------------------------------------------------ checkpoints: EMA weights for inference
def test_checkpointer_prefers_ema_weights(tmp_path):
    net = _TinyNet()
    ema = ModelEMA(net, decay=0.5, ramp=1.0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(3.0)
    ema.update(net)
    YOLOCheckpointer(net, str(tmp_path), ema=ema).save("model_x")
    path = str(tmp_path / "model_x.pth")

    fresh = _TinyNet()
    YOLOCheckpointer(fresh).resume_or_load(path, resume=False)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, ema.module.state_dict()[k]), k
    raw = _TinyNet()
    YOLOCheckpointer(raw, prefer_ema=False).resume_or_load(path, resume=False)
    assert torch.equal(raw.conv.weight, net.conv.weight)
    assert not torch.equal(raw.conv.weight, fresh.conv.weight)


# ------------------------------------------------------------------ gradient clipping in the step
class _LossNet(_TinyNet):
    def forward(self, batch):
        return {"loss_big": 1e4 * super().forward(torch.stack(batch)).pow(2).sum()}


def test_step_runner_clips_gradients():
    from detectron2.utils.events import EventStorage

    net = _LossNet()
    data = itertools.repeat([torch.randn(3, 8, 8) for _ in range(2)])
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    runner = YOLOStepRunner(net, data, opt, clip_fn=lambda ps: torch.nn.utils.clip_grad_norm_(ps, 1.0))
    with EventStorage(0) as storage:
        runner.iter = 0
        runner.run_step()
        assert storage.history("grad_norm").latest() > 1.0  # the norm before clipping is logged
    total = torch.norm(torch.stack([p.grad.norm() for p in net.parameters() if p.grad is not None]))
    assert total.item() == pytest.approx(1.0, rel=1e-4)
