"""Training engine: ``YOLOTrainer`` (Detectron2 ``DefaultTrainer`` with the YOLOX or the YOLOv5 recipe) and its parts.

    trainer.py        YOLOTrainer: builds the pieces below and runs them
    step.py           YOLOStepRunner: one iteration (AMP, gradient clipping, gradient accumulation)
    schedule.py       EpochPlan / plan_epochs (epochs -> iterations), the YOLOX lr schedule
    optimizer.py      YOLOX parameter groups and optimizers
    yolov5_recipe.py  YOLOv5's recipe: accumulation, warmup, linear lr, its parameter groups and scheduler
    hooks.py          EMA, no-aug phase and AutoAnchor hooks
    ema.py            ModelEMA
    checkpoint.py     YOLOCheckpointer (EMA weights for inference), load_inference_weights
    distributed.py    the DDP wrapper (CPU/Gloo processes too), unwrap_model
"""
from ..data.samplers import ResumableTrainingSampler  # noqa: F401  (re-exported: the trainer's sampler)
from ..checkpoint import YOLOCheckpointer, load_inference_weights
from .distributed import unwrap_model
from .ema import ModelEMA
from .hooks import AutoAnchorHook, EMAHook, NoAugHook, OptimizerStepEMAHook
from .optimizer import build_yolo_optimizer, build_yolo_sgd, yolo_param_groups
from .schedule import EpochPlan, YOLOXWarmCosineMultiplier, plan_epochs
from .step import YOLOStepRunner
from .trainer import YOLOTrainer
from .yolov5_recipe import (YOLOv5Recipe, YOLOv5Scheduler, accumulate_steps, build_yolov5_recipe, build_yolov5_sgd,
                            scaled_weight_decay, yolov5_param_groups)

__all__ = [
    "AutoAnchorHook",
    "EMAHook",
    "EpochPlan",
    "ModelEMA",
    "NoAugHook",
    "OptimizerStepEMAHook",
    "ResumableTrainingSampler",
    "YOLOCheckpointer",
    "YOLOStepRunner",
    "YOLOTrainer",
    "YOLOXWarmCosineMultiplier",
    "YOLOv5Recipe",
    "YOLOv5Scheduler",
    "accumulate_steps",
    "build_yolo_optimizer",
    "build_yolo_sgd",
    "build_yolov5_recipe",
    "build_yolov5_sgd",
    "load_inference_weights",
    "plan_epochs",
    "scaled_weight_decay",
    "unwrap_model",
    "yolo_param_groups",
    "yolov5_param_groups",
]
