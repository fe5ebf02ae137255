"""The YOLO schedule: epochs -> iterations (:class:`EpochPlan`, :func:`plan_epochs`) and the YOLOX
learning-rate schedule ("yoloxwarmcos").

An epoch is ``SOLVER.YOLO.ITERS_PER_EPOCH`` iterations (0: ``len(train set) // IMS_PER_BATCH``); ``SOLVER.YOLO.EPOCHS``
epochs give ``max_iter`` (it replaces ``SOLVER.MAX_ITER``; ``EPOCHS <= 0`` keeps ``SOLVER.MAX_ITER``).

The learning rate over iterations ``t`` of ``T`` in total, ``W`` warmup and ``N`` no-aug iterations::

    t <  W         lr = base * (t / W) ** 2                                   (quadratic warmup from 0)
    W <= t < T-N   lr = min + (base - min) * (1 + cos(pi * (t - W) / (T - W - N))) / 2
    t >= T-N       lr = min                                                   (flat over the no-aug epochs)

with ``min = base * MIN_LR_RATIO``. Expressed as a multiplier of the base lr (an fvcore ``ParamScheduler``),
so detectron2's ``LRMultiplier`` drives it and its state checkpoints like any detectron2 scheduler.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from detectron2.data import get_detection_dataset_dicts
from fvcore.common.param_scheduler import ParamScheduler

__all__ = ["EpochPlan", "YOLOXWarmCosineMultiplier", "plan_epochs", "train_dataset_dicts"]


@dataclass(frozen=True)
class EpochPlan:
    """Epochs <-> iterations of a YOLO schedule.

    Attributes:
        iters_per_epoch: optimizer steps per epoch (>= 1).
        max_iter: total iterations.
        warmup_iters: iterations of quadratic warmup.
        no_aug_start_iter: first iteration of the no-aug phase (== max_iter when there is none).
    """

    iters_per_epoch: int
    max_iter: int
    warmup_iters: int
    no_aug_start_iter: int

    @classmethod
    def from_epochs(cls, iters_per_epoch: int, epochs: float, warmup_epochs: float, no_aug_epochs: float) -> "EpochPlan":
        if iters_per_epoch < 1:
            raise ValueError(f"iterations per epoch must be >= 1, got {iters_per_epoch} "
                             "(dataset smaller than SOLVER.IMS_PER_BATCH? set SOLVER.YOLO.ITERS_PER_EPOCH)")
        if epochs <= 0:
            raise ValueError(f"SOLVER.YOLO.EPOCHS must be > 0, got {epochs}")
        max_iter = max(1, int(round(epochs * iters_per_epoch)))
        return cls.from_iters(iters_per_epoch, max_iter, warmup_epochs, no_aug_epochs)

    @classmethod
    def from_iters(cls, iters_per_epoch: int, max_iter: int, warmup_epochs: float, no_aug_epochs: float) -> "EpochPlan":
        if warmup_epochs < 0 or no_aug_epochs < 0:
            raise ValueError(f"SOLVER.YOLO.WARMUP_EPOCHS ({warmup_epochs}) and NO_AUG_EPOCHS ({no_aug_epochs}) "
                             "must be >= 0")
        warmup = int(round(warmup_epochs * iters_per_epoch))
        no_aug = int(round(no_aug_epochs * iters_per_epoch))
        if warmup + no_aug >= max_iter and (warmup > 0 or no_aug > 0):
            # Keep at least one cosine iteration: shrink both phases proportionally.
            scale = (max_iter - 1) / float(warmup + no_aug)
            warmup, no_aug = int(warmup * scale), int(no_aug * scale)
        return cls(iters_per_epoch, max_iter, warmup, max_iter - no_aug)

    @property
    def epochs(self) -> float:
        return self.max_iter / self.iters_per_epoch


class YOLOXWarmCosineMultiplier(ParamScheduler):
    """lr / base_lr at a fraction ``where`` in [0, 1) of training (see module docstring)."""

    def __init__(self, max_iter: int, warmup_iters: int, no_aug_iters: int, min_lr_ratio: float):
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"SOLVER.YOLO.MIN_LR_RATIO must be in [0, 1], got {min_lr_ratio}")
        if warmup_iters + no_aug_iters > max_iter:
            raise ValueError(f"warmup ({warmup_iters}) + no-aug ({no_aug_iters}) iterations exceed max_iter ({max_iter})")
        self.max_iter = int(max_iter)
        self.warmup_iters = int(warmup_iters)
        self.no_aug_iters = int(no_aug_iters)
        self.min_lr_ratio = float(min_lr_ratio)

    def at_iter(self, t: float) -> float:
        """Multiplier at iteration ``t`` (float: LRMultiplier passes ``where * max_iter``)."""
        if self.warmup_iters > 0 and t < self.warmup_iters:
            return (t / self.warmup_iters) ** 2
        if t >= self.max_iter - self.no_aug_iters:
            return self.min_lr_ratio
        cosine_len = max(self.max_iter - self.warmup_iters - self.no_aug_iters, 1)
        progress = (t - self.warmup_iters) / cosine_len
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __call__(self, where: float) -> float:
        # Round away the float error of where = it / max_iter so iteration boundaries are exact.
        return self.at_iter(round(where * self.max_iter, 6))


def train_dataset_dicts(cfg) -> List[Dict[str, Any]]:
    """The training records, filtered as detectron2's loader does (``DATALOADER.FILTER_EMPTY_ANNOTATIONS``)."""
    return get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)


def plan_epochs(cfg, dataset_size: Optional[int] = None) -> EpochPlan:
    """The :class:`EpochPlan` of ``cfg`` (``dataset_size`` is looked up when needed and not given)."""
    y = cfg.SOLVER.YOLO
    ipe = int(y.ITERS_PER_EPOCH)
    if ipe <= 0:
        size = len(train_dataset_dicts(cfg)) if dataset_size is None else dataset_size
        ipe = size // cfg.SOLVER.IMS_PER_BATCH
        if ipe < 1:
            raise ValueError(f"training set of {size} images is smaller than SOLVER.IMS_PER_BATCH "
                             f"({cfg.SOLVER.IMS_PER_BATCH}); lower it or set SOLVER.YOLO.ITERS_PER_EPOCH")
    if y.EPOCHS > 0:
        return EpochPlan.from_epochs(ipe, y.EPOCHS, y.WARMUP_EPOCHS, y.NO_AUG_EPOCHS)
    return EpochPlan.from_iters(ipe, int(cfg.SOLVER.MAX_ITER), y.WARMUP_EPOCHS, y.NO_AUG_EPOCHS)
