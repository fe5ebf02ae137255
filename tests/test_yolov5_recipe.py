"""Tests of YOLOv5's optimizer recipe (``SOLVER.YOLO.RECIPE = "yolov5"``, ``sarl.engine.yolov5_recipe``).

The expected numbers come from the YOLOv5 v7.0 ``train.py`` rules written out again here (``_official``,
hand-written nesterov SGD, literal values worked out by hand), never from the code under test:

- nbs 64: the optimizer steps when ``ni - last_opt_step >= accumulate``, accumulate ``max(round(64 / bs), 1)``,
  ramped from 1 over warmup; weight decay ``wd * bs * accumulate / 64``;
- warmup over ``nw = max(round(3 * nb), 100)`` iterations: bias lr 0.1 -> lr0 * lf(epoch), others 0 -> lr0 *
  lf(epoch), momentum 0.8 -> 0.937; ``lf(e) = (1 - e / E) * (1 - 0.01) + 0.01`` per epoch;
- SGD nesterov, no decay on BN weights and biases.
"""
from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import torch
import torch.nn as nn
from detectron2.config import CfgNode, get_cfg
from detectron2.solver import LRMultiplier
from detectron2.utils.events import EventStorage

from sarl.config import add_sarl_config
from sarl.engine import (
    EpochPlan,
    YOLOStepRunner,
    YOLOTrainer,
    YOLOv5Scheduler,
    build_yolo_sgd,
    build_yolov5_recipe,
)

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
YOLOV5_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if "yolov5" in p.name.lower())
YOLOX_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if "yolox" in p.name.lower())

# YOLOv5 v7.0 hyperparameters (hyp.scratch-low.yaml / train.py), written out for the reference.
LR0, LRF, MOMENTUM, WD = 0.01, 0.01, 0.937, 5e-4
WARMUP_BIAS_LR, WARMUP_MOMENTUM, NBS = 0.1, 0.8, 64


# ------------------------------------------------------------------ helpers (independent of the code under test)
class _Net(nn.Module):
    """conv (weight + bias) -> BN -> linear (weight + bias): every kind of parameter group, float64 so that
    weight-decay-sized differences are far above the comparison tolerance."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.double()

    def forward(self, batch: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        x = torch.stack(batch)
        out = self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))
        return {"loss_a": (out - 0.5).pow(2).sum(), "loss_b": out.tanh().sum() * 0.1}


def _batches(n: int, seed: int, size: int = 2) -> List[List[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(3, 6, 6, generator=g, dtype=torch.float64) for _ in range(size)] for _ in range(n)]


def _official(ni: int, nb: int, epochs: float, nw: int, bs: int) -> Dict[str, float]:
    """lr (bias / other), momentum and accumulate at iteration ni, per YOLOv5 v7.0 train.py."""
    epoch = ni // nb
    lf = (1 - epoch / epochs) * (1.0 - LRF) + LRF
    if ni <= nw:
        xi = [0, nw]
        return {"bias": float(np.interp(ni, xi, [WARMUP_BIAS_LR, LR0 * lf])),
                "other": float(np.interp(ni, xi, [0.0, LR0 * lf])),
                "momentum": float(np.interp(ni, xi, [WARMUP_MOMENTUM, MOMENTUM])),
                "accumulate": int(max(1, np.interp(ni, xi, [1, NBS / bs]).round()))}
    return {"bias": LR0 * lf, "other": LR0 * lf, "momentum": MOMENTUM, "accumulate": max(round(NBS / bs), 1)}


def _official_steps(iters: range, nb: int, epochs: float, nw: int, bs: int) -> List[int]:
    """The iterations at which YOLOv5 steps the optimizer (its ``last_opt_step`` rule)."""
    last, steps = -1, []
    for ni in iters:
        if ni - last >= _official(ni, nb, epochs, nw, bs)["accumulate"]:
            steps.append(ni)
            last = ni
    return steps


def _groups(net: _Net) -> Dict[str, List[nn.Parameter]]:
    """YOLOv5's split of this net, by hand."""
    return {"bias": [net.conv.bias, net.bn.bias, net.fc.bias], "decay": [net.conv.weight, net.fc.weight],
            "norm": [net.bn.weight]}


