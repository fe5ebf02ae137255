"""YOLOv5's own optimizer recipe (ultralytics/yolov5 v7.0 ``train.py``), selected by
``SOLVER.YOLO.RECIPE = "yolov5"`` (the default of ``configs/Base-YOLOv5.yaml``).

Notation: ``ni`` the iteration (one batch of ``total_batch = SOLVER.IMS_PER_BATCH`` images over all
processes), ``nb`` iterations per epoch, ``epoch = ni // nb``, ``E`` epochs, ``nbs`` the nominal batch (64).

- Gradient accumulation: the optimizer steps once every ``accumulate`` iterations, so one update sees about
  ``nbs`` images whatever the batch::

      accumulate = max(round(nbs / total_batch), 1)

  (gradients are summed: backward every iteration, step + zero_grad when ``ni - last_opt_step >= accumulate``).
  During warmup it ramps up from 1: ``accumulate(ni) = max(1, round(interp(ni, [0, nw], [1, nbs / total_batch])))``.
- Weight decay is rescaled to the images per update: ``wd = WEIGHT_DECAY * total_batch * accumulate / nbs``.
- SGD, nesterov, lr0 = ``SOLVER.BASE_LR`` (0.01), momentum ``SOLVER.MOMENTUM`` (0.937), three groups:
  normalization weights (no decay), other weights (decay ``wd``), biases (no decay).
- lr factor, linear per epoch: ``lf(epoch) = (1 - epoch / E) * (1 - lrf) + lrf`` with ``lrf = FINAL_LR_RATIO``
  (0.01); lr = ``lr0 * lf(epoch)``, constant within an epoch.
- Warmup over ``nw = max(round(WARMUP_EPOCHS * nb), MIN_WARMUP_ITERS)`` iterations (both ends included,
  ``ni <= nw``), linear interpolation over ``[0, nw]``: the bias lr falls from ``WARMUP_BIAS_LR`` (0.1) to
  ``lr0 * lf(epoch)``, the other groups' lr rises from 0 to ``lr0 * lf(epoch)``, the momentum rises from
  ``WARMUP_MOMENTUM`` (0.8) to ``momentum``.
- Loss scale: YOLOv5's loss is summed over the images (the head multiplies its per-image mean by the batch on
  the device, ``MODEL.YOLOV5.LOSS_TIMES_BATCH_SIZE``). Under DDP each process's gradient is averaged over the
  ``W`` processes, so the step runner multiplies the loss by ``W`` before ``backward`` (as YOLOv5 does with
  ``WORLD_SIZE``): the all-reduced gradient is then the *sum* over processes, i.e. the gradient of the loss
  summed over the whole ``total_batch``, the same as one process training on all of it.

Everything here is a pure function of ``ni`` (and the config), so a resumed run recomputes the same values;
the accumulation state (last optimizer step, pending gradients) travels with the step runner's checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from detectron2.solver import LRScheduler

from .optimizer import NORM_TYPES, trainable_parameters
from .schedule import EpochPlan, plan_epochs

__all__ = [
    "YOLOv5Recipe",
    "YOLOv5Scheduler",
    "accumulate_steps",
    "build_yolov5_recipe",
    "build_yolov5_sgd",
    "scaled_weight_decay",
    "yolov5_param_groups",
]

RECIPES = ("yolox", "yolov5")


def recipe_name(cfg) -> str:
    """``SOLVER.YOLO.RECIPE``, checked and lower-cased."""
    name = str(cfg.SOLVER.YOLO.RECIPE).lower()
    if name not in RECIPES:
        raise ValueError(f"SOLVER.YOLO.RECIPE must be one of {RECIPES}, got {name!r}")
    return name


def _interp(x: float, x_end: float, y_start: float, y_end: float) -> float:
    """Linear interpolation from ``(0, y_start)`` to ``(x_end, y_end)``, held at ``y_end`` from ``x_end`` on
    (``numpy.interp(x, [0, x_end], [y_start, y_end])`` for ``x >= 0``, with the same operation order)."""
    if x >= x_end:
        return float(y_end)
    return float(y_start + (y_end - y_start) / x_end * x)


def accumulate_steps(nominal_batch: int, total_batch: int) -> int:
    """Iterations per optimizer step after warmup: ``max(round(nbs / total_batch), 1)`` (round half to even,
    as Python's and numpy's ``round``)."""
    if nominal_batch < 1 or total_batch < 1:
        raise ValueError(f"nominal batch ({nominal_batch}) and total batch ({total_batch}) must be >= 1")
    return max(round(nominal_batch / total_batch), 1)


def scaled_weight_decay(weight_decay: float, nominal_batch: int, total_batch: int) -> float:
    """``wd * total_batch * accumulate / nbs``: the decay per update grows with the images an update sees
    (1x when ``nbs`` divides evenly by the batch)."""
    return weight_decay * total_batch * accumulate_steps(nominal_batch, total_batch) / nominal_batch


@dataclass(frozen=True)
class YOLOv5Recipe:
    """The YOLOv5 schedule as functions of the iteration ``ni`` (see the module docstring).

    Attributes:
        lr0: the base lr (``SOLVER.BASE_LR``).
        momentum: the momentum after warmup (``SOLVER.MOMENTUM``).
        epochs: ``E`` in ``lf`` (may be fractional when it follows from ``SOLVER.MAX_ITER``).
        iters_per_epoch: ``nb``.
        warmup_iters: ``nw`` (already ``max(round(warmup_epochs * nb), min_warmup_iters)``).
        warmup_bias_lr: the bias lr at ``ni = 0``.
        warmup_momentum: the momentum at ``ni = 0``.
        final_lr_ratio: ``lrf``, ``lf(E)``.
        nominal_batch: ``nbs``.
        total_batch: the images per iteration over all processes.
    """

    lr0: float
    momentum: float
    epochs: float
    iters_per_epoch: int
    warmup_iters: int
    warmup_bias_lr: float = 0.1
    warmup_momentum: float = 0.8
    final_lr_ratio: float = 0.01
    nominal_batch: int = 64
    total_batch: int = 64

    def __post_init__(self):
        if self.iters_per_epoch < 1 or self.epochs <= 0:
            raise ValueError(f"iterations per epoch ({self.iters_per_epoch}) must be >= 1 and epochs "
                             f"({self.epochs}) > 0")
        if self.warmup_iters < 0:
            raise ValueError(f"warmup iterations must be >= 0, got {self.warmup_iters}")
        if not 0.0 <= self.final_lr_ratio <= 1.0:
            raise ValueError(f"SOLVER.YOLO.FINAL_LR_RATIO must be in [0, 1], got {self.final_lr_ratio}")
        accumulate_steps(self.nominal_batch, self.total_batch)  # validates both

    @classmethod
    def from_config(cls, cfg, iters_per_epoch: int, epochs: float) -> "YOLOv5Recipe":
        """The recipe of ``cfg`` for an epoch plan of ``iters_per_epoch`` x ``epochs``."""
        y = cfg.SOLVER.YOLO
        nw = max(int(round(y.WARMUP_EPOCHS * iters_per_epoch)), int(y.MIN_WARMUP_ITERS))
        return cls(lr0=float(cfg.SOLVER.BASE_LR), momentum=float(cfg.SOLVER.MOMENTUM), epochs=float(epochs),
                   iters_per_epoch=int(iters_per_epoch), warmup_iters=nw, warmup_bias_lr=float(y.WARMUP_BIAS_LR),
                   warmup_momentum=float(y.WARMUP_MOMENTUM), final_lr_ratio=float(y.FINAL_LR_RATIO),
                   nominal_batch=int(y.NOMINAL_BATCH_SIZE), total_batch=int(cfg.SOLVER.IMS_PER_BATCH))

    @property
    def accumulate(self) -> int:
        """Iterations per optimizer step after warmup."""
        return accumulate_steps(self.nominal_batch, self.total_batch)

    def lf(self, epoch: float) -> float:
        """The lr factor of ``epoch``: ``(1 - epoch / E) * (1 - lrf) + lrf`` (1 at epoch 0, ``lrf`` at ``E``)."""
        return (1.0 - epoch / self.epochs) * (1.0 - self.final_lr_ratio) + self.final_lr_ratio

    def epoch_of(self, ni: int) -> int:
        return int(ni) // self.iters_per_epoch

    def in_warmup(self, ni: int) -> bool:
        # Both ends included: the warmup's last iteration already gives the post-warmup values.
        return int(ni) <= self.warmup_iters

    def lr_at(self, ni: int, bias: bool = False) -> float:
        """The lr of iteration ``ni``: ``lr0 * lf(epoch)``, reached by linear warmup (biases from
        ``warmup_bias_lr`` down, since a large bias lr lets the box/objectness offsets settle early;
        the others from 0 up)."""
        target = self.lr0 * self.lf(self.epoch_of(ni))
        if not self.in_warmup(ni):
            return target
        return _interp(ni, self.warmup_iters, self.warmup_bias_lr if bias else 0.0, target)

    def momentum_at(self, ni: int) -> float:
        """``warmup_momentum -> momentum`` linearly over warmup, then ``momentum``."""
        if not self.in_warmup(ni):
            return self.momentum
        return _interp(ni, self.warmup_iters, self.warmup_momentum, self.momentum)

    def accumulate_at(self, ni: int) -> int:
        """Iterations per optimizer step in force at ``ni``: 1 -> ``nbs / total_batch`` over warmup, rounded
        (early updates of a random model are better frequent than large)."""
        if not self.in_warmup(ni):
            return self.accumulate
        return max(1, round(_interp(ni, self.warmup_iters, 1.0, self.nominal_batch / self.total_batch)))


def build_yolov5_recipe(cfg, plan: Optional[EpochPlan] = None) -> Optional[YOLOv5Recipe]:
    """The :class:`YOLOv5Recipe` of ``cfg`` when it trains with it (``SOLVER.YOLO.ENABLED`` and
    ``RECIPE == "yolov5"``), else None. ``plan`` is looked up when needed and not given."""
    if not cfg.SOLVER.YOLO.ENABLED or recipe_name(cfg) != "yolov5":
        return None
    plan = plan or plan_epochs(cfg)
    return YOLOv5Recipe.from_config(cfg, plan.iters_per_epoch, plan.epochs)


# ---------------------------------------------------------------------------------------------------------
# Parameter groups and the optimizer
# ---------------------------------------------------------------------------------------------------------
def yolov5_param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """YOLOv5's three groups, each tagged with ``"name"`` (the scheduler finds the bias group by it):

    - ``"norm"``: weights of normalization layers, no decay (decaying BN scales shrinks activations);
    - ``"decay"``: every other non-bias parameter (conv/linear weights), decay ``weight_decay``;
    - ``"bias"``: every parameter named ``bias`` (BN's included), no decay, its own warmup lr.

    Empty groups are left out. Parameters shared between modules are counted once.
    """
    norm, decay, bias = [], [], []
    for module, name, param in trainable_parameters(model):
        if name == "bias":
            bias.append(param)
        elif name == "weight" and isinstance(module, NORM_TYPES):
            norm.append(param)
        else:
            decay.append(param)
    groups = [{"params": norm, "weight_decay": 0.0, "name": "norm"},
              {"params": decay, "weight_decay": float(weight_decay), "name": "decay"},
              {"params": bias, "weight_decay": 0.0, "name": "bias"}]
    return [g for g in groups if g["params"]]


def build_yolov5_sgd(model: nn.Module, lr0: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD nesterov over :func:`yolov5_param_groups`; ``weight_decay`` is the already scaled one
    (:func:`scaled_weight_decay`). The scheduler sets each group's lr and momentum per iteration."""
    return torch.optim.SGD(yolov5_param_groups(model, weight_decay), lr=lr0, momentum=momentum, nesterov=True)


# ---------------------------------------------------------------------------------------------------------
# The scheduler
# ---------------------------------------------------------------------------------------------------------
class YOLOv5Scheduler(LRScheduler):
    """Sets every group's lr and momentum to :class:`YOLOv5Recipe`'s values at iteration ``last_epoch``
    (detectron2 steps it after every iteration, so ``last_epoch`` is the next iteration). Groups tagged
    ``"bias"`` get the bias warmup. Its checkpoint state is the iteration (the recipe itself comes from the
    config), and the optimizer's state carries the lr/momentum in force.

    Args:
        optimizer: built by :func:`build_yolov5_sgd` (untagged groups are treated as non-bias).
        recipe: the schedule.
        last_iter: the last iteration done (-1: a fresh start).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, recipe: YOLOv5Recipe, last_iter: int = -1):
        self.recipe = recipe
        super().__init__(optimizer, last_epoch=last_iter)

    def get_lr(self) -> List[float]:
        ni = self.last_epoch
        return [self.recipe.lr_at(ni, bias=g.get("name") == "bias") for g in self.optimizer.param_groups]

    def step(self, epoch: Optional[int] = None) -> None:
        super().step(epoch)
        momentum = self.recipe.momentum_at(self.last_epoch)
        for group in self.optimizer.param_groups:
            if "momentum" in group:
                group["momentum"] = momentum

    def state_dict(self) -> Dict[str, Any]:
        # The recipe is config, not state: a resumed run takes it from its own config.
        return {k: v for k, v in super().state_dict().items() if k != "recipe"}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "recipe"})
