"""The report of the real-data benchmark (``tools/benchmark_real.py``): ours/peer ratios, the side-by-side table,
the software versions."""
from __future__ import annotations

import sys
from typing import Any, Dict, Optional

__all__ = ["RATIO_KEYS", "ratios", "report_table", "versions"]

RATIO_KEYS = ("AP", "AP50", "train_images_per_s")


def ratios(ours: Dict[str, Any], peer: Dict[str, Any]) -> Dict[str, Optional[float]]:
    out = {}
    for key in RATIO_KEYS:
        a, b = ours.get(key), peer.get(key)
        out[key] = (a / b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def report_table(payload: Dict[str, Any]) -> str:
    rows = [("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"), ("AP_vt", "AP_vt"), ("AP_t", "AP_t"),
            ("AP_s", "AP_s"), ("AP_m", "AP_m"), ("AP50 class-agnostic", "AP50_agnostic"),
            ("train img/s", "train_images_per_s"), ("train loop (s)", "train_loop_s"),
            ("process wall (s)", "process_wall_s"), ("iterations", "iterations_done"),
            ("images seen", "train_images_seen"), ("epochs", "epochs_done"), ("peak RSS (MiB)", "peak_rss_mib"),
            ("input size", "input_size")]
    ours, peer, ratio = payload.get("ours") or {}, payload.get("peer") or {}, payload.get("ratios") or {}
    cells = [("", "ours (SARL)", "peer (YOLOv8n)", "ours/peer")]
    for label, key in rows:
        cells.append((label, _fmt(ours.get(key)), _fmt(peer.get(key)), _fmt(ratio.get(key))))
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    lines = [f"KIT AIS cars, validation MOS155..179 (13 frames), AI-TOD metrics in %, budget "
             f"{payload['settings']['budget_min']:g} min, {payload['settings']['threads']} threads"]
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    import torch

    out: Dict[str, Optional[str]] = {"python": sys.version.split()[0], "torch": torch.__version__}
    try:
        import detectron2

        out["detectron2"] = detectron2.__version__
    except ImportError:
        out["detectron2"] = None
    try:
        out["sarl"] = metadata.version("sarl")
    except metadata.PackageNotFoundError:
        out["sarl"] = None
    return out