def _grads(net: _Net, batches: List[List[torch.Tensor]], scale: float = 1.0) -> Dict[str, torch.Tensor]:
    """Gradients of the summed losses of ``batches`` (summed over batches) at ``net``'s current weights."""
    net = copy.deepcopy(net).train()
    net.zero_grad(set_to_none=True)
    for batch in batches:
        (sum(net(batch).values()) * scale).backward()
    return {n: p.grad.detach().clone() for n, p in net.named_parameters()}


def _nesterov_step(net: _Net, grads: Dict[str, torch.Tensor], bufs: Dict[str, Optional[torch.Tensor]],
                   lr: Dict[str, float], momentum: float, wd: float) -> None:
    """SGD nesterov, dampening 0, by hand: d = g + wd * p; b = m * b + d (b = d at first); p -= lr * (d + m * b)."""
    names = {id(p): n for n, p in net.named_parameters()}
    with torch.no_grad():
        for kind, params in _groups(net).items():
            for p in params:
                name = names[id(p)]
                d = grads[name] + (wd if kind == "decay" else 0.0) * p
                bufs[name] = d.clone() if bufs.get(name) is None else momentum * bufs[name] + d
                p -= lr["bias" if kind == "bias" else "other"] * (d + momentum * bufs[name])


def _cfg(config: str = "Base-YOLOv5.yaml", *opts: str) -> CfgNode:
    cfg = add_sarl_config(get_cfg())
    cfg.merge_from_file(str(CONFIGS / config))
    cfg.merge_from_list(list(opts))
    return cfg


def _setup(bs: int, nb: int = 10, epochs: int = 30, *opts: str, seed: int = 0):
    """(cfg, model, optimizer, scheduler, recipe) of the yolov5 recipe, built by the trainer's builders, for a
    total batch ``bs`` (the batches fed hold 2 images: only the configured batch enters the formulas)."""
    cfg = _cfg("Base-YOLOv5.yaml", "SOLVER.IMS_PER_BATCH", str(bs), "SOLVER.YOLO.ITERS_PER_EPOCH", str(nb),
               "SOLVER.YOLO.EPOCHS", str(epochs), "SOLVER.YOLO.NO_AUG_EPOCHS", "0", *opts)
    plan = EpochPlan.from_epochs(nb, epochs, cfg.SOLVER.YOLO.WARMUP_EPOCHS, 0)
    torch.manual_seed(seed)
    net = _Net()
    opt = YOLOTrainer.build_optimizer(cfg, net)
    sched = YOLOTrainer.build_lr_scheduler(cfg, opt, plan)
    recipe = build_yolov5_recipe(cfg, plan)
    return cfg, net, opt, sched, recipe


def _runner(net, opt, recipe, batches, loss_scale: float = 1.0) -> YOLOStepRunner:
    return YOLOStepRunner(net, batches, opt, accumulate_fn=recipe.accumulate_at, loss_scale=loss_scale)


def _run(runner: YOLOStepRunner, sched, iters: range, after=None) -> List[int]:
    """Run ``iters`` as the trainer does (step, then the scheduler); returns the iterations that stepped."""
    stepped = []
    with EventStorage(iters.start), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's "scheduler.step() before optimizer.step()"
        for it in iters:
            runner.iter = it
            runner.run_step()
            sched.step()
            if runner.stepped:
                stepped.append(it)
            if after is not None:
                after(it)
    return stepped


def _fast_forward(sched, iters: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(iters):
            sched.step()


def _assert_params(net: _Net, ref: _Net, atol: float = 1e-12) -> None:
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=atol, msg=name)


# ------------------------------------------------------------------ (1) optimizer steps = the official formula
def test_warmup_steps_match_the_official_update():
    """Six warmup iterations at total batch 24 (accumulate 1 while interp(ni) < 1.5; wd x 24 * 3 / 64) equal a
    hand-written nesterov SGD with YOLOv5's lr/momentum of each iteration and its scaled weight decay."""
    bs, nb, epochs = 24, 10, 30
    _, net, opt, sched, recipe = _setup(bs, nb, epochs)
    ref = copy.deepcopy(net)
    batches = _batches(6, seed=1)
    nw = max(round(3 * nb), 100)
    wd = WD * bs * 3 / 64  # accumulate = round(64 / 24) = 3
    assert wd == pytest.approx(5.625e-4)
    bufs: Dict[str, Optional[torch.Tensor]] = {}
    plain = copy.deepcopy(net)  # the same chain with the unscaled decay and a fixed momentum: must differ
    plain_bufs: Dict[str, Optional[torch.Tensor]] = {}

    def check(it: int) -> None:
        o = _official(it, nb, epochs, nw, bs)
        _nesterov_step(ref, _grads(ref, [batches[it]]), bufs, o, o["momentum"], wd)
        _nesterov_step(plain, _grads(plain, [batches[it]]), plain_bufs, o, MOMENTUM, WD)
        _assert_params(net, ref)

    stepped = _run(_runner(net, opt, recipe, batches), sched, range(6), after=check)
    assert stepped == list(range(6))
    assert (net.conv.weight - plain.conv.weight).abs().max() > 1e-9  # the comparison can tell the difference


