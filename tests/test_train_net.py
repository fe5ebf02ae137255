"""End-to-end tests of ``tools/train_net.py`` and ``YOLOTrainer`` on a tiny synthetic set (CPU):

- user errors (wrong config key, unknown dataset) give one line naming them, exit status 2;
- ``--num-gpus 2`` on CPU (Gloo, detectron2's ``launch``): both ranks end with identical weights;
- a run killed with SIGKILL resumes (``--resume``) with the saved iteration, model, optimizer, EMA, scheduler,
  no-aug state and data position, then finishes;
- the no-aug switch replaces the training loader (a mapper without mosaic/mixup/affine, the same data stream);
- AutoAnchor refits a YOLOv5 head's anchors (and its EMA copy's) before a fresh training.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN_NET = REPO / "tools" / "train_net.py"
CONFIG = str(REPO / "configs" / "demo" / "sarl_yolox_synthetic.yaml")


def _load_train_net():
    spec = importlib.util.spec_from_file_location("sarl_train_net", TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_opts(output_dir: str, iters_per_epoch: int = 2, epochs: int = 3, no_aug_epochs: int = 1,
               checkpoint_period: int = 1000) -> list:
    """A nano model on 96 px inputs, batch 2: a step takes a fraction of a second on one core."""
    return [
        "OUTPUT_DIR", output_dir, "MODEL.DEVICE", "cpu", "SEED", "7",
        "MODEL.CSPDARKNET.WIDTH_MULTIPLIER", "0.125", "MODEL.SARL.FUSED", "False",
        "INPUT.YOLO.IMG_SIZE", "96", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.YOLO.ITERS_PER_EPOCH", str(iters_per_epoch), "SOLVER.YOLO.EPOCHS", str(epochs),
        "SOLVER.YOLO.WARMUP_EPOCHS", "1", "SOLVER.YOLO.NO_AUG_EPOCHS", str(no_aug_epochs),
        "SOLVER.EMA.RAMP", "5.0", "SOLVER.CHECKPOINT_PERIOD", str(checkpoint_period),
        "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0",
    ]




# ------------------------------------------------------------------ user errors
def test_wrong_config_key_is_one_line(capsys):
    train_net = _load_train_net()
    status = train_net.run(["--config-file", CONFIG, "SOLVER.YOLO.EPOCH", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and "SOLVER.YOLO.EPOCH" in err[0], err


def test_missing_dataset_is_one_line(capsys):
    train_net = _load_train_net()
    status = train_net.run(["--config-file", CONFIG, "DATASETS.TRAIN", "('no_such_set',)"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and "no_such_set" in err[0] and "DATASETS.TRAIN" in err[0], err


def test_missing_config_file_is_one_line(capsys, tmp_path):
    train_net = _load_train_net()
    assert train_net.run(["--config-file", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


# ------------------------------------------------------------------ DDP on CPU (Gloo)
def _ddp_worker(opts, result_dir):
    """Runs in each of the 2 processes started by detectron2's ``launch``, as ``--num-gpus 2`` does."""
    from detectron2.utils import comm

    from sarl.engine import YOLOTrainer, unwrap_model

    train_net = _load_train_net()
    args = train_net.default_argument_parser().parse_args(["--config-file", CONFIG, "--num-gpus", "2"] + opts)
    cfg = train_net.setup(args)
    trainer = YOLOTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = unwrap_model(trainer.model)
    torch.save({
        "world_size": comm.get_world_size(),
        "backend": torch.distributed.get_backend(),
        "params": {k: v.detach().clone() for k, v in model.named_parameters()},
        "ema_params": {k: v.detach().clone() for k, v in trainer.ema.module.named_parameters()},
        "iteration": trainer.iter,
    }, os.path.join(result_dir, f"rank{comm.get_rank()}.pth"))


