"""YOLOv5's anchor matching (``build_targets`` of ultralytics/yolov5 ``utils/loss.py``), per level.

A ground truth (GT) is matched to every anchor of a level whose shape is close to its own:
``max(r, 1/r) < anchor_t`` for both sides, ``r = gt_wh / anchor_wh`` (no IoU threshold, no
"best anchor only"). Each match is then placed in the GT's own grid cell and in the two
neighbour cells nearest to the GT centre: the left cell when the centre lies in the left half of
its cell, the right cell when it lies in the right half, and the same vertically. This works
because the decode ``xy = 2 * sigmoid - 0.5`` spans (-0.5, 1.5) cells, so a neighbour can reach
the centre. A neighbour is used only when it exists: the official rule ``x > 1`` (resp.
``grid - x > 1``) keeps the first (resp. last) column from borrowing a cell off the grid.

The rule, exactly as the official code states it (``g = 0.5``, grid units):
    left  neighbour  when  x % 1 < g          and x > 1
    right neighbour  when  (W - x) % 1 < g    and W - x > 1
(and ``y``/``H`` for up/down). The chosen cell is ``floor(x - offset)`` with offsets ``+g`` (left)
and ``-g`` (right). For a centre exactly on a cell border (``x % 1 == 0``) the official right-hand
test also fires, but its cell ``floor(x + g)`` is the GT's own cell again: the official code then
counts that match twice. Here that duplicate is dropped (every (GT, anchor, cell) appears once);
nothing else differs.

Everything here is in grid units of the level (pixels / stride), as the official loss works.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["LevelMatches", "match_anchors"]

# Order of the five candidate cells: own cell, then left, up, right, down (official order).
_CELL_OFFSETS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))


@dataclass
class LevelMatches:
    """The (image, anchor, cell) positives of one level and what they regress to (M matches).

    Attributes:
        batch_index: [M] int64, image of the GT.
        anchor_index: [M] int64, anchor of the level (0..na-1).
        grid_y, grid_x: [M] int64, the cell (row, column), inside the grid.
        gt_index: [M] int64, row of the GT in the flattened GT list given to :func:`match_anchors`.
        target_boxes: [M, 4] float, ``(cx - grid_x, cy - grid_y, w, h)`` of the GT in grid units
            (centre relative to the cell's top-left corner: in [-0.5, 1.5) for positives).
        anchors: [M, 2] float, the matched anchor's (w, h) in grid units.
    """

    batch_index: Tensor
    anchor_index: Tensor
    grid_y: Tensor
    grid_x: Tensor
    gt_index: Tensor
    target_boxes: Tensor
    anchors: Tensor

    def __len__(self) -> int:
        return int(self.batch_index.numel())

    def cells(self) -> List[Tuple[int, int, int, int]]:
        """The matches as a list of ``(batch, anchor, y, x)`` tuples (for tests and debugging)."""
        stacked = torch.stack([self.batch_index, self.anchor_index, self.grid_y, self.grid_x], 1)
        return [tuple(int(v) for v in row) for row in stacked.tolist()]


def _check_inputs(gt_boxes: Tensor, gt_batch_index: Tensor, anchors: Tensor,
                  strides: Sequence[float], grid_sizes: Sequence[Tuple[int, int]],
                  anchor_t: float, neighbor_offset: float) -> None:
    if gt_boxes.dim() != 2 or gt_boxes.shape[1] != 4:
        raise ValueError(f"gt_boxes must be [G, 4] (cx, cy, w, h), got {tuple(gt_boxes.shape)}")
    if not gt_boxes.is_floating_point():
        raise TypeError(f"gt_boxes must be floating point, got {gt_boxes.dtype}")
    if gt_batch_index.shape != (gt_boxes.shape[0],):
        raise ValueError(f"gt_batch_index must be [G] = [{gt_boxes.shape[0]}], "
                         f"got {tuple(gt_batch_index.shape)}")
    if gt_batch_index.is_floating_point():
        raise TypeError(f"gt_batch_index must be an integer tensor, got {gt_batch_index.dtype}")
    if gt_boxes.numel() and not bool(torch.isfinite(gt_boxes).all()):
        bad = int((~torch.isfinite(gt_boxes).all(1)).nonzero()[0])
        raise ValueError(f"gt_boxes holds a non-finite value (row {bad}: {gt_boxes[bad].tolist()})")
    if anchors.dim() != 3 or anchors.shape[2] != 2:
        raise ValueError(f"anchors must be [num_levels, num_anchors, 2] (w, h), got {tuple(anchors.shape)}")
    if not bool((anchors > 0).all()):
        raise ValueError(f"anchors must be positive, got {anchors.tolist()}")
    nl = anchors.shape[0]
    if len(strides) != nl or len(grid_sizes) != nl:
        raise ValueError(f"strides ({len(strides)}) and grid_sizes ({len(grid_sizes)}) must have "
                         f"one entry per anchor level ({nl})")
    if not anchor_t > 1.0:
        raise ValueError(f"anchor_t must be > 1 (a shape ratio bound), got {anchor_t}")
    if not 0.0 < neighbor_offset <= 0.5:
        raise ValueError(f"neighbor_offset must be in (0, 0.5], got {neighbor_offset}")


def match_anchors(gt_boxes: Tensor, gt_batch_index: Tensor, anchors: Tensor,
                  strides: Sequence[float], grid_sizes: Sequence[Tuple[int, int]], *,
                  anchor_t: float = 4.0, neighbor_offset: float = 0.5) -> List[LevelMatches]:
    """Match GT boxes to anchors and cells of every level, as YOLOv5 does.

    Args:
        gt_boxes: [G, 4] GT boxes ``(cx, cy, w, h)`` in input pixels (all images flattened).
        gt_batch_index: [G] int64, the image of each GT.
        anchors: [L, na, 2] anchor (w, h) per level in input pixels.
        strides: L strides (pixels per cell).
        grid_sizes: L ``(H, W)`` feature-map sizes.
        anchor_t: shape-ratio bound (``hyp['anchor_t']``, 4.0).
        neighbor_offset: the 0.5 of the neighbour-cell rule (``g`` in the official code).

    Returns:
        One :class:`LevelMatches` per level (empty when no GT matches there). A GT whose shape
        fits no anchor of a level within ``anchor_t`` (including a zero-size GT) gets no match on
        that level, as in the official code.
    """
    _check_inputs(gt_boxes, gt_batch_index, anchors, strides, grid_sizes, anchor_t, neighbor_offset)
    device, dtype = gt_boxes.device, gt_boxes.dtype
    offsets = torch.tensor(_CELL_OFFSETS, device=device, dtype=dtype) * neighbor_offset  # [5, 2]
    gt_batch_index = gt_batch_index.to(device=device, dtype=torch.long)

    results: List[LevelMatches] = []
    for level, (stride, (height, width)) in enumerate(zip(strides, grid_sizes)):
        level_anchors = anchors[level].to(device=device, dtype=dtype) / stride  # [na, 2]
        gt_xy = gt_boxes[:, :2] / stride  # [G, 2]
        gt_wh = gt_boxes[:, 2:] / stride

        # Shape filter: every (anchor, GT) pair whose worst side ratio is below anchor_t.
        ratio = gt_wh[None] / level_anchors[:, None]  # [na, G, 2]
        shape_ok = torch.maximum(ratio, 1.0 / ratio).amax(2) < anchor_t  # [na, G]
        anchor_idx, gt_idx = shape_ok.nonzero(as_tuple=True)
        xy = gt_xy[gt_idx]  # [M0, 2]
        xy_from_far_side = torch.tensor([width, height], device=device, dtype=dtype) - xy

        # Which of the 5 candidate cells each match uses: own, left, up, right, down.
        # A candidate whose cell floors back to the own cell (a centre on a cell border) is a
        # duplicate of the own-cell match: skipped.
        own_cell = torch.floor(xy)
        near_low = (((xy % 1.0) < neighbor_offset) & (xy > 1.0)
                    & (torch.floor(xy - neighbor_offset) != own_cell))  # [M0, 2]: left (x), up (y)
        near_high = (((xy_from_far_side % 1.0) < neighbor_offset) & (xy_from_far_side > 1.0)
                     & (torch.floor(xy + neighbor_offset) != own_cell))  # right (x), down (y)
        use_cell = torch.stack([torch.ones_like(near_low[:, 0]), near_low[:, 0], near_low[:, 1],
                                near_high[:, 0], near_high[:, 1]])  # [5, M0]
        cell_k, match_m = use_cell.nonzero(as_tuple=True)  # offset-major, as the official code

        cell_xy = torch.floor(xy[match_m] - offsets[cell_k]).long()
        grid_x = cell_xy[:, 0].clamp(0, width - 1)
        grid_y = cell_xy[:, 1].clamp(0, height - 1)
        gt_rows = gt_idx[match_m]
        anchor_rows = anchor_idx[match_m]
        cell_corner = torch.stack([grid_x, grid_y], 1).to(dtype)
        target_boxes = torch.cat([xy[match_m] - cell_corner, gt_wh[gt_rows]], 1)
        results.append(LevelMatches(
            batch_index=gt_batch_index[gt_rows],
            anchor_index=anchor_rows,
            grid_y=grid_y,
            grid_x=grid_x,
            gt_index=gt_rows,
            target_boxes=target_boxes,
            anchors=level_anchors[anchor_rows],
        ))
    return results