def test_post_warmup_step_matches_the_official_update():
    """One step at iteration 150 (epoch 15 of 30, warmup over): lr = 0.01 * ((1 - 15/30) * 0.99 + 0.01) =
    0.00505 for every group, momentum 0.937, decay 5e-4 (batch 64: accumulate 1)."""
    bs, nb, epochs = 64, 10, 30
    _, net, opt, sched, recipe = _setup(bs, nb, epochs)
    _fast_forward(sched, 150)
    assert all(g["lr"] == pytest.approx(0.00505, abs=1e-15) for g in opt.param_groups)
    ref = copy.deepcopy(net)
    batch = _batches(1, seed=2)
    stepped = _run(_runner(net, opt, recipe, batch), sched, range(150, 151))
    assert stepped == [150]
    _nesterov_step(ref, _grads(ref, batch), {}, {"bias": 0.00505, "other": 0.00505}, 0.937, 5e-4)
    _assert_params(net, ref)
    assert all(g["nesterov"] for g in opt.param_groups)


# ------------------------------------------------------------------ (2) accumulation
def test_accumulation_steps_every_4_iterations_and_sums_gradients():
    """Total batch 16, nbs 64: the optimizer steps where YOLOv5 would (ramp over the 100 warmup iterations),
    then every 4 iterations; the 4 iterations of a window equal one step on the sum of their gradients."""
    bs, nb, epochs, nw = 16, 10, 30, 100
    _, net, opt, sched, recipe = _setup(bs, nb, epochs)
    batches = _batches(130, seed=3)
    official = _official_steps(range(130), nb, epochs, nw, bs)
    after = [s for s in official if s > nw]
    assert after and all(b - a == 4 for a, b in zip(after, after[1:]))  # (the reference itself)
    last = next(s for s in official if s > 110)
    runner = _runner(net, opt, recipe, batches)
    assert _run(runner, sched, range(last + 1)) == [s for s in official if s <= last]
    assert runner.last_opt_step == last
    assert all(p.grad is None for p in net.parameters())  # zeroed by the step: a fresh window starts

    snap = copy.deepcopy(net)
    bufs = {n: opt.state[p]["momentum_buffer"].clone() for n, p in net.named_parameters()}
    window = range(last + 1, last + 5)
    seen = []
    assert _run(runner, sched, window, after=lambda it: seen.append(copy.deepcopy(net))) == [last + 4]
    for moved in seen[:3]:  # nothing moves before the 4th iteration
        _assert_params(moved, snap, atol=0)
    o = _official(last + 4, nb, epochs, nw, bs)
    epoch = (last + 4) // nb
    assert o["other"] == pytest.approx(LR0 * ((1 - epoch / 30) * 0.99 + 0.01)) and o["momentum"] == MOMENTUM
    feed = batches[last + 1:last + 5]
    _nesterov_step(snap, _grads(snap, feed), bufs, o, o["momentum"], WD * 16 * 4 / 64)
    _assert_params(net, snap)
    # A step on the last iteration's gradients alone lands elsewhere (the sum is what is compared).
    single = copy.deepcopy(seen[0])
    _nesterov_step(single, _grads(single, feed[3:]), {n: b.clone() for n, b in bufs.items()}, o, MOMENTUM, WD)
    assert (single.conv.weight - net.conv.weight).abs().max() > 1e-8


def test_loss_is_scaled_before_backward_only():
    """The runner multiplies the loss by ``loss_scale`` (the number of processes) before backward."""
    _, net, opt, sched, recipe = _setup(64)
    ref = copy.deepcopy(net)
    batch = _batches(1, seed=4)
    _fast_forward(sched, 150)
    _run(_runner(net, opt, recipe, batch, loss_scale=3.0), sched, range(150, 151))
    _nesterov_step(ref, _grads(ref, batch, scale=3.0), {}, {"bias": 0.00505, "other": 0.00505}, 0.937, 5e-4)
    _assert_params(net, ref)


