"""Timing helpers shared by the benchmarks (medians, bandwidth bound, tables, JSON).

Machines are noisy: every figure is a median over repeats, and every result is reported as a
ratio against references measured in the same run.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], device: str = "cpu", *, warmup: int = 3,
            repeats: int = 10, min_time_s: float = 0.0) -> Dict[str, float]:
    """Median/min/max wall time of ``fn()`` in milliseconds.

    Runs ``warmup`` untimed calls, then at least ``repeats`` timed calls (more while the total is
    below ``min_time_s``).
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: List[float] = []
    start_all = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start_all) < min_time_s:
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 10 * max(repeats, 1):
            break
    return {"median_ms": statistics.median(times), "min_ms": min(times),
            "max_ms": max(times), "repeats": len(times)}


def copy_bandwidth_gbps(device: str = "cpu", nbytes: int = 256 * 2**20, repeats: int = 10) -> float:
    """Measured copy bandwidth in GB/s (bytes read + bytes written per second) of a large
    ``Tensor.copy_``: the memory-bandwidth yardstick for the bound of a fused op."""
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, warmup=2, repeats=repeats)
    return 2 * n * 4 / (t["median_ms"] * 1e-3) / 1e9


def bound_ms(bytes_moved: float, bandwidth_gbps: float) -> float:
    """Lower bound on time (ms) of a pass that must move ``bytes_moved`` bytes."""
    return bytes_moved / (bandwidth_gbps * 1e9) * 1e3


def machine_description(device: str = "cpu") -> Dict[str, object]:
    info: Dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def format_table(rows: Sequence[Dict[str, object]], columns: Sequence[str],
                 title: Optional[str] = None) -> str:
    """Render rows (dicts) as a fixed-width text table with the given columns."""
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(columns)]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.rjust(w) for v, w in zip(row, widths)))
    return "\n".join(lines)


def write_json(path: str, payload: Dict[str, object]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
