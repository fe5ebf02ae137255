"""YOLOv5's anchor matching (sarl.modeling.assigners.anchor_match) against hand-worked cases and a
loop-by-loop transcription of the official rule."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sarl.modeling.assigners.anchor_match import match_anchors

# The official P3/P4 anchors (pixels) and an 80x80 image: P3 is 10x10 cells, P4 5x5.
P3_ANCHORS = [[10.0, 13.0], [16.0, 30.0], [33.0, 23.0]]
P4_ANCHORS = [[30.0, 61.0], [62.0, 45.0], [59.0, 119.0]]
ANCHORS = torch.tensor([P3_ANCHORS, P4_ANCHORS])
STRIDES = [8, 16]
GRIDS = [(10, 10), (5, 5)]


def _gt(cx_cells: float, cy_cells: float, w: float, h: float, stride: int = 8) -> torch.Tensor:
    """One GT (cx, cy, w, h) in pixels from a centre given in cells of ``stride``."""
    return torch.tensor([[cx_cells * stride, cy_cells * stride, w, h]])


def test_hand_worked_case_anchors_cells_and_targets():
    # Centre (x, y) = (3.3, 4.8) P3 cells, 6x40 px. Shape: anchor 0 (10x13) worst ratio 40/13 = 3.08,
    # anchor 1 (16x30) 16/6 = 2.67: both < 4; anchor 2 (33x23) 33/6 = 5.5: rejected. P4 anchors are
    # all >= 30 px wide (ratio >= 5): no P4 match.
    # Cells: x frac .3 < .5 -> the left neighbour (column 2); y frac .8 -> the lower cell (row 5).
    matches = match_anchors(_gt(3.3, 4.8, 6.0, 40.0), torch.zeros(1, dtype=torch.long), ANCHORS, STRIDES, GRIDS)
    expected = {(0, a, y, x) for a in (0, 1) for (y, x) in ((4, 3), (4, 2), (5, 3))}
    assert set(matches[0].cells()) == expected and len(matches[0]) == 6
    assert len(matches[1]) == 0

    # Regression targets: centre relative to the chosen cell, size in grid units.
    offset_of_cell = {(4, 3): (0.3, 0.8), (4, 2): (1.3, 0.8), (5, 3): (0.3, -0.2)}
    for (b, a, y, x), box, anchor in zip(matches[0].cells(), matches[0].target_boxes, matches[0].anchors):
        torch.testing.assert_close(box, torch.tensor([*offset_of_cell[(y, x)], 6 / 8, 40 / 8]))
        torch.testing.assert_close(anchor, torch.tensor(P3_ANCHORS[a]) / 8)
    assert matches[0].gt_index.tolist() == [0] * 6


def test_right_and_upper_neighbours():
    # (6.7, 2.2): x frac .7 -> right (column 7); y frac .2 -> upper (row 1). 12x12 px fits all 3 anchors.
    matches = match_anchors(_gt(6.7, 2.2, 12.0, 12.0), torch.zeros(1, dtype=torch.long), ANCHORS, STRIDES, GRIDS)
    cells = {(y, x) for (_, _, y, x) in matches[0].cells()}
    assert cells == {(2, 6), (2, 7), (1, 6)}
    assert {a for (_, a, _, _) in matches[0].cells()} == {0, 1, 2}
    assert len(matches[0]) == 9


def test_border_cells_borrow_no_neighbour_off_the_grid():
    # (0.3, 9.6): left half of the first column (x > 1 fails) and bottom half of the last row
    # (H - y = 0.4 fails > 1): the GT's own cell only.
    matches = match_anchors(_gt(0.3, 9.6, 10.0, 13.0), torch.zeros(1, dtype=torch.long), ANCHORS, STRIDES, GRIDS)
    assert {(y, x) for (_, _, y, x) in matches[0].cells()} == {(9, 0)}
    # (9.7, 0.4): the mirror case.
    matches = match_anchors(_gt(9.7, 0.4, 10.0, 13.0), torch.zeros(1, dtype=torch.long), ANCHORS, STRIDES, GRIDS)
    assert {(y, x) for (_, _, y, x) in matches[0].cells()} == {(0, 9)}


def test_centre_on_a_cell_border_takes_the_left_neighbour_once():
    # x = 5.0 exactly: x % 1 = 0 < .5 (left, column 4). The official right-hand test also fires
    # ((10 - 5) % 1 = 0 < .5) but floor(5 + .5) is the own cell: that duplicate is not produced.
    # y = 5.5: neither half (y % 1 = .5 is not < .5): no vertical neighbour.
    matches = match_anchors(_gt(5.0, 5.5, 10.0, 13.0), torch.zeros(1, dtype=torch.long),
                            ANCHORS[:1, :1], STRIDES[:1], GRIDS[:1])
    assert sorted(matches[0].cells()) == [(0, 0, 5, 4), (0, 0, 5, 5)]


@pytest.mark.parametrize("width, accepted", [(39.9, True), (40.0, False), (2.51, True), (2.5, False)])
def test_shape_ratio_bound_is_strict(width, accepted):
    # Anchor 10x13, anchor_t 4: w/10 must lie strictly inside (1/4, 4).
    matches = match_anchors(_gt(4.5, 4.5, width, 13.0), torch.zeros(1, dtype=torch.long),
                            ANCHORS[:1, :1], STRIDES[:1], GRIDS[:1], anchor_t=4.0)
    assert (len(matches[0]) > 0) == accepted


def test_batch_index_levels_and_empty():
    boxes = torch.cat([_gt(3.3, 4.8, 6.0, 40.0), _gt(2.5, 2.5, 60.0, 60.0, stride=16)])
    batch = torch.tensor([1, 0])
    matches = match_anchors(boxes, batch, ANCHORS, STRIDES, GRIDS)
    # GT 0 (image 1) as in the first case; the 60x60 GT 1 (image 0): on P3 anchors 16x30 (60/16 =
    # 3.75) and 33x23 (2.6) fit, 10x13 (6.0) does not; on P4 all three fit (worst 119/60 = 1.98).
    p3 = {(gt, b, a) for gt, (b, a, _, _) in zip(matches[0].gt_index.tolist(), matches[0].cells())}
    assert p3 == {(0, 1, 0), (0, 1, 1), (1, 0, 1), (1, 0, 2)}
    assert set(matches[1].batch_index.tolist()) == {0} and set(matches[1].gt_index.tolist()) == {1}
    assert {a for (_, a, _, _) in matches[1].cells()} == {0, 1, 2}

    empty = match_anchors(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), ANCHORS, STRIDES, GRIDS)
    assert [len(m) for m in empty] == [0, 0]
    assert empty[0].target_boxes.shape == (0, 4)


def _official_rule_by_loops(boxes, batch, anchors, strides, grids, anchor_t=4.0, g=0.5):
    """The rule of the module docstring, GT by GT, anchor by anchor (slow and plain)."""
    out = []
    for level, (stride, (height, width)) in enumerate(zip(strides, grids)):
        cells = set()
        for gi, (cx, cy, w, h) in enumerate(boxes.tolist()):
            x, y = cx / stride, cy / stride
            for a, (aw, ah) in enumerate(anchors[level].tolist()):
                rw, rh = (w / stride) / (aw / stride), (h / stride) / (ah / stride)
                if max(rw, 1 / rw, rh, 1 / rh) >= anchor_t:
                    continue
                candidates = [(0.0, 0.0)]
                if x % 1 < g and x > 1:
                    candidates.append((1.0, 0.0))
                if y % 1 < g and y > 1:
                    candidates.append((0.0, 1.0))
                if (width - x) % 1 < g and width - x > 1:
                    candidates.append((-1.0, 0.0))
                if (height - y) % 1 < g and height - y > 1:
                    candidates.append((0.0, -1.0))
                for ox, oy in candidates:
                    cx_cell = min(max(math.floor(x - ox * g), 0), width - 1)
                    cy_cell = min(max(math.floor(y - oy * g), 0), height - 1)
                    cells.add((int(batch[gi]), a, cy_cell, cx_cell, gi))
        out.append(cells)
    return out


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 79.9), st.floats(0.0, 79.9), st.floats(1.0, 150.0),
                          st.floats(1.0, 150.0), st.integers(0, 2)), max_size=12))
def test_matches_the_loop_transcription_and_targets_are_decodable(rows):
    boxes = torch.tensor([r[:4] for r in rows], dtype=torch.float64).reshape(-1, 4)
    batch = torch.tensor([r[4] for r in rows], dtype=torch.long)
    matches = match_anchors(boxes, batch, ANCHORS.double(), STRIDES, GRIDS)
    expected = _official_rule_by_loops(boxes, batch, ANCHORS, STRIDES, GRIDS)
    for m, want in zip(matches, expected):
        got = [c + (g,) for c, g in zip(m.cells(), m.gt_index.tolist())]
        assert len(got) == len(set(got)), "a (GT, anchor, cell) triple was produced twice"
        assert set(got) == want
        # Every positive can be reached by the decode: xy in [-0.5, 1.5) cells, wh/anchor in (1/4, 4).
        if len(m):
            xy, wh_ratio = m.target_boxes[:, :2], m.target_boxes[:, 2:] / m.anchors
            assert bool(((xy >= -0.5) & (xy < 1.5)).all())
            assert bool(((wh_ratio > 0.25) & (wh_ratio < 4.0)).all())


def test_bad_inputs_name_the_argument():
    batch = torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match="gt_boxes"):
        match_anchors(torch.zeros(1, 5), batch, ANCHORS, STRIDES, GRIDS)
    with pytest.raises(ValueError, match="gt_boxes.*non-finite"):
        match_anchors(torch.tensor([[1.0, float("nan"), 2.0, 2.0]]), batch, ANCHORS, STRIDES, GRIDS)
    with pytest.raises(ValueError, match="gt_batch_index"):
        match_anchors(torch.ones(1, 4), torch.zeros(2, dtype=torch.long), ANCHORS, STRIDES, GRIDS)
    with pytest.raises(ValueError, match="anchors"):
        match_anchors(torch.ones(1, 4), batch, -ANCHORS, STRIDES, GRIDS)
    with pytest.raises(ValueError, match="anchor_t"):
        match_anchors(torch.ones(1, 4), batch, ANCHORS, STRIDES, GRIDS, anchor_t=1.0)
    with pytest.raises(ValueError, match="grid_sizes"):
        match_anchors(torch.ones(1, 4), batch, ANCHORS, STRIDES, GRIDS[:1])
