"""Tiling of large images: where the tiles start, and merging the detections of overlapping tiles.

One grid rule for every tiled path of the project: tiles start every ``stride`` px along an axis and the last
tile is *shifted back* to end flush with the image border, so every tile is full of image content (an image
no larger than a tile gives one tile at 0). Its users:

- sliced inference (:mod:`sarl.inference.sliced`): overlap as a fraction of the tile, :func:`tile_grid`;
- DOTA patch splitting (:mod:`sarl.data.datasets.dota_split`): overlap in pixels, :func:`grid_origins`.

Detections of the tiles go back to image pixels with :func:`shift_boxes` and are merged by class-wise NMS
(:func:`merge_detections`); :func:`drop_cut_boxes` removes copies of small objects cut by an inner tile edge
first (the neighbouring tile holds them whole).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torchvision.ops import batched_nms

__all__ = ["axis_starts", "grid_origins", "sliced_stride", "tile_starts", "tile_grid", "shift_boxes",
           "drop_cut_boxes", "merge_detections"]


def axis_starts(length: int, tile_size: int, stride: int) -> List[int]:
    """Tile starts along one axis of ``length`` px: ``0, stride, 2 * stride, ...`` below ``length - tile_size``,
    then ``length - tile_size`` (the last tile flush with the end); ``[0]`` when ``length <= tile_size``."""
    if length <= tile_size:
        return [0]
    starts = list(range(0, length - tile_size, stride))
    starts.append(length - tile_size)
    return starts


def grid_origins(height: int, width: int, tile_size: int, stride: int) -> List[Tuple[int, int]]:
    """Tile origins ``(x0, y0)`` of a ``height`` x ``width`` image, row by row (:func:`axis_starts` per axis)."""
    xs = axis_starts(width, tile_size, stride)
    return [(x, y) for y in axis_starts(height, tile_size, stride) for x in xs]


def sliced_stride(slice_size: int, overlap: float) -> int:
    """Stride of tiles of ``slice_size`` px overlapping by ``overlap`` (a fraction of the tile, in [0, 1))."""
    if slice_size <= 0:
        raise ValueError(f"slice size must be > 0, got {slice_size}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return max(int(round(slice_size * (1.0 - overlap))), 1)


def tile_starts(length: int, slice_size: int, overlap: float) -> List[int]:
    """Start offsets along one axis: stride ``slice_size * (1 - overlap)``, last tile flush with the end."""
    return axis_starts(length, slice_size, sliced_stride(slice_size, overlap))


def tile_grid(height: int, width: int, slice_size: int, overlap: float) -> List[Tuple[int, int, int, int]]:
    """Tiles as ``(x0, y0, x1, y1)`` covering the image, row by row."""
    origins = grid_origins(height, width, slice_size, sliced_stride(slice_size, overlap))
    return [(x, y, min(x + slice_size, width), min(y + slice_size, height)) for x, y in origins]


def shift_boxes(boxes: torch.Tensor, x0: float, y0: float) -> torch.Tensor:
    """Boxes [N, 4] XYXY in the pixels of a tile at ``(x0, y0)`` -> image pixels."""
    return boxes + boxes.new_tensor([x0, y0, x0, y0])


def drop_cut_boxes(boxes: torch.Tensor, tile: Tuple[int, int, int, int], image_size: Tuple[int, int],
                   overlap_px: float, margin: float = 2.0) -> torch.Tensor:
    """Keep-mask [N] for tile-local boxes [N, 4]: False for boxes touching an inner tile edge (within
    ``margin`` px) whose extent along that axis is below ``overlap_px`` (the neighbour tile holds them whole)."""
    x0, y0, x1, y1 = tile
    height, width = image_size
    tw, th = x1 - x0, y1 - y0
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cut = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    if x0 > 0:
        cut |= (boxes[:, 0] <= margin) & (bw < overlap_px)
    if x1 < width:
        cut |= (boxes[:, 2] >= tw - margin) & (bw < overlap_px)
    if y0 > 0:
        cut |= (boxes[:, 1] <= margin) & (bh < overlap_px)
    if y1 < height:
        cut |= (boxes[:, 3] >= th - margin) & (bh < overlap_px)
    return ~cut


def merge_detections(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, nms_thresh: float,
                     max_detections: int, class_agnostic: bool = False) -> torch.Tensor:
    """Indices kept by class-wise NMS (boxes [N, 4] XYXY, scores [N], classes [N]), best first."""
    groups = torch.zeros_like(classes) if class_agnostic else classes
    return batched_nms(boxes.float(), scores.float(), groups, nms_thresh)[:max_detections]