# ------------------------------------------------------------------ (3) warmup values
@pytest.mark.parametrize("ni, bias_lr, lr, momentum", [
    (0, 0.1, 0.0, 0.8),
    # epoch 5: lf = (1 - 5/30) * 0.99 + 0.01 = 0.835; halfway: 0.1 + (0.00835 - 0.1) / 2, 0.00835 / 2
    (50, 0.054175, 0.004175, 0.8685),
    # epoch 9: lf = 0.7 * 0.99 + 0.01 = 0.703; 99/100 of the way
    (99, 0.1 + (0.00703 - 0.1) * 0.99, 0.00703 * 0.99, 0.8 + 0.137 * 0.99),
    (100, 0.0067, 0.0067, 0.937),  # warmup's last iteration (included): epoch 10, lf = 0.67
    (109, 0.0067, 0.0067, 0.937),
    (110, 0.00637, 0.00637, 0.937),  # epoch 11: lf = 19/30 * 0.99 + 0.01 = 0.637
    (299, 0.00043, 0.00043, 0.937),  # last epoch (29): lf = 1/30 * 0.99 + 0.01 = 0.043
])
def test_warmup_and_schedule_values(ni, bias_lr, lr, momentum):
    """nb 10, 30 epochs: nw = max(round(3 * 10), 100) = 100; the lr/momentum in force at iteration ni."""
    _, net, opt, sched, _ = _setup(16, 10, 30)
    _fast_forward(sched, ni)
    assert sched.last_epoch == ni
    bias_ids = {id(p) for p in _groups(net)["bias"]}
    seen = set()
    for g in opt.param_groups:
        is_bias = all(id(p) in bias_ids for p in g["params"])
        assert is_bias or not any(id(p) in bias_ids for p in g["params"])
        assert g["lr"] == pytest.approx(bias_lr if is_bias else lr, abs=1e-12), (g.get("name"), ni)
        assert g["momentum"] == pytest.approx(momentum, abs=1e-12)
        seen.add(is_bias)
    assert seen == {True, False}


def test_accumulate_ramp_and_param_groups():
    _, net, opt, _, recipe = _setup(16, 10, 30)
    # 1 + 3 * ni / 100 rounded (half to even), then 64 / 16 = 4.
    for ni, acc in [(0, 1), (16, 1), (17, 2), (83, 3), (84, 4), (100, 4), (101, 4), (5000, 4)]:
        assert recipe.accumulate_at(ni) == acc, ni
    for ni in range(0, 130):
        assert recipe.accumulate_at(ni) == _official(ni, 10, 30, 100, 16)["accumulate"], ni
    # Groups: decay only on conv/linear weights; none on BN weights and biases.
    by_param = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    kinds = _groups(net)
    assert len(by_param) == sum(len(v) for v in kinds.values())
    assert all(by_param[id(p)] == pytest.approx(WD) for p in kinds["decay"])  # 5e-4 * 16 * 4 / 64
    assert all(by_param[id(p)] == 0.0 for p in kinds["bias"] + kinds["norm"])
    # Batch 4 (configs/aitod/yolov5_aitod.yaml): 16 iterations per update of 64 images; 24: 3 and decay x 72/64.
    for bs, acc, wd in [(4, 16, WD), (24, 3, WD * 72 / 64), (128, 1, WD * 2)]:
        cfg, net, opt, _, recipe = _setup(bs, 10, 30)
        assert recipe.accumulate == acc
        assert max(g["weight_decay"] for g in opt.param_groups) == pytest.approx(wd)


