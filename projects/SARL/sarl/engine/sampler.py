"""A training sampler that can start in the middle of its stream (exact ``--resume``).

Detectron2's ``TrainingSampler`` yields the infinite stream ``shuffle(range(N)) + shuffle(range(N)) + ...``
seeded by ``seed``, each process taking every ``world_size``-th index. A resumed run must not restart that
stream (it would see the first images of the epoch twice and never the rest): this sampler skips the first
``start_index`` indices of its process's share. Skipping only draws permutations (no image is read).
"""
from __future__ import annotations

import itertools
from typing import Iterator, Optional

from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler"]


class ResumableTrainingSampler(TrainingSampler):
    """``TrainingSampler`` whose per-process stream begins at position ``start_index``.

    Args:
        size: number of records in the dataset (> 0).
        seed: stream seed, the same on every process (saved in checkpoints by ``YOLOTrainer``).
        start_index: samples of this process's share already consumed (iterations done x images per process).
        shuffle: shuffle each pass over the dataset.
    """

    def __init__(self, size: int, seed: Optional[int] = None, start_index: int = 0, shuffle: bool = True):
        super().__init__(size, shuffle=shuffle, seed=seed)
        if start_index < 0:
            raise ValueError(f"start_index must be >= 0, got {start_index}")
        self.start_index = int(start_index)

    @property
    def seed(self) -> int:
        return self._seed

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(super().__iter__(), self.start_index, None)
