"""Training engine: ``YOLOTrainer`` (Detectron2 ``DefaultTrainer`` with the YOLOX recipe), its hooks (EMA,
no-aug phase), the YOLOX lr schedule and a resumable training sampler."""
from ..data.samplers import ResumableTrainingSampler  # noqa: F401  (re-exported: the trainer's sampler)
from .hooks import EMAHook, ModelEMA, NoAugHook, unwrap_model
from .schedule import EpochPlan, YOLOXWarmCosineMultiplier, build_yolo_sgd, yolo_param_groups
from .trainer import YOLOCheckpointer, YOLOStepRunner, YOLOTrainer, load_inference_weights, plan_epochs

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
    "build_yolo_sgd",
    "load_inference_weights",
    "plan_epochs",
    "unwrap_model",
    "yolo_param_groups",
]