# ------------------------------------------------------------------ resume carries the accumulation state
def test_resume_between_two_steps_is_exact():
    """Checkpoint the runner + scheduler while gradients are pending (after warmup, mid-window), rebuild
    everything from other weights, load, continue: the same weights as the uninterrupted run, bit for bit.
    Without the pending gradients the result differs (so the comparison can fail)."""
    opts = ("SOLVER.YOLO.WARMUP_EPOCHS", "0", "SOLVER.YOLO.MIN_WARMUP_ITERS", "4")
    batches = _batches(20, seed=5)
    _, net, opt, sched, recipe = _setup(16, 10, 30, *opts)
    runner = _runner(net, opt, recipe, batches)
    saved = {}

    # nw = 4: accumulate round(1 + 0.75 ni) = 1, 2, 2, 3, then 4: steps at 0, 2, 6, 10, 14, 18.
    official = _official_steps(range(20), 10, 30, 4, 16)
    assert official == [0, 2, 6, 10, 14, 18]

    def save(it: int) -> None:
        if it == 12:  # iterations 11 and 12 summed, not yet applied
            assert runner.last_opt_step == 10 and not runner.stepped
            buf = io.BytesIO()
            torch.save({"runner": runner.state_dict(), "sched": sched.state_dict(), "model": net.state_dict()}, buf)
            saved["bytes"] = buf.getvalue()

    stepped = _run(runner, sched, range(20), after=save)
    assert stepped == official

    def resumed(drop_pending: bool) -> _Net:
        _, net2, opt2, sched2, recipe2 = _setup(16, 10, 30, *opts, seed=99)
        state = torch.load(io.BytesIO(saved["bytes"]), weights_only=False)
        assert state["runner"]["pending_grads"] is not None
        if drop_pending:
            state["runner"]["pending_grads"] = None
        net2.load_state_dict(state["model"])
        runner2 = _runner(net2, opt2, recipe2, batches[13:])
        runner2.load_state_dict(state["runner"])
        sched2.load_state_dict(state["sched"])
        assert runner2.iter == 12 and runner2.last_opt_step == 10
        assert _run(runner2, sched2, range(13, 20)) == [14, 18]
        return net2

    _assert_params(resumed(False), net, atol=0)
    assert (resumed(True).conv.weight - net.conv.weight).abs().max() > 0


