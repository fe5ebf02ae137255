"""Training engine: ``YOLOTrainer`` (Detectron2 ``DefaultTrainer`` with the YOLOX or the YOLOv5 recipe), its
hooks (EMA, no-aug phase), the YOLOX lr schedule, YOLOv5's recipe (accumulation, warmup, linear lr) and a
resumable training sampler."""
from ..data.samplers import ResumableTrainingSampler  # noqa: F401  (re-exported: the trainer's sampler)
from .hooks import EMAHook, ModelEMA, NoAugHook, unwrap_model
from .schedule import EpochPlan, YOLOXWarmCosineMultiplier, build_yolo_sgd, yolo_param_groups
from .trainer import (YOLOCheckpointer, YOLOStepRunner, YOLOTrainer, build_yolov5_recipe, load_inference_weights,
                      plan_epochs)
from .yolov5_recipe import (YOLOv5Recipe, YOLOv5Scheduler, accumulate_steps, build_yolov5_sgd, scaled_weight_decay,
                            yolov5_param_groups)

__all__ = [
    "EMAHook",
    "EpochPlan",
    "ModelEMA",
    "NoAugHook",
    "ResumableTrainingSampler",
    "YOLOCheckpointer",
    "YOLOStepRunner",
    "YOLOTrainer",
    "YOLOXWarmCosineMultiplier",
    "YOLOv5Recipe",
    "YOLOv5Scheduler",
    "accumulate_steps",
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
