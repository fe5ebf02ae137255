"""Dense YOLO heads; importing this package fills ``YOLO_HEAD_REGISTRY`` (the one place it is filled)."""
from .build import YOLO_HEAD_REGISTRY, build_yolo_head  # noqa: F401
from .yolov5_head import YOLOv5Head  # noqa: F401
from .yolox_head import YOLOXHead  # noqa: F401