# ------------------------------------------------------------------ (4) YOLOX configs keep the old optimizer
@pytest.mark.parametrize("path", YOLOX_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_yolox_configs_build_the_old_optimizer(path):
    cfg = add_sarl_config(get_cfg())
    cfg.merge_from_file(str(path))
    assert cfg.SOLVER.YOLO.RECIPE == "yolox"
    torch.manual_seed(0)
    net = _Net()
    opt = YOLOTrainer.build_optimizer(cfg, net)
    lr = cfg.SOLVER.YOLO.BASE_LR_PER_IMAGE * cfg.SOLVER.IMS_PER_BATCH
    old = build_yolo_sgd(net, lr, cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY, nesterov=True)
    assert len(opt.param_groups) == len(old.param_groups) == 2
    if cfg.SOLVER.YOLO.OPTIMIZER == "adamw":  # the KIT CPU recipe: same groups and lr, AdamW's update
        assert type(opt) is torch.optim.AdamW
        keys = ("lr", "weight_decay")
        assert all(g["betas"] == (cfg.SOLVER.MOMENTUM, 0.999) for g in opt.param_groups)
    else:
        assert type(opt) is torch.optim.SGD
        keys = ("lr", "momentum", "weight_decay", "nesterov")
    for g, h in zip(opt.param_groups, old.param_groups):
        assert [id(p) for p in g["params"]] == [id(p) for p in h["params"]]
        for key in keys:
            assert g[key] == h[key], key
    assert all(g["lr"] == pytest.approx(cfg.SOLVER.YOLO.BASE_LR_PER_IMAGE * cfg.SOLVER.IMS_PER_BATCH, rel=1e-12)
               for g in opt.param_groups)
    plan = EpochPlan.from_epochs(10, 30, cfg.SOLVER.YOLO.WARMUP_EPOCHS, cfg.SOLVER.YOLO.NO_AUG_EPOCHS)
    sched = YOLOTrainer.build_lr_scheduler(cfg, opt, plan)
    assert isinstance(sched, LRMultiplier) and not isinstance(sched, YOLOv5Scheduler)
    assert build_yolov5_recipe(cfg, plan) is None


@pytest.mark.parametrize("path", YOLOV5_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_yolov5_configs_load_with_the_yolov5_recipe(path):
    cfg = add_sarl_config(get_cfg())
    cfg.merge_from_file(str(path))
    assert cfg.SOLVER.YOLO.RECIPE == "yolov5"
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM, cfg.SOLVER.YOLO.WARMUP_EPOCHS) == (0.01, 0.937, 3)
    recipe = build_yolov5_recipe(cfg, EpochPlan.from_epochs(100, cfg.SOLVER.YOLO.EPOCHS, 3, 0))
    bs = cfg.SOLVER.IMS_PER_BATCH
    assert recipe.accumulate == max(round(64 / bs), 1) and recipe.warmup_iters == 300
    if path.name in ("yolov5_aitod.yaml", "sarl_yolov5_aitod.yaml"):
        assert (bs, recipe.accumulate) == (4, 16)  # the paper's batch 4: one update per 64 images, as YOLOv5
    torch.manual_seed(0)
    opt = YOLOTrainer.build_optimizer(cfg, _Net())
    assert {g["name"] for g in opt.param_groups} == {"bias", "decay", "norm"}


def test_unknown_recipe_is_named():
    cfg = _cfg("Base-YOLOv5.yaml", "SOLVER.YOLO.RECIPE", "yolov8")
    with pytest.raises(ValueError, match="SOLVER.YOLO.RECIPE"):
        YOLOTrainer.build_optimizer(cfg, _Net())



# ------------------------------------------------------------------ the trainer end to end (tiny synthetic set, CPU)


def _trainer_cfg(output_dir: Path):
    """A nano YOLOv5 on 96 px inputs, batch 2, nominal batch 8 (accumulate 4), warmup 4 iterations: steps at
    iterations 0, 2, 6 of 10; checkpoints after 2 (a step), 5 and 8 (gradients pending)."""
    return _cfg("Base-YOLOv5.yaml",
                "OUTPUT_DIR", str(output_dir), "MODEL.DEVICE", "cpu", "SEED", "7",
                "MODEL.YOLO.NUM_CLASSES", "4", "MODEL.YOLOV5.AUTOANCHOR", "False",
                "MODEL.CSPDARKNET.WIDTH_MULTIPLIER", "0.125",
                "INPUT.YOLO.IMG_SIZE", "96", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
                "DATASETS.TRAIN", "('synthetic_tiny_train',)", "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0",
                "SOLVER.YOLO.ITERS_PER_EPOCH", "2", "SOLVER.YOLO.EPOCHS", "5", "SOLVER.YOLO.WARMUP_EPOCHS", "0",
                "SOLVER.YOLO.MIN_WARMUP_ITERS", "4", "SOLVER.YOLO.NOMINAL_BATCH_SIZE", "8",
                "SOLVER.YOLO.NO_AUG_EPOCHS", "1", "SOLVER.EMA.RAMP", "5.0", "SOLVER.CHECKPOINT_PERIOD", "3")


def test_trainer_accumulates_updates_ema_per_step_and_resumes_exactly(tiny_datasets, tmp_path):
    import shutil

    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    trainer = YOLOTrainer(_trainer_cfg(full_dir))
    assert isinstance(trainer.scheduler, YOLOv5Scheduler) and trainer._trainer.loss_scale == 1.0
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer._trainer.last_opt_step == 6
    assert trainer.ema.updates == 3  # one EMA update per optimizer step (0, 2, 6), not per iteration

    full = torch.load(full_dir / "model_final.pth", weights_only=False)
    mid = torch.load(full_dir / "model_0000005.pth", weights_only=False)
    assert mid["trainer"]["_trainer"]["last_opt_step"] == 2 and mid["trainer"]["_trainer"]["pending_grads"]
    assert mid["ema"]["updates"] == 2

    resumed_dir.mkdir()
    shutil.copy(full_dir / "model_0000005.pth", resumed_dir / "model_0000005.pth")
    (resumed_dir / "last_checkpoint").write_text("model_0000005.pth")
    trainer = YOLOTrainer(_trainer_cfg(resumed_dir))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 6 and trainer._trainer.last_opt_step == 2
    trainer.train()
    resumed = torch.load(resumed_dir / "model_final.pth", weights_only=False)
    assert resumed["iteration"] == full["iteration"] == 9
    assert any(not torch.equal(mid["model"][k], v) for k, v in full["model"].items())  # the step at 6 moved it
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    for k, v in full["ema"]["state"].items():
        assert torch.equal(v, resumed["ema"]["state"][k]), k
    opt_full, opt_resumed = full["trainer"]["_trainer"]["optimizer"], resumed["trainer"]["_trainer"]["optimizer"]
    for pid, s in opt_full["state"].items():
        assert torch.equal(s["momentum_buffer"], opt_resumed["state"][pid]["momentum_buffer"])
    assert [g["lr"] for g in opt_full["param_groups"]] == [g["lr"] for g in opt_resumed["param_groups"]]