def test_two_process_gloo_ranks_stay_identical(tiny_datasets, tmp_path, one_thread):
    from detectron2.engine import launch

    opts = _tiny_opts(str(tmp_path / "out"), iters_per_epoch=2, epochs=2, no_aug_epochs=1)
    launch(_ddp_worker, 2, dist_url="auto", args=(opts, str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pth") for r in range(2)]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" and r["iteration"] == 4 for r in ranks)
    for name, value in ranks[0]["params"].items():
        torch.testing.assert_close(value, ranks[1]["params"][name], rtol=0, atol=0, msg=name)
    for name, value in ranks[0]["ema_params"].items():
        torch.testing.assert_close(value, ranks[1]["ema_params"][name], rtol=0, atol=0, msg=name)
    # Training moved the weights (identical because synchronized, not because nothing happened).
    from sarl.engine import YOLOTrainer

    train_net = _load_train_net()
    fresh = YOLOTrainer.build_model(train_net.load_config(CONFIG, opts))
    start = dict(fresh.named_parameters())
    assert any(not torch.equal(start[k], v) for k, v in ranks[0]["params"].items())


# ------------------------------------------------------------------ SIGKILL + --resume
def _last_checkpoint_iter(output_dir: Path) -> int:
    marker = output_dir / "last_checkpoint"
    if not marker.is_file():
        return -1
    name = marker.read_text().strip()
    if not name.startswith("model_0") or not (output_dir / name).is_file():
        return -1
    return int(name[len("model_"):-len(".pth")])


def test_resume_after_sigkill_restores_every_state(tiny_datasets, tmp_path, one_thread):
    from sarl.engine import YOLOTrainer, unwrap_model

    out = tmp_path / "run"
    # 20 iterations, checkpoints after iterations 2, 5, 8, ...; the no-aug phase starts at iteration 8.
    opts = _tiny_opts(str(out), iters_per_epoch=2, epochs=10, no_aug_epochs=6, checkpoint_period=3)
    env = dict(os.environ, OMP_NUM_THREADS="1", DETECTRON2_DATASETS=str(tiny_datasets))
    proc = subprocess.Popen([sys.executable, str(TRAIN_NET), "--config-file", CONFIG] + opts, cwd=str(REPO), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300  # a guard against a hung child, not a timing assertion
        while _last_checkpoint_iter(out) < 8 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()[-2000:]!r}"
        time.sleep(0.3)  # let torch.save finish the file the marker names
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    saved_iter = _last_checkpoint_iter(out)
    assert 8 <= saved_iter < 19
    checkpoint = torch.load(out / f"model_{saved_iter:07d}.pth", weights_only=False)

    train_net = _load_train_net()
    cfg = train_net.load_config(CONFIG, opts)
    trainer = YOLOTrainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == saved_iter + 1 == checkpoint["iteration"] + 1
    model = unwrap_model(trainer.model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, checkpoint["model"][k]), k
    for k, v in trainer.ema.module.state_dict().items():
        assert torch.equal(v, checkpoint["ema"]["state"][k]), k
    assert trainer.ema.updates == checkpoint["ema"]["updates"] == saved_iter + 1
    saved_trainer = checkpoint["trainer"]
    opt_state = trainer.optimizer.state_dict()
    assert opt_state["state"], "the optimizer state (momentum buffers) was not restored"
    for pid, s in saved_trainer["_trainer"]["optimizer"]["state"].items():
        assert torch.equal(opt_state["state"][pid]["momentum_buffer"], s["momentum_buffer"])
    assert trainer.scheduler.last_epoch == saved_trainer["hooks"]["LRScheduler"]["last_epoch"] == saved_iter + 1
    assert saved_trainer["hooks"]["NoAugHook"] == {"active": True}
    assert trainer.data_seed == saved_trainer["data"]["seed"] == 7
    sampler = trainer._trainer.data_loader.train_sampler
    assert sampler.start_index == (saved_iter + 1) * 2 and sampler.seed == 7

    trainer.train()  # finishes: the no-aug switch is re-applied before the first resumed step
    assert trainer.iter == 20
    assert model.head.use_l1
    assert not trainer._trainer.data_loader.yolo_mapper.augment
    final = torch.load(out / "model_final.pth", weights_only=False)
    assert final["iteration"] == 19 and final["ema"]["updates"] == 20
    assert final["trainer"]["hooks"]["NoAugHook"] == {"active": True}


def test_resumed_run_ends_where_the_uninterrupted_run_ends(tiny_datasets, tmp_path, one_thread):
    """Exact continuation: a run resumed from its iteration-2 checkpoint (mosaic still on, no-aug phase ahead)
    ends with the same weights, EMA and momentum, bit for bit, as the run that was never stopped. This needs the
    data order, every augmentation draw, the schedule, the EMA and the no-aug switch to continue exactly."""
    import shutil

    from sarl.engine import YOLOTrainer

    train_net = _load_train_net()
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    # 10 iterations: checkpoints after iterations 2, 5, 8; no-aug from iteration 6.
    opts = _tiny_opts(str(full_dir), iters_per_epoch=2, epochs=5, no_aug_epochs=2, checkpoint_period=3)
    trainer = YOLOTrainer(train_net.load_config(CONFIG, opts))
    trainer.resume_or_load(resume=False)
    trainer.train()

    resumed_dir.mkdir()
    shutil.copy(full_dir / "model_0000002.pth", resumed_dir / "model_0000002.pth")
    (resumed_dir / "last_checkpoint").write_text("model_0000002.pth")
    opts[opts.index("OUTPUT_DIR") + 1] = str(resumed_dir)
    trainer = YOLOTrainer(train_net.load_config(CONFIG, opts))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 3
    trainer.train()

    full = torch.load(full_dir / "model_final.pth", weights_only=False)
    resumed = torch.load(resumed_dir / "model_final.pth", weights_only=False)
    assert resumed["iteration"] == full["iteration"] == 9
    start = torch.load(full_dir / "model_0000002.pth", weights_only=False)
    assert any(not torch.equal(start["model"][k], v) for k, v in full["model"].items())  # training moved on
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    for k, v in full["ema"]["state"].items():
        assert torch.equal(v, resumed["ema"]["state"][k]), k
    for pid, s in full["trainer"]["_trainer"]["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], resumed["trainer"]["_trainer"]["optimizer"]["state"][pid]["momentum_buffer"])


# ------------------------------------------------------------------ no-aug phase
def test_no_aug_switch_replaces_the_loader_and_continues_the_stream(tiny_datasets, tmp_path, one_thread):
    from sarl.engine import YOLOTrainer, unwrap_model

    train_net = _load_train_net()
    trainer = YOLOTrainer(train_net.load_config(CONFIG, _tiny_opts(str(tmp_path / "out"))))
    trainer.resume_or_load(resume=False)
    before = trainer._trainer.data_loader
    assert before.yolo_mapper.augment and not unwrap_model(trainer.model).head.use_l1
    trainer.iter = 3
    trainer._switch_to_no_aug()
    after = trainer._trainer.data_loader
    assert after is not before and not after.yolo_mapper.augment and unwrap_model(trainer.model).head.use_l1
    # The same stream, from the samples of iteration 3 on (batch 2 per process).
    assert (after.train_sampler.seed, after.train_sampler.start_index) == (trainer.data_seed, 3 * 2)
    assert len(next(trainer._trainer._data_loader_iter)) == 2  # the step runner draws from the new loader


# ------------------------------------------------------------------ AutoAnchor (YOLOv5 head)
def test_autoanchor_refits_before_a_fresh_training(tiny_datasets, tmp_path, one_thread):
    from sarl.engine import YOLOTrainer, unwrap_model

    train_net = _load_train_net()
    # Anchors of 200-300 px recall none of the 2-48 px boxes of the tiny set (anchor/box side ratio over 4).
    big_anchors = str([[[200, 200], [250, 250], [300, 300]]] * 3)
    opts = _tiny_opts(str(tmp_path / "out")) + ["MODEL.YOLO.NUM_CLASSES", "4", "MODEL.YOLOV5.ANCHORS", big_anchors,
                                                "MODEL.YOLOV5.AUTOANCHOR_GENERATIONS", "20",
                                                "DATASETS.TRAIN", "('synthetic_tiny_train',)"]
    trainer = YOLOTrainer(train_net.load_config(str(REPO / "configs" / "Base-YOLOv5.yaml"), opts))
    trainer.resume_or_load(resume=False)
    head = unwrap_model(trainer.model).head
    assert head.anchors.min() == 200
    trainer.before_train()  # the hooks' before_train, as train() runs them
    assert head.anchors.max() < 100  # refitted to the boxes
    assert torch.equal(trainer.ema.module.head.anchors, head.anchors)  # the evaluated copy has them too


# ------------------------------------------------------------------ ablation tool (grid, resumability, tables)
def test_ablation_grid_tables_and_resume(tmp_path, capsys):
    import json

    from sarl.benchmark.ablation import SUMMARY_KEYS, cell_overrides, grid
    from sarl.benchmark.metrics_json import last_evaluation

    spec = importlib.util.spec_from_file_location("sarl_ablation", REPO / "tools" / "ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    args = ablation.get_parser().parse_args(["--output", str(tmp_path)])
    cells = grid(["yolox", "yolov5"], ["yolox"])
    assert len(cells) == 10  # 4 + 4 SARL/SAL cells, 2 extra beta cells for YOLOX
    assert {(c["sarl"], c["sal"]) for c in cells if c["detector"] == "yolov5"} == {
        (False, False), (True, False), (False, True), (True, True)}
    opts = cell_overrides(cells[1], args, seed=3)
    assert opts[opts.index("MODEL.SARL.ENABLED") + 1] == "True" and opts[opts.index("SEED") + 1] == "3"
    # Finished runs (result.json present) are not trained again: main() only reads them, with two jobs at once.
    # Cell i scores AP i with seed 0 and i + 2 with seed 1, so the table shows the mean i + 1 and a spread of 2.
    for i, cell in enumerate(cells):
        for seed in (0, 1):
            out = tmp_path / cell["detector"] / cell["cell"] / f"seed{seed}"
            out.mkdir(parents=True)
            metrics = {k: float(i + 2 * seed) for k in SUMMARY_KEYS}
            metrics["AP-vehicle"] = 2.0 * i
            (out / "result.json").write_text(json.dumps(dict(cell, seed=seed, metrics=metrics)))
    assert ablation.main(["--output", str(tmp_path), "--seeds", "0,1", "--jobs", "2"]) == 0
    table = (tmp_path / "ablation.md").read_text()
    assert "Tables V/VI" in table and "Table VII" in table and "1/ln 2" in table and "vehicle" in table
    assert "seeds 0, 1" in table and "AP spread" in table
    assert "| ✓ | ✓ | ✓ | 4.0 | 2.0 |" in table  # YOLOX + SARL + SAL row (cell 3): mean AP, spread
    report = json.loads((tmp_path / "ablation.json").read_text())
    assert len(report["runs"]) == 20 and report["cells"][3]["ap_per_seed"] == [3.0, 5.0]
    assert (tmp_path / "ablation.png").stat().st_size > 1000
    # One seed: no spread column; the dry run prints each run's command with its own seed and folder.
    assert ablation.main(["--output", str(tmp_path), "--seeds", "1", "--only", "baseline"]) == 0
    assert "AP spread" not in (tmp_path / "ablation.md").read_text()
    capsys.readouterr()
    assert ablation.main(["--output", str(tmp_path / "new"), "--seeds", "7", "--only", "sal", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "SEED 7" in printed and str(tmp_path / "new" / "yolov5" / "sal" / "seed7") in printed
    assert ablation.main(["--output", str(tmp_path), "--seeds", "x"]) == 2
    assert ablation.main(["--output", str(tmp_path), "--jobs", "2", "--device", "cuda"]) == 2
    metrics_json = tmp_path / "metrics.json"
    metrics_json.write_text('{"iteration": 3, "total_loss": 1.0}\n{"iteration": 5, "bbox/AP": 7.5, "bbox/AP50": 9}\n')
    assert last_evaluation(str(metrics_json)) == {"AP": 7.5, "AP50": 9}
