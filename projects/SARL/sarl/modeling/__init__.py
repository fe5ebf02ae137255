"""Detectron2 modeling components of SARL (registering imports: importing this module
registers the backbones, heads and the meta-architecture)."""
from .heads import YOLO_HEAD_REGISTRY, build_yolo_head  # noqa: F401
# Each component adds its registering import below (one line each).
from .backbone.build import CSPDarknet, SARLRelay, YOLOPAFPN, build_sarl_cspdarknet_pafpn_backbone  # noqa: F401,E501
from .heads import yolov5_head  # noqa: F401,E402  (registers YOLOv5Head)
from . import meta_arch  # noqa: F401,E402  (registers YOLODetector, YOLOXHead via heads.yolox_head)
