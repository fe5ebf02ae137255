"""``tools/benchmark_sliced.py``: this project's sliced prediction against SAHI 0.12.8 running the same detector.

- the agreement of two detection sets (one-to-one by class, IoU >= 0.5, greedy by score) on hand-made detections,
  with exact values;
- the per-side medians, the ratios ours/SAHI and the table on hand-made round results;
- bad arguments stop the tool with one line naming the argument and exit status 2;
- end to end (``--quick``: a 1024 px synthetic mosaic, 320 px tiles, one round): both sides run, on the same tile
  grid, and give the same detections. Skips with the reason when SAHI cannot be installed (pip needs PyPI).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sarl.benchmark.sliced_agreement import Detections, match_detections
from sarl.benchmark.sliced_speed import ratios, report_table, summarize_side

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "benchmark_sliced.py"
# Reused between runs (gitignored): creating it costs a minute of pip.
SAHI_ENV = os.environ.get("SARL_SAHI_ENV") or str(REPO / "output" / "benchmark_sliced" / "sahi_env")


def _run_tool(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=str(REPO))


def test_agreement_matches_by_class_greedy_by_score():
    ours = Detections(boxes=[[0, 0, 10, 10], [1, 0, 11, 10], [100, 100, 110, 110], [200, 200, 210, 210]],
                      scores=[0.9, 0.8, 0.5, 0.4], classes=[0, 0, 1, 0])
    sahi = Detections(boxes=[[0, 0, 10, 10], [100, 100, 110, 110], [2, 0, 12, 10]],
                      scores=[0.7, 0.5, 0.6], classes=[0, 0, 0])
    out = match_detections(ours, sahi)
    # ours[0] takes sahi[0] (IoU 1), ours[1] takes sahi[2] (IoU 90/110); ours[2] has the box of sahi[1] but
    # another class; ours[3] overlaps nothing.
    assert (out["count_a"], out["count_b"], out["matched"]) == (4, 3, 2)
    assert out["matched_fraction_a"] == 0.5
    assert out["matched_fraction_b"] == pytest.approx(2 / 3)
    assert out["mean_iou"] == pytest.approx((1.0 + 90 / 110) / 2)
    assert out["mean_abs_score_diff"] == pytest.approx(0.2)
    assert out["max_abs_score_diff"] == pytest.approx(0.2)
    assert out["max_box_diff_px"] == 1.0


def test_agreement_is_greedy_not_the_best_assignment():
    # ours[0] (best score) takes sahi[1], the box it overlaps most (IoU 90/110), although ours[1] is identical to
    # it; ours[1] is then left with sahi[0] at IoU 60/140 < 0.5: one pair, where an optimal assignment has two.
    ours = Detections(boxes=[[1, 0, 11, 10], [0, 0, 10, 10]], scores=[0.9, 0.5], classes=[3, 3])
    sahi = Detections(boxes=[[4, 0, 14, 10], [0, 0, 10, 10]], scores=[0.9, 0.5], classes=[3, 3])
    out = match_detections(ours, sahi)
    assert out["matched"] == 1
    assert out["mean_iou"] == pytest.approx(90 / 110)
    assert out["mean_abs_score_diff"] == pytest.approx(0.4)
    # The other way round, sahi's best (sahi[0]) finds ours[0] at IoU 70/130 >= 0.5, then sahi[1] takes ours[1].
    assert match_detections(sahi, ours)["matched"] == 2


def test_agreement_threshold_is_inclusive_and_empty_sets_have_no_fraction():
    half = match_detections(Detections([[0, 0, 10, 10]], [0.5], [0]), Detections([[0, 0, 10, 20]], [0.25], [0]))
    assert half["matched"] == 1 and half["mean_iou"] == 0.5 and half["max_box_diff_px"] == 10.0
    assert match_detections(Detections([[0, 0, 10, 10]], [0.5], [0]), Detections([[0, 0, 10, 20.5]], [0.5], [0]),
                            )["matched"] == 0
    empty = match_detections(Detections(np.zeros((0, 4)), [], []), Detections([[0, 0, 4, 4]], [0.3], [1]))
    assert (empty["matched"], empty["matched_fraction_a"], empty["matched_fraction_b"]) == (0, None, 0.0)
    assert empty["mean_iou"] is None and empty["max_box_diff_px"] is None
    with pytest.raises(ValueError, match="iou_threshold"):
        match_detections(Detections([[0, 0, 4, 4]], [0.3], [1]), Detections([[0, 0, 4, 4]], [0.3], [1]), 0.0)


def _round(wall, model, rss, detections=50):
    return {"wall_s": wall, "model_s": model, "tiles": 121, "peak_rss_mib": rss, "rss_after_setup_mib": 700.0,
            "detections": detections, "model_calls": 31}


def test_medians_ratios_and_table():
    ours = summarize_side([_round(10.0, 9.0, 900.0), _round(12.0, 11.5, 950.0), _round(11.0, 10.0, 920.0)])
    sahi = summarize_side([_round(20.0, 9.0, 1000.0), _round(24.0, 11.0, 1100.0), _round(30.0, 10.0, 1050.0)])
    assert ours["wall_s"] == 11.0 and ours["tiles_per_s"] == 11.0 and ours["outside_model_s"] == 1.0
    assert sahi["outside_model_s"] == 13.0 and sahi["peak_rss_mib"] == 1050.0  # medians of 11, 13, 20 / of 3
    pairs = [{"ours": 10.0, "sahi": 20.0}, {"ours": 12.0, "sahi": 24.0}, {"ours": 11.0, "sahi": 30.0}]
    out = ratios(ours, sahi, pairs)
    assert out["speed"] == 2.0  # median of 2, 2 and 30/11
    assert out["wall_s"] == 11.0 / 24.0 and out["outside_model_s"] == 1.0 / 13.0
    assert out["peak_rss_mib"] == 920.0 / 1050.0
    sahi.update({"version": "0.12.8"})
    payload = {"settings": {"image_hw": [6000, 6000], "slice": 640, "overlap": 0.2, "batch": 4, "threads": 2,
                            "repeats": 3, "sahi_cut_rule": "ours"},
               "detector": {"kind": "untrained", "score_thresh": 0.003}, "ours": ours, "sahi": sahi,
               "ratios": out, "same_tile_grid": True,
               "agreement": match_detections(Detections([[0, 0, 4, 4]], [0.3], [1]),
                                             Detections([[0, 0, 4, 4]], [0.3], [1]))}
    table = report_table(payload)
    assert "6000x6000 image: 121 tiles of 640 px" in table
    assert next(line for line in table.splitlines() if line.startswith("tiles/s")).split() == ["tiles/s", "11",
                                                                                              "5.04", "2"]
    assert "speed ours/SAHI (tiles/s, median of the rounds' ratios): 2;" in table
    assert "1 pairs = 1 of ours, 1 of SAHI's" in table


@pytest.mark.parametrize("args, names", [
    (["--slice", "0"], "--slice"),
    (["--overlap", "1.0"], "--overlap"),
    (["--repeats", "0"], "--repeats"),
    (["--weights", "/nonexistent/w.pth"], "--weights"),
    (["--image", "/nonexistent/big.png"], "--image"),
    (["--config", "/nonexistent/c.yaml"], "--config"),
])
def test_bad_arguments_exit_2_with_one_line(args, names, tmp_path):
    result = _run_tool(*args, "--output", str(tmp_path))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], result.stderr


def test_unreadable_image_exits_2(tmp_path):
    bad = tmp_path / "not_an_image.png"
    bad.write_text("text")
    result = _run_tool("--image", str(bad), "--output", str(tmp_path))
    assert result.returncode == 2 and "--image: cannot read" in result.stderr, result.stderr


@pytest.fixture(scope="module")
def sahi_env():
    from sarl.benchmark.sliced_speed import ensure_sahi_env

    try:
        ensure_sahi_env(SAHI_ENV)
    except (subprocess.CalledProcessError, OSError, RuntimeError) as e:
        pytest.skip(f"SAHI cannot be installed into {SAHI_ENV} (pip needs PyPI): {e}")
    return SAHI_ENV


def test_quick_run_same_tiles_and_detections_as_sahi(sahi_env, tmp_path):
    out_json = tmp_path / "result.json"
    result = _run_tool("--quick", "--threads", "1", "--batch", "3", "--output", str(tmp_path), "--json",
                       str(out_json), env={"SARL_SAHI_ENV": sahi_env}, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    payload = json.loads(out_json.read_text())
    assert payload["settings"]["image_hw"] == [1024, 1024] and payload["settings"]["slice"] == 320
    assert payload["same_tile_grid"] is True
    # 1024 px at stride 256: tiles at 0, 256, 512 and 704 along each axis.
    assert payload["ours"]["tiles"] == payload["sahi"]["tiles"] == 16
    assert payload["ours"]["model_calls"] == payload["sahi"]["model_calls"] == 6  # ceil(16 / 3)
    assert payload["sahi"]["version"] == "0.12.8" and payload["sahi"]["settings"]["postprocess_type"] == "NMS"
    assert payload["detector"]["kind"] in ("untrained", "make demo checkpoint")
    agreement = payload["agreement"]
    assert agreement["count_a"] > 0
    assert agreement["count_a"] == agreement["count_b"] == agreement["matched"]
    assert agreement["max_box_diff_px"] < 1e-3 and agreement["max_abs_score_diff"] < 1e-6
    assert payload["ratios"]["speed"] > 0 and payload["ours"]["peak_rss_mib"] > 0
    assert "ours/SAHI" in result.stdout
