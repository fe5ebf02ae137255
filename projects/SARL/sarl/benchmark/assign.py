"""SimOTA benchmark: sparse vs dense assignment on one dense aerial scene, and the cost of SARL+SAL
in a YOLOX-s training step.

1. Assignment: one 800x800 image, G in {100, 500, 1500} tiny GTs (sides 2-16 px, AI-TOD's range),
   8 classes, predictions scattered around the anchors; levels P3-P5 (strides 8/16/32, 13125
   anchors) and P2-P5 (53125 anchors). Both forms give identical assignments (checked here too).
   Time: median wall time of one call. Peak memory: the highest total of live tensor bytes
   allocated during one call, from ``torch.profiler``'s memory events (``profile_memory=True``:
   every allocation/free of the CPU allocator with its size and time stamp; the running sum's
   maximum is the peak above what existed before the call). Python objects are not counted.
2. Training step: YOLOX-s (depth 0.33, width 0.5, 8 classes) at 640x640, batch 2, 60 tiny GTs per
   image, forward + backward + SGD step, with SARL+SAL on vs off, timed interleaved (off, on, off, ...).

Ratios (dense/sparse time and memory, step on/off) are taken within the same run.
"""
from __future__ import annotations

import argparse
import math
import statistics
from typing import Callable, Dict, List

import torch

from .common import format_table, time_fn

GT_COUNTS = (100, 500, 1500)
QUICK_GT_COUNTS = (100, 1500)
LEVELS = {"P3-P5": (8, 16, 32), "P2-P5": (4, 8, 16, 32)}
IMAGE_SIZE = 800
NUM_CLASSES = 8


def _scene(num_gt: int, strides, seed: int = 0):
    from sarl.modeling.assigners.simota import make_anchor_points

    gen = torch.Generator().manual_seed(seed)
    anchors = make_anchor_points([(math.ceil(IMAGE_SIZE / s),) * 2 for s in strides], strides)
    num_anchors = anchors.num_anchors
    side = torch.rand(num_gt, 2, generator=gen) * 14 + 2
    centre = torch.rand(num_gt, 2, generator=gen) * (IMAGE_SIZE - 16) + 8
    gt_boxes = torch.cat([centre - side / 2, centre + side / 2], dim=1)
    pred_centre = anchors.centers + torch.randn(num_anchors, 2, generator=gen) * anchors.strides[:, None] * 0.5
    pred_side = torch.exp(torch.randn(num_anchors, 2, generator=gen) * 0.5) * anchors.strides[:, None]
    pred_boxes = torch.cat([pred_centre - pred_side / 2, pred_centre + pred_side / 2], dim=1)
    return (anchors, pred_boxes, torch.randn(num_anchors, NUM_CLASSES, generator=gen),
            torch.randn(num_anchors, generator=gen), gt_boxes,
            torch.randint(0, NUM_CLASSES, (num_gt,), generator=gen))


