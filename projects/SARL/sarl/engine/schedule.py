"""The YOLOX learning-rate schedule ("yoloxwarmcos") and the optimizer's parameter groups.

Schedule over iterations ``t`` of ``T`` in total, ``W`` warmup and ``N`` no-aug iterations::

    t <  W         lr = base * (t / W) ** 2                                   (quadratic warmup from 0)
    W <= t < T-N   lr = min + (base - min) * (1 + cos(pi * (t - W) / (T - W - N))) / 2
    t >= T-N       lr = min                                                   (flat over the no-aug epochs)

with ``min = base * MIN_LR_RATIO``. Expressed as a multiplier of the base lr (an fvcore ``ParamScheduler``),
so detectron2's ``LRMultiplier`` drives it and its state checkpoints like any detectron2 scheduler.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple

import torch
import torch.nn as nn
from fvcore.common.param_scheduler import ParamScheduler

__all__ = ["EpochPlan", "YOLOXWarmCosineMultiplier", "yolo_param_groups", "build_yolo_sgd", "build_yolo_optimizer"]

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


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


def trainable_parameters(model: nn.Module) -> Iterator[Tuple[nn.Module, str, nn.Parameter]]:
    """``(module, name, parameter)`` for every trainable parameter of ``model``, once (shared ones at their first
    owner), so optimizer groups can be split by the owning module's type."""
    seen = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                yield module, name, param


def yolo_param_groups(model: nn.Module, weight_decay: float) -> List[Dict]:
    """YOLOX's three-way split folded into two groups: decay on conv/linear weights only,
    none on normalization parameters and biases (decaying BN scales hurts small models)."""
    decay, no_decay = [], []
    for module, name, param in trainable_parameters(model):
        if isinstance(module, _NORM_TYPES) or name == "bias" or param.ndim <= 1:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_yolo_sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float, nesterov: bool = True
                   ) -> torch.optim.SGD:
    """SGD (nesterov) over :func:`yolo_param_groups`."""
    return torch.optim.SGD(yolo_param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=nesterov)


def build_yolo_optimizer(name: str, model: nn.Module, lr: float, momentum: float, weight_decay: float
                         ) -> torch.optim.Optimizer:
    """``SOLVER.YOLO.OPTIMIZER``: "sgd" (YOLOX: nesterov SGD) or "adamw" (what Ultralytics picks for short runs:
    decoupled weight decay, betas ``(momentum, 0.999)``), both over :func:`yolo_param_groups`."""
    if name == "sgd":
        return build_yolo_sgd(model, lr, momentum, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(yolo_param_groups(model, weight_decay), lr=lr, betas=(momentum, 0.999))
    raise ValueError(f"SOLVER.YOLO.OPTIMIZER must be 'sgd' or 'adamw', got {name!r}")
