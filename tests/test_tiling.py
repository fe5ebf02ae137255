"""One tiling rule for sliced inference and DOTA patch splitting (``sarl.inference.tiling``): the starts equal those
of the two implementations it replaced, and both users get them."""
from __future__ import annotations

import pytest

from sarl.data.datasets.dota_split import patch_origins
from sarl.inference.tiling import axis_starts, grid_origins, tile_grid, tile_starts


def _old_tile_starts(length, slice_size, overlap):  # sarl/inference/sliced.py before the shared helper
    if length <= slice_size:
        return [0]
    stride = max(int(round(slice_size * (1.0 - overlap))), 1)
    starts = list(range(0, length - slice_size, stride))
    starts.append(length - slice_size)
    return sorted(set(starts))


def _old_patch_origins(length, patch_size, overlap):  # sarl/data/datasets/dota_split.py before the shared helper
    if length <= patch_size:
        return [0]
    stride = patch_size - overlap
    origins = list(range(0, length - patch_size, stride))
    origins.append(length - patch_size)
    return origins


@pytest.mark.parametrize("size", [1, 7, 64, 100, 128])
def test_starts_equal_the_replaced_implementations(size):
    for length in list(range(1, 400, 3)) + [1024, 4000]:
        for overlap in (0.0, 0.1, 0.2, 0.25, 0.5, 0.9):
            assert tile_starts(length, size, overlap) == _old_tile_starts(length, size, overlap)
        for overlap_px in sorted({0, size // 4, size // 2, size - 1}):
            assert patch_origins(length, size, overlap_px) == _old_patch_origins(length, size, overlap_px)


def test_grid_is_row_by_row_and_tiles_are_clipped_to_the_image():
    assert grid_origins(30, 50, 20, 15) == [(x, y) for y in (0, 10) for x in (0, 15, 30)]
    assert axis_starts(50, 20, 15) == [0, 15, 30]
    assert tile_grid(10, 50, 20, 0.25) == [(0, 0, 20, 10), (15, 0, 35, 10), (30, 0, 50, 10)]


def test_bad_overlaps_are_named():
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 10, 1.0)
    with pytest.raises(ValueError, match="slice size"):
        tile_starts(100, 0, 0.2)
    with pytest.raises(ValueError, match="overlap"):
        patch_origins(100, 10, 10)
