"""Fused operators of SARL/SAL (``torch.ops.sarl.*``) and their Python API.

Importable without detectron2::

    from sarl.ops import scale_adaptive_iou_loss
    loss = scale_adaptive_iou_loss(pred_xyxy, target_xyxy)   # [N, 4] each

Every op has a pure-PyTorch reference in :mod:`sarl.ops.reference`, used by the tests and
as the fallback when the extension is not built.
"""
from ._extension import (  # noqa: F401
    cuda_kernels_available,
    extension_available,
    extension_info,
)
from .sal import PAPER_SAL_BETA, ScaleAdaptiveIoULoss, sal_weights, scale_adaptive_iou_loss  # noqa: F401
from .relay import relay_gate, relay_pool  # noqa: F401
from .box_iou import iou_loss, paired_box_iou  # noqa: F401
from .coco_eval import coco_eval_bbox  # noqa: F401
from . import reference  # noqa: F401

__all__ = [
    "scale_adaptive_iou_loss",
    "ScaleAdaptiveIoULoss",
    "sal_weights",
    "PAPER_SAL_BETA",
    "paired_box_iou",
    "iou_loss",
    "relay_pool",
    "relay_gate",
    "coco_eval_bbox",
    "reference",
    "extension_available",
    "extension_info",
    "cuda_kernels_available",
]
