"""The training data stream: a sampler that can start in the middle of its stream, and records that know their
place in it (exact ``--resume``, augmentation independent of the number of loader workers).

Detectron2's ``TrainingSampler`` yields the infinite stream ``shuffle(range(N)) + shuffle(range(N)) + ...``
seeded by ``seed``, each process taking every ``world_size``-th index. A resumed run must not restart that
stream (it would see the first images of the epoch twice and never the rest): :class:`ResumableTrainingSampler`
skips the first ``start_index`` indices of its process's share. Skipping only draws permutations (no image is read).

The augmentation must not restart either. With ``with_positions=True`` the sampler yields *stream keys* that carry
each sample's global position in the stream as well as its record index, and :class:`StreamRecords` hands the
mapper the record with ``sample_seed = (seed, position)``. The mapper draws that sample's augmentation (mosaic
partners included) from a generator seeded with it, so sample ``p`` of the stream is augmented the same way in an
uninterrupted run, in a resumed run, and with any number of DataLoader workers. (A key, not a tuple, because
detectron2's ``MapDataset`` passes indices through ``int()``.)
"""
from __future__ import annotations

import itertools
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch.utils.data as torchdata

from detectron2.data.common import DatasetFromList
from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler", "StreamRecords", "decode_stream_key", "encode_stream_key"]


def encode_stream_key(position: int, index: int, size: int) -> int:
    """One integer for (global stream position, record index) over a dataset of ``size`` records."""
    return position * size + index


def decode_stream_key(key: int, size: int) -> Tuple[int, int]:
    """``(position, index)`` of a key from :func:`encode_stream_key` (a plain index decodes as position 0)."""
    return divmod(int(key), size)


class ResumableTrainingSampler(TrainingSampler):
    """``TrainingSampler`` whose per-process stream begins at position ``start_index``.

    Args:
        size: number of records in the dataset (> 0).
        seed: stream seed, the same on every process (saved in checkpoints by ``YOLOTrainer``).
        start_index: samples of this process's share already consumed (iterations done x images per process).
        shuffle: shuffle each pass over the dataset.
        with_positions: yield stream keys (:func:`encode_stream_key`) instead of record indices; pair with
            :class:`StreamRecords`.
    """

    def __init__(self, size: int, seed: Optional[int] = None, start_index: int = 0, shuffle: bool = True,
                 with_positions: bool = False):
        super().__init__(size, shuffle=shuffle, seed=seed)
        if start_index < 0:
            raise ValueError(f"start_index must be >= 0, got {start_index}")
        self.start_index = int(start_index)
        self.with_positions = bool(with_positions)

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def size(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[int]:
        # This process's k-th sample is the stream's (rank + k * world_size)-th.
        first = self._rank + self.start_index * self._world_size
        mine = itertools.islice(enumerate(self._infinite_indices()), first, None, self._world_size)
        for position, index in mine:
            yield encode_stream_key(position, index, self._size) if self.with_positions else index


class StreamRecords(torchdata.Dataset):
    """Dataset records indexed by stream keys: item ``key`` is a copy of record ``index`` with
    ``"sample_seed": (seed, position)`` added (see the module docstring).

    Args:
        records: the dataset dicts (serialized once, as detectron2's loaders do, so forked workers share them).
        seed: the stream seed (the sampler's), combined with the position into the sample's seed.
    """

    def __init__(self, records: Sequence[Dict[str, Any]], seed: int):
        self._records = records if isinstance(records, DatasetFromList) else DatasetFromList(
            list(records), copy=False, serialize=True)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, key: int) -> Dict[str, Any]:
        position, index = decode_stream_key(key, len(self._records))
        record = dict(self._records[index])
        record["sample_seed"] = (self.seed, position)
        return record
