"""``YOLOTrainer``: Detectron2's ``DefaultTrainer`` with the YOLOX or the YOLOv5 training recipe.

What it adds to ``DefaultTrainer`` (each piece selected by ``SOLVER.YOLO.*`` / ``SOLVER.EMA.*``):

- epochs -> iterations (``sarl.engine.schedule.plan_epochs``): ``SOLVER.YOLO.EPOCHS`` times ``ITERS_PER_EPOCH``
  (0: ``len(train set) // IMS_PER_BATCH``) gives ``max_iter`` (it replaces ``SOLVER.MAX_ITER``; ``EPOCHS <= 0``
  keeps ``SOLVER.MAX_ITER``);
- ``SOLVER.YOLO.RECIPE = "yolox"``: SGD nesterov, momentum ``SOLVER.MOMENTUM`` (0.9), weight decay
  ``SOLVER.WEIGHT_DECAY`` on conv weights only, lr = ``BASE_LR_PER_IMAGE * IMS_PER_BATCH`` (the total batch over
  all processes), the "yoloxwarmcos" schedule (``sarl.engine.schedule``), one optimizer step per iteration;
- ``SOLVER.YOLO.RECIPE = "yolov5"`` (``sarl.engine.yolov5_recipe``): lr0 = ``SOLVER.BASE_LR``, gradients
  accumulated to the nominal batch of 64 images per optimizer step, weight decay scaled to match, linear lr
  decay per epoch, bias-lr/momentum warmup; the loss is multiplied by the number of processes before
  ``backward`` (DDP averages gradients, YOLOv5's loss is a sum over images), and the EMA is updated after each
  optimizer step, not each iteration;
- EMA weights (``ModelEMA``): evaluated, saved as ``checkpoint["ema"]`` (weights + update count), and used
  for inference when a checkpoint is loaded as ``MODEL.WEIGHTS`` (``YOLOCheckpointer``);
- the no-aug phase for the last ``NO_AUG_EPOCHS`` (``NoAugHook``): the training loader is rebuilt with a mapper
  without mosaic/mixup/affine, and the head's L1 loss is switched on;
- YOLOv5's AutoAnchor before a fresh training (``MODEL.YOLOV5.AUTOANCHOR``, ``AutoAnchorHook``);
- AMP on CUDA (``SOLVER.AMP.ENABLED``), gradient clipping (``SOLVER.CLIP_GRADIENTS``, after AMP unscaling)
  (``YOLOStepRunner``), SyncBN (``MODEL.CSPDARKNET.NORM: SyncBN``, built into the model) for multi-GPU training;
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
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, hooks
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import DatasetEvaluator
from detectron2.solver import LRMultiplier
from detectron2.utils import comm

import sarl.modeling  # noqa: F401  (registers YOLODetector, backbones, heads)

from sarl.data import YOLOMapper, build_yolo_test_loader, build_yolo_train_loader  # (registers the datasets)
from sarl.data.catalog import check_num_classes, explain_empty_datasets
from sarl.data.samplers import ResumableTrainingSampler

from ..checkpoint import YOLOCheckpointer, training_class_names
from ..config import UserError
from .distributed import create_ddp_model, unwrap_model
from .ema import ModelEMA
from .hooks import AutoAnchorHook, EMAHook, NoAugHook, OptimizerStepEMAHook
from .optimizer import build_yolo_optimizer
from .schedule import EpochPlan, YOLOXWarmCosineMultiplier, plan_epochs, train_dataset_dicts
from .step import YOLOStepRunner, build_clip_fn
from .yolov5_recipe import YOLOv5Scheduler, accumulate_steps, build_yolov5_recipe, build_yolov5_sgd, recipe_name, \
    scaled_weight_decay

logger = logging.getLogger(__name__)

__all__ = ["YOLOTrainer", "check_model_weights"]

# Iterations between two writes of the metrics (detectron2's DefaultTrainer: PeriodicWriter period 20).
LOG_PERIOD = 20


def check_model_weights(cfg, resume: bool = False) -> None:
    """``MODEL.WEIGHTS``, when set, must be an existing file (or a URL) unless ``resume`` continues from
    ``OUTPUT_DIR/last_checkpoint``, whose named file must then exist. Raises :class:`~sarl.config.UserError`
    (one line) instead of detectron2's ``AssertionError: Checkpoint ... not found!``."""
    marker = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
    if resume and os.path.isfile(marker):
        with open(marker) as f:
            last = os.path.join(cfg.OUTPUT_DIR, f.read().strip())
        if not os.path.isfile(last):
            raise UserError(f"--resume: {marker} names {last}, which does not exist (delete {marker} to start "
                            "from MODEL.WEIGHTS)")
        return
    weights = str(cfg.MODEL.WEIGHTS)
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise UserError(f"MODEL.WEIGHTS: checkpoint file {weights} does not exist (give the path of a .pth/.pkl "
                        "file, or MODEL.WEIGHTS '' to start from random weights)")


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
        with explain_empty_datasets("DATASETS.TRAIN", cfg.DATASETS.TRAIN):
            self.train_dicts = train_dataset_dicts(cfg)
        # After loading: json datasets without names at registration have set their thing_classes by now.
        check_num_classes(cfg)
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
        self._train_mappers: List[YOLOMapper] = []
        data_loader = self._build_train_loader_at(0)

        model = create_ddp_model(model)
        amp = bool(cfg.SOLVER.AMP.ENABLED)
        if amp and not torch.cuda.is_available():
            logger.warning("SOLVER.AMP.ENABLED is set but CUDA is not available: training in float32")
            amp = False
        accumulation = {}
        if self.yolov5:
            # DDP averages gradients over processes; YOLOv5 multiplies the loss by WORLD_SIZE to get their sum.
            accumulation = {"accumulate_fn": self.yolov5.accumulate_at, "loss_scale": float(comm.get_world_size())}
        self._trainer = YOLOStepRunner(model, data_loader, optimizer, amp=amp, clip_fn=build_clip_fn(cfg),
                                       **accumulation)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer, self.plan)
        extra = {"ema": self.ema} if self.ema is not None else {}
        # The training sets' class names go into every checkpoint: prediction labels with them (train_dicts are
        # loaded by now, so json datasets have set their thing_classes).
        self.checkpointer = YOLOCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self),
                                             class_names=training_class_names(cfg), **extra)
        self.start_iter = 0
        self.register_hooks(self.build_hooks())

    # -- builders (class methods, as DefaultTrainer's, so tools can call them without a trainer) --
    @classmethod
    def build_model(cls, cfg) -> nn.Module:
        from detectron2.modeling import build_model

        model = build_model(cfg)  # SyncBN, when wanted, comes with the model (MODEL.CSPDARKNET.NORM)
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
        return build_yolo_optimizer(name, unwrap_model(model), lr, cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY,
                                    fused=bool(cfg.SOLVER.YOLO.FUSED_OPTIMIZER))

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
        samples already drawn) of the stream seeded by ``seed``; ``augment=False`` builds it for the no-aug
        phase (its mapper without mosaic, mixup and the random affine).
        Each sample's augmentation is seeded by its place in the stream (``sarl.data.samplers``), so a resumed
        run sees the same augmented samples as an uninterrupted one."""
        if dataset is None:
            with explain_empty_datasets("DATASETS.TRAIN", cfg.DATASETS.TRAIN):
                dataset = train_dataset_dicts(cfg)
        sampler = ResumableTrainingSampler(len(dataset), seed=seed, start_index=start_index,
                                           with_positions=cfg.INPUT.YOLO.ENABLED)
        if cfg.INPUT.YOLO.ENABLED:
            mapper = YOLOMapper(cfg, True, dataset, augment=augment)
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
        loader = self.build_train_loader(self.cfg, seed=self.data_seed, dataset=self.train_dicts,
                                         start_index=iteration * self._samples_per_iteration(), augment=augment)
        if getattr(loader, "yolo_mapper", None) is not None:
            self._train_mappers.append(loader.yolo_mapper)  # their unreadable-image counts, summed after training
        return loader

    def _restart_train_loader(self, iteration: int) -> None:
        augment = not self.no_aug_applied
        self._trainer.reset_data_loader(lambda: self._build_train_loader_at(iteration, augment))

    # -- no-aug phase --
    def _switch_to_no_aug(self) -> None:
        """L1 loss on; mosaic/mixup/affine off: the training loader is replaced by one whose mapper is built without
        them (DataLoader workers hold their own copies of the mapper), continuing the data stream at ``self.iter``."""
        self.no_aug_applied = True
        head = getattr(unwrap_model(self.model), "head", None)
        if head is not None and hasattr(head, "use_l1"):
            head.use_l1 = True
        self._restart_train_loader(self.iter)

    # -- hooks --
    def build_hooks(self) -> List[hooks.HookBase]:
        cfg = self.cfg
        ret: List[hooks.HookBase] = [hooks.IterationTimer()]
        head = getattr(unwrap_model(self.model), "head", None)
        if cfg.MODEL.YOLOV5.AUTOANCHOR and hasattr(head, "anchors"):
            # First: the anchors are fitted before anything trains or is saved.
            ret.append(AutoAnchorHook(head, self.train_dicts, cfg.INPUT.YOLO.IMG_SIZE,
                                      cfg.MODEL.YOLOV5.AUTOANCHOR_GENERATIONS, self.ema))
        # EMA before the scheduler/checkpointer: a checkpoint written after step i holds the EMA of step i.
        if self.ema is not None:
            ret.append(OptimizerStepEMAHook(self.ema) if self.yolov5 else EMAHook(self.ema))
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
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=LOG_PERIOD))
        return ret

    @property
    def eval_model(self) -> nn.Module:
        """The model evaluated: the EMA copy when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    def train(self) -> Optional["OrderedDict[str, Any]"]:
        """Run training; returns the last evaluation results (None when nothing was evaluated)."""
        super().train()
        unreadable = sum(mapper.num_unreadable for mapper in self._train_mappers)
        if unreadable:
            logger.warning(f"Training skipped {unreadable} reads of unreadable images (another sample was used each "
                           "time; the warnings above name the files)")
        return getattr(self, "_last_eval_results", None)

    # -- resume --
    def resume_or_load(self, resume: bool = True) -> None:
        check_model_weights(self.cfg, resume)
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        resumed = resume and self.checkpointer.has_checkpoint()
        if resumed:
            self.start_iter = self.iter + 1
        elif self.ema is not None:
            # Weights loaded from MODEL.WEIGHTS: the average starts from them.
            self.ema.module.load_state_dict(unwrap_model(self.model).state_dict())
        # Continue the saved data stream where it stopped (no-aug mode when the phase had begun).
        self._restart_train_loader(self.start_iter)

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
