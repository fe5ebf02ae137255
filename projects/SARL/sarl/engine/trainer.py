"""``YOLOTrainer``: Detectron2's ``DefaultTrainer`` with the YOLOX or the YOLOv5 training recipe.

What it adds to ``DefaultTrainer`` (each piece selected by ``SOLVER.YOLO.*`` / ``SOLVER.EMA.*``):

- epochs -> iterations: ``SOLVER.YOLO.EPOCHS`` times ``ITERS_PER_EPOCH`` (0: ``len(train set) // IMS_PER_BATCH``)
  gives ``max_iter`` (it replaces ``SOLVER.MAX_ITER``; ``EPOCHS <= 0`` keeps ``SOLVER.MAX_ITER``);
- ``SOLVER.YOLO.RECIPE = "yolox"``: SGD nesterov, momentum ``SOLVER.MOMENTUM`` (0.9), weight decay
  ``SOLVER.WEIGHT_DECAY`` on conv weights only, lr = ``BASE_LR_PER_IMAGE * IMS_PER_BATCH`` (the total batch over
  all processes), the "yoloxwarmcos" schedule (``sarl.engine.schedule``), one optimizer step per iteration;
- ``SOLVER.YOLO.RECIPE = "yolov5"`` (``sarl.engine.yolov5_recipe``): lr0 = ``SOLVER.BASE_LR``, gradients
  accumulated to the nominal batch of 64 images per optimizer step, weight decay scaled to match, linear lr
  decay per epoch, bias-lr/momentum warmup; the loss is multiplied by the number of processes before
  ``backward`` (DDP averages gradients, YOLOv5's loss is a sum over images), and the EMA is updated after each
  optimizer step, not each iteration;
- EMA weights (``ModelEMA``): evaluated, saved as ``checkpoint["ema"]`` (weights + update count), and used
  for inference when a checkpoint is loaded as ``MODEL.WEIGHTS``;
- the no-aug phase for the last ``NO_AUG_EPOCHS`` (``NoAugHook``);
- AMP on CUDA (``SOLVER.AMP.ENABLED``), gradient clipping (``SOLVER.CLIP_GRADIENTS``, after AMP unscaling),
  SyncBN (``SOLVER.YOLO.SYNC_BN``) when training on several CUDA processes;
- exact resume: iteration, model, optimizer, EMA, scheduler, no-aug state, grad scaler, the accumulation state
  (last optimizer step and the gradients accumulated since, yolov5 recipe) and the data order
  (the sampler's seed and position are saved; the resumed loader skips the samples already drawn, and each
  sample's augmentation is seeded by its stream position, so the resumed run sees the same augmented samples).
"""
from __future__ import annotations

import logging
import os
import weakref
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer, create_ddp_model, hooks
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import DatasetEvaluator
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

import sarl.modeling  # noqa: F401  (registers YOLODetector, backbones, heads)

from sarl.data import YOLOMapper, build_yolo_test_loader, build_yolo_train_loader  # (registers the datasets)
from sarl.data.samplers import ResumableTrainingSampler

from .hooks import EMAHook, ModelEMA, NoAugHook, unwrap_model
from .schedule import EpochPlan, YOLOXWarmCosineMultiplier, build_yolo_optimizer
from .yolov5_recipe import YOLOv5Recipe, YOLOv5Scheduler, accumulate_steps, build_yolov5_sgd, recipe_name, \
    scaled_weight_decay

logger = logging.getLogger(__name__)

__all__ = ["YOLOTrainer", "YOLOCheckpointer", "YOLOStepRunner", "load_inference_weights", "plan_epochs",
           "build_yolov5_recipe"]


