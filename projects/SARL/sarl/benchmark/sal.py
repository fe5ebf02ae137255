"""SAL op benchmark: forward+backward of the fused scale-adaptive IoU loss vs its eager reference,
torch.compile of the reference, torchvision's complete_box_iou_loss (context), and the
memory-bandwidth bound (bytes the fused op must move / copy bandwidth measured in this run).

Setting: float32 xyxy boxes, loss_type="iou2", normalize="batch" (the paper's SAL), reduction="sum".
"""
from __future__ import annotations

import argparse
from typing import Callable, Dict, List

import torch

from .common import bound_ms, copy_bandwidth_gbps, format_table, time_fn

SIZES = (1_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 100_000)
# A fused forward+backward must at least read pred and target (2 x 16 B) and write d loss/d pred
# (16 B) per box; everything else (the area min/max pass, the scaling in backward) is extra.
BYTES_PER_BOX = 48
MIN_TIME_S = 0.3  # timed seconds per figure (at least; time_fn stops at 10 x repeats calls)


def _boxes(n: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(n, 2, generator=g) * 800
    wh = torch.rand(n, 2, generator=g) * 60 + 1
    target = torch.cat([xy, xy + wh], 1)
    pred = target + torch.randn(n, 4, generator=g) * 3
    return pred.to(device), target.to(device)


def _fwd_bwd(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], pred: torch.Tensor,
             target: torch.Tensor) -> Callable[[], None]:
    p = pred.clone().requires_grad_(True)

    def step() -> None:
        p.grad = None
        loss_fn(p, target).backward()

    return step


def run(device: str, args: argparse.Namespace) -> Dict[str, object]:
    import torchvision

    from sarl.ops import extension_available, scale_adaptive_iou_loss
    from sarl.ops.sal_reference import PAPER_SAL_BETA, sal_loss_core

    if not extension_available():
        print("[sal] WARNING: sarl._C is not built: 'fused' times the reference fallback")
    quick = getattr(args, "quick", False)
    repeats = getattr(args, "repeats", None) or (3 if quick else 10)
    sizes = QUICK_SIZES if quick else SIZES

    def fused(p, t):
        return scale_adaptive_iou_loss(p, t)

    def reference(p, t):
        return sal_loss_core(p, t, beta=PAPER_SAL_BETA, loss_type="iou2", box_format="xyxy", normalize="batch",
                             batch_index=None, area_lo=0.0, area_hi=0.0, weight=None, reduction="sum", eps=1e-7)

    def tv_ciou(p, t):
        return torchvision.ops.complete_box_iou_loss(p, t, reduction="sum")

    bandwidth = copy_bandwidth_gbps(device)
    rows: List[Dict[str, object]] = []
    for n in sizes:
        pred, target = _boxes(n, device)
        # A fresh compiled function per size, so each size is measured with its own static graph.
        compiled = torch.compile(reference, dynamic=False)
        times = {}
        for name, fn in (("fused", fused), ("eager", reference), ("compiled", compiled), ("tv_ciou", tv_ciou)):
            reps = max(3, repeats // 3) if (name != "fused" and n >= 1_000_000) else repeats
            # At least MIN_TIME_S of timed calls: at small N a call takes ~0.1 ms, and ten of them give a
            # median that the machine's noise moves by tens of percent.
            times[name] = time_fn(_fwd_bwd(fn, pred, target), device, warmup=2, repeats=reps,
                                  min_time_s=MIN_TIME_S)["median_ms"]
        bound = bound_ms(BYTES_PER_BOX * n, bandwidth)
        rows.append({
            "N": n,
            "fused_ms": times["fused"],
            "eager_ms": times["eager"],
            "compiled_ms": times["compiled"],
            "tv_ciou_ms": times["tv_ciou"],
            "bound_ms": bound,
            "eager/fused": times["eager"] / times["fused"],
            "compiled/fused": times["compiled"] / times["fused"],
            "fused/bound": times["fused"] / bound,
        })
    columns = ["N", "fused_ms", "eager_ms", "compiled_ms", "tv_ciou_ms", "bound_ms",
               "eager/fused", "compiled/fused", "fused/bound"]
    print(format_table(rows, columns, title=f"SAL forward+backward on {device} (float32, iou2, batch, sum); "
                                            f"copy bandwidth {bandwidth:.1f} GB/s, {torch.get_num_threads()} threads"))
    return {
        "setting": "float32 xyxy, loss_type=iou2, normalize=batch, reduction=sum, forward+backward",
        "bytes_per_box_bound": BYTES_PER_BOX,
        "copy_bandwidth_gbps": bandwidth,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
