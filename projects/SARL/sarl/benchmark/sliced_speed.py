"""Sliced prediction of one large image: this project's ``Predictor.predict(image, slice_size=S)`` against SAHI's
``get_sliced_prediction`` running the same detector (``tools/benchmark_sliced.py``).

Each round runs each side in its own process (:mod:`sarl.benchmark.sliced_worker`: warm-up crop, then the whole
image once, timed), ours with the project's python and SAHI's with the python of a scratch environment that
holds SAHI beside the project's packages (:func:`sarl.benchmark.peer_env.ensure_peer_env`), the two sides
alternating first and second from one round to the next. Per side: the medians over the rounds of the wall time,
of the time inside the model and of the process's peak memory (max RSS); the speed ratio is the median of the
rounds' ratios. The two detection sets are matched (:func:`sarl.benchmark.sliced_agreement.match_detections`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

from .peer_env import ensure_peer_env
from .sliced_agreement import Detections, match_detections
from .subprocess_run import log_tail, run_measured

__all__ = ["CUT_RULES", "SAHI_VERSION", "ensure_sahi_env", "ratios", "report_table", "run_benchmark",
           "summarize_side"]

SAHI_VERSION = "0.12.8"
# sahi 0.12.8 asks for opencv-python>=4.12.0.88, whose wheels need numpy 2: the project's OpenCV (any cv2 does for
# what SAHI does with an array) and numpy 1.26 stay.
SAHI_SKIPPED_REQUIREMENTS = ("opencv-python",)
# SAHI's handling of boxes cut by an inner slice edge (sarl.benchmark.sahi_worker): this project's rule applied in
# SAHI's model wrapper, or none (stock SAHI).
CUT_RULES = ("ours", "none")
ROUND_TIMEOUT_S = 7200.0
SIDES = ("ours", "sahi")


def log(message: str) -> None:
    print(f"[benchmark_sliced] {message}", flush=True)


def ensure_sahi_env(env_dir: str) -> str:
    """The python of the SAHI environment in ``env_dir`` (created and filled on first use: needs PyPI)."""
    return ensure_peer_env(env_dir, sys.executable, log=lambda m: log(f"SAHI environment: {m}"), package="sahi",
                           version=SAHI_VERSION, skipped_requirements=SAHI_SKIPPED_REQUIREMENTS)


def _run_side(side: str, python: str, args: argparse.Namespace, detector: Dict[str, Any], round_dir: str
              ) -> Dict[str, Any]:
    result_path = os.path.join(round_dir, f"{side}.json")
    cmd = [python, "-m", "sarl.benchmark.sliced_worker", "--side", side, "--config", detector["config"],
           "--weights", detector["weights"], "--score-thresh", repr(detector["score_thresh"]),
           "--image", args.image, "--slice", str(args.slice), "--overlap", repr(args.overlap),
           "--batch", str(args.batch), "--threads", str(args.threads), "--cut-rule", args.sahi_cut_rule,
           "--result", result_path, "--detections", os.path.join(round_dir, f"{side}.npz")]
    if args.keep_batchnorm:
        cmd.append("--keep-batchnorm")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    log_path = os.path.join(round_dir, f"{side}.log")
    run = run_measured(cmd, env, log_path, timeout_s=ROUND_TIMEOUT_S, cwd=round_dir)
    if run["rc"] != 0:
        raise RuntimeError(f"{side}: the worker failed (exit {run['rc']}); last lines of {log_path}:\n"
                           f"{log_tail(log_path)}")
    with open(result_path) as f:
        result = json.load(f)
    result.update({"process_wall_s": run["wall_s"], "peak_rss_mib": run["peak_rss_mib"],
                   "load_avg_1min_before_after": run["load_avg_1min"]})
    return result


def _median(values: List[float]) -> Optional[float]:
    return float(statistics.median(values)) if values else None


def summarize_side(rounds: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Medians over a side's rounds (the worker results of :func:`_run_side`)."""
    wall = _median([r["wall_s"] for r in rounds])
    model = _median([r["model_s"] for r in rounds])
    tiles = rounds[0]["tiles"]
    return {"wall_s": wall, "tiles": tiles, "tiles_per_s": tiles / wall if wall else None, "model_s": model,
            "outside_model_s": _median([r["wall_s"] - r["model_s"] for r in rounds]),
            "peak_rss_mib": _median([r["peak_rss_mib"] for r in rounds]),
            "rss_after_setup_mib": _median([r["rss_after_setup_mib"] for r in rounds]),
            "detections": rounds[-1]["detections"],
            "same_detection_count_every_round": len({r["detections"] for r in rounds}) == 1,
            "wall_s_per_round": [r["wall_s"] for r in rounds], "model_calls": rounds[-1]["model_calls"]}


def ratios(ours: Dict[str, Any], sahi: Dict[str, Any], round_pairs: List[Dict[str, float]]) -> Dict[str, Any]:
    """``speed``: ours tiles/s over SAHI's (median of the rounds' ratios); the others ours / SAHI of the
    medians (below 1: ours takes less)."""
    def ratio(key: str) -> Optional[float]:
        a, b = ours.get(key), sahi.get(key)
        return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None

    return {"speed": _median([p["sahi"] / p["ours"] for p in round_pairs if p["ours"] > 0]),
            "wall_s": ratio("wall_s"), "model_s": ratio("model_s"), "outside_model_s": ratio("outside_model_s"),
            "peak_rss_mib": ratio("peak_rss_mib")}