def peak_allocated_bytes(fn: Callable[[], object]) -> int:
    """Peak of live CPU tensor bytes allocated by ``fn()`` (see the module docstring)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def _bench_assign(device: str, quick: bool, repeats: int) -> List[Dict[str, object]]:
    from sarl.modeling.assigners.simota import simota_assign_dense, simota_assign_sparse

    rows = []
    for level_name, strides in LEVELS.items():
        for num_gt in (QUICK_GT_COUNTS if quick else GT_COUNTS):
            args = [t.to(device) if torch.is_tensor(t) else t for t in _scene(num_gt, strides)]
            sparse_result = simota_assign_sparse(*args)
            dense_result = simota_assign_dense(*args)
            same = bool(torch.equal(sparse_result.matched_gt, dense_result.matched_gt))
            t_sparse = time_fn(lambda: simota_assign_sparse(*args), device, warmup=1, repeats=repeats)
            t_dense = time_fn(lambda: simota_assign_dense(*args), device, warmup=1, repeats=max(2, repeats // 2))
            row = {"levels": level_name, "anchors": args[0].num_anchors, "G": num_gt,
                   "num_fg": sparse_result.num_fg, "identical": same,
                   "sparse_ms": t_sparse["median_ms"], "dense_ms": t_dense["median_ms"],
                   "speedup": t_dense["median_ms"] / t_sparse["median_ms"]}
            if device == "cpu":
                mem_sparse = peak_allocated_bytes(lambda: simota_assign_sparse(*args))
                mem_dense = peak_allocated_bytes(lambda: simota_assign_dense(*args))
            else:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                simota_assign_sparse(*args)
                mem_sparse = torch.cuda.max_memory_allocated() - base
                torch.cuda.reset_peak_memory_stats()
                simota_assign_dense(*args)
                mem_dense = torch.cuda.max_memory_allocated() - base
            row.update({"sparse_MiB": mem_sparse / 2**20, "dense_MiB": mem_dense / 2**20,
                        "mem_ratio": mem_dense / max(mem_sparse, 1)})
            rows.append(row)
    return rows


def _yolox_s_cfg(sarl_and_sal: bool):
    from detectron2.config import get_cfg

    from sarl.config import add_sarl_config

    cfg = get_cfg()
    add_sarl_config(cfg)
    cfg.merge_from_file("configs/Base-YOLOX.yaml")
    cfg.MODEL.YOLO.NUM_CLASSES = NUM_CLASSES
    cfg.INPUT.YOLO.IMG_SIZE = 640
    cfg.MODEL.SARL.ENABLED = sarl_and_sal
    cfg.MODEL.SAL.ENABLED = sarl_and_sal
    return cfg


def _bench_train_step(device: str, quick: bool, repeats: int) -> Dict[str, object]:
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances

    import sarl.modeling  # noqa: F401

    size, per_image = 640, 60
    gen = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(2):
        inst = Instances((size, size))
        centre = torch.rand(per_image, 2, generator=gen) * (size - 32) + 16
        side = torch.rand(per_image, 2, generator=gen) * 14 + 2
        inst.gt_boxes = Boxes(torch.cat([centre - side / 2, centre + side / 2], dim=1))
        inst.gt_classes = torch.randint(0, NUM_CLASSES, (per_image,), generator=gen)
        batch.append({"image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=gen),
                      "instances": inst})
    result: Dict[str, object] = {"image_size": size, "batch": 2, "gts_per_image": per_image}
    steps = {}
    for label, enabled in (("off", False), ("on", True)):
        cfg = _yolox_s_cfg(enabled)
        cfg.MODEL.DEVICE = device
        torch.manual_seed(0)
        model = build_model(cfg).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        steps[label] = _train_step_fn(model, optimizer, batch)
        result[f"params_sarl_sal_{label}"] = sum(p.numel() for p in model.parameters())
    # Interleaved (off, on, off, on, ...): a shared machine's load drifts over minutes, and
    # timing one model after the other would fold that drift into the ratio.
    times: Dict[str, List[float]] = {"off": [], "on": []}
    for _ in range(2 if quick else repeats):
        for label in ("off", "on"):
            times[label].append(time_fn(steps[label], device, warmup=0 if times[label] else 1, repeats=1)["median_ms"])
    for label in ("off", "on"):
        result[f"step_ms_sarl_sal_{label}"] = statistics.median(times[label])
    result["step_ratio_on_off"] = result["step_ms_sarl_sal_on"] / result["step_ms_sarl_sal_off"]
    return result


def _train_step_fn(model, optimizer, batch) -> Callable[[], None]:
    from detectron2.utils.events import EventStorage

    def step() -> None:
        with EventStorage(0):
            losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    return step


def run(device: str, args: argparse.Namespace) -> Dict[str, object]:
    quick = bool(getattr(args, "quick", False))
    repeats = getattr(args, "repeats", None) or (3 if quick else 5)
    rows = _bench_assign(device, quick, repeats)
    print(format_table(rows, ["levels", "anchors", "G", "num_fg", "identical", "sparse_ms", "dense_ms", "speedup",
                              "sparse_MiB", "dense_MiB", "mem_ratio"],
                       title=f"SimOTA sparse vs dense, one {IMAGE_SIZE}x{IMAGE_SIZE} image, {NUM_CLASSES} classes "
                             f"({device}, {torch.get_num_threads()} threads)"))
    step = _bench_train_step(device, quick, repeats)
    print(format_table([step], ["image_size", "batch", "step_ms_sarl_sal_off", "step_ms_sarl_sal_on",
                                "step_ratio_on_off"], title="YOLOX-s training step, SARL+SAL on vs off"))
    return {"assign": rows, "train_step": step,
            "memory_method": "torch.profiler profile_memory: max of the running sum of allocation/free events"}
