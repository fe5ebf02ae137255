"""Detectron2 modeling components of SARL (registering imports: importing this module
registers the backbones, heads and the meta-architecture)."""
from .heads import YOLO_HEAD_REGISTRY, build_yolo_head  # noqa: F401
# Each component adds its registering import below (one line each).