# ---------------------------------------------------------------------------------------------------------
# Checkpointing
# ---------------------------------------------------------------------------------------------------------
class YOLOCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that, when loading weights only (not resuming), takes the EMA weights of a
    checkpoint written by :class:`YOLOTrainer` as the model weights: they are the weights that were evaluated.
    Resuming (``load(path, checkpointables=[...])`` through ``resume_or_load(resume=True)``) loads both the raw
    and the EMA weights unchanged."""

    def __init__(self, *args, prefer_ema: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.prefer_ema = prefer_ema
        self._weights_only = False

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        self._weights_only = not (resume and self.has_checkpoint())
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._weights_only = False

    def _load_file(self, filename: str) -> Dict[str, Any]:
        loaded = super()._load_file(filename)
        if self._weights_only and self.prefer_ema and isinstance(loaded.get("ema"), dict) and "state" in loaded["ema"]:
            self.logger.info(f"Using the EMA weights of {filename} (after {loaded['ema'].get('updates')} updates)")
            loaded["model"] = loaded["ema"]["state"]
        return loaded


def load_inference_weights(model: nn.Module, path: str, prefer_ema: bool = True) -> Dict[str, Any]:
    """Load ``path`` into ``model`` for inference (EMA weights when the checkpoint has them)."""
    checkpointer = YOLOCheckpointer(model, prefer_ema=prefer_ema)
    return checkpointer.resume_or_load(path, resume=False)


# ---------------------------------------------------------------------------------------------------------
# One training step: SimpleTrainer + optional AMP + gradient clipping
# ---------------------------------------------------------------------------------------------------------
class YOLOStepRunner(SimpleTrainer):
    """``SimpleTrainer.run_step`` with AMP (CUDA only), gradient clipping applied to *unscaled* gradients
    (detectron2's optimizer-wrapping clip would clip the loss-scaled gradients under AMP) and, optionally,
    YOLOv5's gradient accumulation.

    Args:
        amp: float16 autocast + ``GradScaler``.
        clip_fn: clips the parameters' gradients (returns the norm to log, or None), just before a step.
        accumulate_fn: ``None`` (default): zero the gradients, backward, step, every iteration. Otherwise
            ``accumulate_fn(iteration)`` is the number of iterations per step in force at that iteration:
            gradients are summed over iterations (backward each one) and the optimizer steps, then zeroes them,
            when ``iteration - last_opt_step >= accumulate_fn(iteration)``.
        loss_scale: the loss is multiplied by it before ``backward`` (the yolov5 recipe passes the number of
            processes, so DDP's gradient average becomes a sum); not applied to the logged losses.

    ``stepped`` tells whether the last ``run_step`` stepped the optimizer (the EMA hook of the yolov5 recipe
    reads it). With accumulation the checkpoint state also holds ``last_opt_step`` and the gradients summed
    since (``pending_grads``), so a run resumed between two steps continues the same sums.
    """

    def __init__(self, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer, *, amp: bool = False,
                 clip_fn: Optional[Callable[[List[nn.Parameter]], Any]] = None,
                 accumulate_fn: Optional[Callable[[int], int]] = None, loss_scale: float = 1.0):
        super().__init__(model, data_loader, optimizer)
        self.amp = amp
        self.clip_fn = clip_fn
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=amp)
        self.accumulate_fn = accumulate_fn
        self.loss_scale = float(loss_scale)
        self.last_opt_step = -1  # iteration of the last optimizer step (-1: none yet, so iteration 0 can step)
        self.stepped = False

    def _params(self) -> List[nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def run_step(self) -> None:
        assert self.model.training, "[YOLOStepRunner] model was changed to eval mode!"
        import time

        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
            loss_dict = self.model(data)
            losses = sum(loss_dict.values())
        accumulating = self.accumulate_fn is not None
        if not accumulating:
            self.optimizer.zero_grad(set_to_none=True)
        if self.loss_scale != 1.0:
            losses = losses * self.loss_scale
        self.grad_scaler.scale(losses).backward()
        step_now = not accumulating or self.iter - self.last_opt_step >= self.accumulate_fn(self.iter)
        if step_now and self.clip_fn is not None:
            self.grad_scaler.unscale_(self.optimizer)
            params = [p for p in self._params() if p.grad is not None]
            norm = self.clip_fn(params)
            if norm is not None:
                get_event_storage().put_scalar("grad_norm", float(norm))
        self._write_metrics(loss_dict, data_time)
        if step_now:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
            if accumulating:
                # Zeroed after the step (not before the backward): the next iterations sum into fresh gradients.
                self.optimizer.zero_grad(set_to_none=True)
            self.last_opt_step = self.iter
        self.stepped = step_now

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["grad_scaler"] = self.grad_scaler.state_dict()
        if self.accumulate_fn is not None:
            state["last_opt_step"] = self.last_opt_step
            # Gradients summed since the last step (None after a step: zero_grad sets them to None). Saved in the
            # optimizer's parameter order; identical on every process (all-reduced), so rank 0's copy serves all.
            grads = [None if p.grad is None else p.grad.detach() for p in self._params()]
            state["pending_grads"] = grads if any(g is not None for g in grads) else None
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "grad_scaler" in state and self.amp:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        if self.accumulate_fn is None:
            return
        # A checkpoint without accumulation state (another recipe) is taken as "stepped at its iteration".
        self.last_opt_step = int(state.get("last_opt_step", self.iter))
        params = self._params()
        pending = state.get("pending_grads")
        if pending is not None and len(pending) != len(params):
            raise ValueError(f"checkpoint has accumulated gradients of {len(pending)} parameters, the optimizer "
                             f"{len(params)}")
        for p, g in zip(params, pending or [None] * len(params)):
            p.grad = None if g is None else g.to(device=p.device, dtype=p.dtype).clone()


def _build_clip_fn(cfg) -> Optional[Callable[[List[nn.Parameter]], Any]]:
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return None
    if clip.CLIP_VALUE <= 0:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be > 0, got {clip.CLIP_VALUE}")
    if clip.CLIP_TYPE == "value":
        return lambda params: torch.nn.utils.clip_grad_value_(params, clip.CLIP_VALUE)
    if clip.CLIP_TYPE in ("norm", "full_model"):
        return lambda params: torch.nn.utils.clip_grad_norm_(params, clip.CLIP_VALUE, clip.NORM_TYPE)
    raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be 'value', 'norm' or 'full_model', got {clip.CLIP_TYPE!r}")


# ---------------------------------------------------------------------------------------------------------
# Epochs <-> iterations
# ---------------------------------------------------------------------------------------------------------
def train_dataset_dicts(cfg) -> List[Dict[str, Any]]:
    """The training records, filtered as detectron2's loader does (``DATALOADER.FILTER_EMPTY_ANNOTATIONS``)."""
    from detectron2.data import get_detection_dataset_dicts

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


def build_yolov5_recipe(cfg, plan: Optional[EpochPlan] = None) -> Optional[YOLOv5Recipe]:
    """The :class:`YOLOv5Recipe` of ``cfg`` when it trains with it (``SOLVER.YOLO.ENABLED`` and
    ``RECIPE == "yolov5"``), else None. ``plan`` is looked up when needed and not given."""
    if not cfg.SOLVER.YOLO.ENABLED or recipe_name(cfg) != "yolov5":
        return None
    plan = plan or plan_epochs(cfg)
    return YOLOv5Recipe.from_config(cfg, plan.iters_per_epoch, plan.epochs)


class _OptimizerStepEMAHook(EMAHook):
    """:class:`EMAHook` that updates only after iterations that stepped the optimizer (yolov5 recipe: with
    accumulation the weights change once per ``accumulate`` iterations, and the EMA ramp counts updates)."""

    def after_step(self) -> None:
        if getattr(self.trainer._trainer, "stepped", True):
            super().after_step()


def _create_ddp_model(model: nn.Module) -> nn.Module:
    """DDP wrapper when several processes train (detectron2's ``create_ddp_model`` always passes CUDA
    ``device_ids``, which DDP rejects for CPU modules: CPU/Gloo processes need none)."""
    if comm.get_world_size() == 1:
        return model
    device = next(model.parameters()).device
    if device.type == "cuda":
        return create_ddp_model(model, broadcast_buffers=False)
    # broadcast_buffers=False as YOLOX: each process keeps its own BN statistics (SyncBN shares them).
    return nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)


# ---------------------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------------------
class YOLOTrainer(DefaultTrainer):
    """Detectron2 trainer with the YOLOX or YOLOv5 recipe (see the module docstring).

    Usage (``tools/train_net.py``)::

        trainer = YOLOTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
    """

    def __init__(self, cfg):
        # DefaultTrainer.__init__ is not called: the order differs (the epoch plan is needed for max_iter,
        # EMA must wrap the bare model, the data order depends on the resumed state).
        TrainerBase.__init__(self)
        logger_d2 = logging.getLogger("detectron2")
        if not logger_d2.isEnabledFor(logging.INFO):
            from detectron2.utils.logger import setup_logger

            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self.cfg = cfg
        self.use_yolo_schedule = bool(cfg.SOLVER.YOLO.ENABLED)
        self.train_dicts = train_dataset_dicts(cfg)
        self.plan = plan_epochs(cfg, len(self.train_dicts)) if self.use_yolo_schedule else None
        self.max_iter = self.plan.max_iter if self.plan else cfg.SOLVER.MAX_ITER
        self.yolov5 = build_yolov5_recipe(cfg, self.plan) if self.plan else None
        if self.plan:
            warmup = self.yolov5.warmup_iters if self.yolov5 else self.plan.warmup_iters
            logger.info(f"YOLO schedule ({recipe_name(cfg)}): {self.plan.iters_per_epoch} iterations/epoch, "
                        f"{self.plan.epochs:g} epochs = {self.plan.max_iter} iterations; warmup {warmup}, no-aug from "
                        f"iteration {self.plan.no_aug_start_iter}")
        if self.yolov5:
            logger.info(f"YOLOv5 recipe: an optimizer step every {self.yolov5.accumulate} iterations after warmup "
                        f"({self.yolov5.nominal_batch} nominal / {self.yolov5.total_batch} images per iteration); "
                        f"loss x {comm.get_world_size()} processes before backward")

        model = self.build_model(cfg)
        if self.yolov5 and not getattr(getattr(model, "head", None), "loss_times_batch_size", False):
            # lr0 = 0.01 assumes YOLOv5's loss summed over images (MODEL.YOLOV5.LOSS_TIMES_BATCH_SIZE).
            logger.warning("SOLVER.YOLO.RECIPE is 'yolov5' but the head does not multiply its loss by the batch "
                           "size: the updates are about batch-size times smaller than YOLOv5's")
        self.ema = (ModelEMA(model, cfg.SOLVER.EMA.DECAY, cfg.SOLVER.EMA.RAMP) if cfg.SOLVER.EMA.ENABLED else None)
        optimizer = self.build_optimizer(cfg, model)
        # The data seed is shared by all ranks (each takes its slice of one stream) and saved in checkpoints.
        self.data_seed = int(cfg.SEED) if cfg.SEED >= 0 else int(comm.shared_random_seed())
        self.no_aug_applied = False
        data_loader = self._build_train_loader_at(0)

        model = _create_ddp_model(model)
        amp = bool(cfg.SOLVER.AMP.ENABLED)
        if amp and not torch.cuda.is_available():
            logger.warning("SOLVER.AMP.ENABLED is set but CUDA is not available: training in float32")
            amp = False
        accumulation = {}
        if self.yolov5:
            # DDP averages gradients over processes; YOLOv5 multiplies the loss by WORLD_SIZE to get their sum.
            accumulation = {"accumulate_fn": self.yolov5.accumulate_at, "loss_scale": float(comm.get_world_size())}
        self._trainer = YOLOStepRunner(model, data_loader, optimizer, amp=amp, clip_fn=_build_clip_fn(cfg),
                                       **accumulation)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer, self.plan)
        extra = {"ema": self.ema} if self.ema is not None else {}
        self.checkpointer = YOLOCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self), **extra)
        self.start_iter = 0
        self.register_hooks(self.build_hooks())

    # -- builders (class methods, as DefaultTrainer's, so tools can call them without a trainer) --
    @classmethod
    def build_model(cls, cfg) -> nn.Module:
        from detectron2.modeling import build_model

        model = build_model(cfg)
        if cfg.SOLVER.YOLO.SYNC_BN and comm.get_world_size() > 1:
            if next(model.parameters()).device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                logger.info("Converted BatchNorm layers to SyncBatchNorm")
            else:
                logger.warning("SOLVER.YOLO.SYNC_BN needs CUDA processes; BatchNorm kept per process")
        logger.info(f"Model: {type(model).__name__} with "
                    f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
        return model

    @classmethod
    def build_optimizer(cls, cfg, model: nn.Module) -> torch.optim.Optimizer:
        if not cfg.SOLVER.YOLO.ENABLED:
            return DefaultTrainer.build_optimizer(cfg, model)
        if recipe_name(cfg) == "yolov5":
            nbs, total = int(cfg.SOLVER.YOLO.NOMINAL_BATCH_SIZE), int(cfg.SOLVER.IMS_PER_BATCH)
            wd = scaled_weight_decay(cfg.SOLVER.WEIGHT_DECAY, nbs, total)
            logger.info(f"SGD nesterov (YOLOv5): lr0 {cfg.SOLVER.BASE_LR:g}, momentum {cfg.SOLVER.MOMENTUM}, weight "
                        f"decay {wd:g} = {cfg.SOLVER.WEIGHT_DECAY:g} x {total} x {accumulate_steps(nbs, total)} / "
                        f"{nbs} (weights; none on norm weights and biases)")
            return build_yolov5_sgd(unwrap_model(model), cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM, wd)
        lr = cfg.SOLVER.YOLO.BASE_LR_PER_IMAGE * cfg.SOLVER.IMS_PER_BATCH
        name = str(cfg.SOLVER.YOLO.OPTIMIZER)
        logger.info(f"{'SGD nesterov' if name == 'sgd' else name}: lr {lr:g} = {cfg.SOLVER.YOLO.BASE_LR_PER_IMAGE:g} x "
                    f"{cfg.SOLVER.IMS_PER_BATCH} images, momentum {cfg.SOLVER.MOMENTUM}, weight decay "
                    f"{cfg.SOLVER.WEIGHT_DECAY} (conv weights)")
        return build_yolo_optimizer(name, unwrap_model(model), lr, cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer: torch.optim.Optimizer, plan: Optional[EpochPlan] = None):
        if not cfg.SOLVER.YOLO.ENABLED:
            return DefaultTrainer.build_lr_scheduler(cfg, optimizer)
        plan = plan or plan_epochs(cfg)
        if recipe_name(cfg) == "yolov5":
            return YOLOv5Scheduler(optimizer, build_yolov5_recipe(cfg, plan))
        multiplier = YOLOXWarmCosineMultiplier(plan.max_iter, plan.warmup_iters,
                                               plan.max_iter - plan.no_aug_start_iter, cfg.SOLVER.YOLO.MIN_LR_RATIO)
        return LRMultiplier(optimizer, multiplier, plan.max_iter)

    @classmethod
    def build_train_loader(cls, cfg, *, seed: Optional[int] = None, start_index: int = 0, augment: bool = True,
                           dataset: Optional[List[Dict[str, Any]]] = None):
        """The training loader over ``cfg.DATASETS.TRAIN`` whose sampler starts at ``start_index`` (per-process
        samples already drawn) of the stream seeded by ``seed``; ``augment=False`` builds it in no-aug mode.
        Each sample's augmentation is seeded by its place in the stream (``sarl.data.samplers``), so a resumed
        run sees the same augmented samples as an uninterrupted one."""
        dataset = train_dataset_dicts(cfg) if dataset is None else dataset
        sampler = ResumableTrainingSampler(len(dataset), seed=seed, start_index=start_index,
                                           with_positions=cfg.INPUT.YOLO.ENABLED)
        if cfg.INPUT.YOLO.ENABLED:
            mapper = YOLOMapper(cfg, True, dataset)
            if not augment:
                mapper.set_augmentation(False)
            loader = build_yolo_train_loader(cfg, mapper=mapper, dataset=dataset, sampler=sampler)
        else:
            loader = build_detection_train_loader(cfg, dataset=dataset, sampler=sampler)
        loader.train_sampler = sampler  # its seed/start_index tell where the data stream stands
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        if cfg.INPUT.YOLO.ENABLED:
            return build_yolo_test_loader(cfg, dataset_name)
        return build_detection_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
        from sarl.evaluation import AITODEvaluator

        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return AITODEvaluator.from_config(cfg, dataset_name, output_dir=output_folder)

    # -- data order --
    def _samples_per_iteration(self) -> int:
        return max(self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size(), 1)

    def _build_train_loader_at(self, iteration: int, augment: bool = True):
        return self.build_train_loader(self.cfg, seed=self.data_seed, dataset=self.train_dicts,
                                       start_index=iteration * self._samples_per_iteration(), augment=augment)

    def _restart_train_loader(self, iteration: int) -> None:
        augment = not self.no_aug_applied
        self._trainer.reset_data_loader(lambda: self._build_train_loader_at(iteration, augment))

    # -- no-aug phase --
    def _switch_to_no_aug(self) -> None:
        """Mosaic/mixup off (a new loader: DataLoader workers hold copies of the mapper), L1 loss on."""
        self.no_aug_applied = True
        head = getattr(unwrap_model(self.model), "head", None)
        if head is not None and hasattr(head, "use_l1"):
            head.use_l1 = True
        self._restart_train_loader(self.iter)

    # -- hooks --
    def build_hooks(self) -> List[hooks.HookBase]:
        cfg = self.cfg
        ret: List[Optional[hooks.HookBase]] = [hooks.IterationTimer()]
        # EMA before the scheduler/checkpointer: a checkpoint written after step i holds the EMA of step i.
        if self.ema is not None:
            ret.append(_OptimizerStepEMAHook(self.ema) if self.yolov5 else EMAHook(self.ema))
        ret.append(hooks.LRScheduler())
        if self.plan is not None:
            ret.append(NoAugHook(self.plan.no_aug_start_iter, self._switch_to_no_aug))
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))

        def test_and_save_results():
            self._last_eval_results = self.test(cfg, self.eval_model)
            return self._last_eval_results

        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=cfg.get("LOG_PERIOD", 20)))
        return ret

    @property
    def eval_model(self) -> nn.Module:
        """The model evaluated: the EMA copy when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    def train(self) -> Optional["OrderedDict[str, Any]"]:
        """Run training; returns the last evaluation results (None when nothing was evaluated)."""
        super().train()
        return getattr(self, "_last_eval_results", None)

    # -- resume --
    def resume_or_load(self, resume: bool = True) -> None:
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        resumed = resume and self.checkpointer.has_checkpoint()
        if resumed:
            self.start_iter = self.iter + 1
        else:
            self._before_fresh_training()
        if self.ema is not None and not resumed:
            # Weights loaded from MODEL.WEIGHTS: the average starts from them.
            self.ema.module.load_state_dict(unwrap_model(self.model).state_dict())
        # Continue the saved data stream where it stopped (no-aug mode when the phase had begun).
        self._restart_train_loader(self.start_iter)

    def _before_fresh_training(self) -> None:
        """YOLOv5's AutoAnchor: fit anchors to the training boxes (stored in the checkpoint as a buffer)."""
        cfg = self.cfg
        head = getattr(unwrap_model(self.model), "head", None)
        if head is None or not hasattr(head, "anchors") or not cfg.MODEL.YOLOV5.AUTOANCHOR:
            return
        from sarl.modeling.autoanchor import check_anchors

        result = check_anchors(head, self.train_dicts, cfg.INPUT.YOLO.IMG_SIZE,
                               gen=cfg.MODEL.YOLOV5.get("AUTOANCHOR_GENERATIONS", 1000))
        logger.info(f"AutoAnchor: best possible recall {result['bpr_before']:.4f} -> {result['bpr_after']:.4f}")

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["data"] = {"seed": self.data_seed, "samples_per_iteration": self._samples_per_iteration()}
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        data = state.get("data")
        if data is not None:
            self.data_seed = int(data["seed"])
            if data.get("samples_per_iteration") != self._samples_per_iteration():
                logger.warning("Resuming with a different batch per process: the data order restarts its stream")

    # -- evaluation --
    @classmethod
    def test(cls, cfg, model: nn.Module, evaluators=None) -> "OrderedDict[str, Any]":
        was_training = model.training
        model.eval()
        if cfg.TEST.SLICED.ENABLED:
            from sarl.inference import SlicedDetector

            # Whole frames at native resolution: the loader marks large images, this tiles them.
            model = SlicedDetector.from_config(cfg, model)
        try:
            return DefaultTrainer.test.__func__(cls, cfg, model, evaluators)
        finally:
            model.train(was_training)