def run_benchmark(args: argparse.Namespace, detector: Dict[str, Any], sahi_python: str) -> Dict[str, Any]:
    """Run the rounds and assemble the results (``args``: the tool's arguments with ``image`` resolved)."""
    rounds: Dict[str, List[Dict[str, Any]]] = {side: [] for side in SIDES}
    pythons = {"ours": sys.executable, "sahi": sahi_python}
    for index in range(args.repeats):
        round_dir = os.path.join(args.output, f"round{index}")
        os.makedirs(round_dir, exist_ok=True)
        for side in (SIDES if index % 2 == 0 else SIDES[::-1]):
            result = _run_side(side, pythons[side], args, detector, round_dir)
            log(f"round {index + 1}/{args.repeats} {side}: {result['wall_s']:.2f} s for {result['tiles']} tiles "
                f"({result['model_s']:.2f} s in the model), {result['detections']} detections, "
                f"peak RSS {result['peak_rss_mib']:.0f} MiB")
            rounds[side].append(result)
    last_dir = os.path.join(args.output, f"round{args.repeats - 1}")
    agreement = match_detections(Detections.from_npz(os.path.join(last_dir, "ours.npz")),
                                 Detections.from_npz(os.path.join(last_dir, "sahi.npz")))
    ours, sahi = summarize_side(rounds["ours"]), summarize_side(rounds["sahi"])
    pairs = [{"ours": o["wall_s"], "sahi": s["wall_s"]} for o, s in zip(rounds["ours"], rounds["sahi"])]
    ours["cut_by_the_cap"] = rounds["ours"][-1].get("cut_by_the_cap")
    last_sahi = rounds["sahi"][-1]
    sahi.update({"version": last_sahi.get("sahi"), "settings": last_sahi.get("sahi_settings"),
                 "durations_s": last_sahi.get("sahi_durations_s")})
    height, width = rounds["ours"][-1]["image_hw"]
    return {
        "benchmark": "sliced prediction of one large image: this project's Predictor vs SAHI, same detector",
        "settings": {"image": args.image, "image_hw": [height, width], "slice": args.slice, "overlap": args.overlap,
                     "batch": args.batch, "threads": args.threads, "repeats": args.repeats, "seed": args.seed,
                     "sahi_cut_rule": args.sahi_cut_rule,
                     "batchnorm": "kept" if args.keep_batchnorm else "folded into the convolutions",
                     "warmup": "each process predicts its top-left 2 x slice crop before the timed run"},
        "detector": detector,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "ours": ours,
        "sahi": sahi,
        "same_tile_grid": rounds["ours"][-1]["tile_grid"] == last_sahi["tile_grid"],
        "ratios": ratios(ours, sahi, pairs),
        "agreement": agreement,
        "load_avg_1min_before_after": [r["load_avg_1min_before_after"] for side in SIDES for r in rounds[side]],
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def report_table(payload: Dict[str, Any]) -> str:
    """The side-by-side table and the agreement lines."""
    s, ours, sahi, ratio, agree = (payload["settings"], payload["ours"], payload["sahi"], payload["ratios"],
                                   payload["agreement"])
    rows = [("wall time (s)", "wall_s", "wall_s"), ("tiles/s", "tiles_per_s", "speed"),
            ("in the model (s)", "model_s", "model_s"), ("outside the model (s)", "outside_model_s", "outside_model_s"),
            ("peak RSS (MiB)", "peak_rss_mib", "peak_rss_mib"), ("RSS after set-up (MiB)", "rss_after_setup_mib", None),
            ("detections", "detections", None)]
    cells = [("", "ours", f"SAHI {sahi.get('version') or ''}".strip(), "ours/SAHI")]
    cells += [(label, _fmt(ours.get(key)), _fmt(sahi.get(key)), _fmt(ratio.get(rkey)) if rkey else "")
              for label, key, rkey in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    height, width = s["image_hw"]
    lines = [f"Sliced prediction of a {width}x{height} image: {ours['tiles']} tiles of {s['slice']} px (overlap "
             f"{s['overlap']:g}), batch {s['batch']}, {s['threads']} threads per side, median of {s['repeats']} "
             f"round(s); detector: {payload['detector']['kind']}, score > {payload['detector']['score_thresh']:g}"]
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"speed ours/SAHI (tiles/s, median of the rounds' ratios): {_fmt(ratio.get('speed'))}; same tile "
                 f"grid: {_fmt(payload['same_tile_grid'])}; SAHI cut-box rule: {s['sahi_cut_rule']}; BatchNorm "
                 f"{s.get('batchnorm', 'folded into the convolutions')}")
    lines.append(f"agreement (same class, IoU >= {agree['iou_threshold']:g}, greedy by score): "
                 f"{agree['matched']} pairs = {_fmt(agree['matched_fraction_a'], 4)} of ours, "
                 f"{_fmt(agree['matched_fraction_b'], 4)} of SAHI's; matched pairs: mean IoU "
                 f"{_fmt(agree['mean_iou'], 4)}, mean |score diff| {_fmt(agree['mean_abs_score_diff'])}, "
                 f"max box diff {_fmt(agree['max_box_diff_px'])} px")
    if ours.get("cut_by_the_cap"):
        lines.append("warning: tiles had more detections than the per-tile cap (TEST.DETECTIONS_PER_IMAGE): both sides "
                     "keep the best, but this project's one-past-the-cap check can keep one more per such tile; raise "
                     "--score-thresh")
    return "\n".join(lines)
