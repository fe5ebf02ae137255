"""Detectron2 modeling components of SARL. Importing this package registers every component: the
backbones (``BACKBONE_REGISTRY``, in :mod:`.backbone`), the heads (``YOLO_HEAD_REGISTRY``, in
:mod:`.heads`) and ``YOLODetector`` (``META_ARCH_REGISTRY``, in :mod:`.meta_arch`)."""
from .backbone import CSPDarknet, build_cspdarknet_backbone, build_sarl_cspdarknet_pafpn_backbone  # noqa: F401
from .heads import YOLO_HEAD_REGISTRY, YOLOv5Head, YOLOXHead, build_yolo_head  # noqa: F401
from .meta_arch import YOLODetector  # noqa: F401
from .neck.pafpn import YOLOPAFPN  # noqa: F401
from .relay import SARLRelay  # noqa: F401
