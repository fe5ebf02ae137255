from .build import YOLO_HEAD_REGISTRY, build_yolo_head  # noqa: F401
