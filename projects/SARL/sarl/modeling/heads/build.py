"""Registry of dense YOLO heads (``cfg.MODEL.YOLO.HEAD_NAME``).

A head is an ``nn.Module`` built as ``Head(cfg, input_shape: Dict[str, ShapeSpec])`` with:

- ``forward(features: List[Tensor]) -> outputs``: raw per-level predictions for the feature
  maps named by ``cfg.MODEL.YOLO.IN_FEATURES`` (finest first).
- ``losses(outputs, gt_instances: List[Instances]) -> Dict[str, Tensor]``: loss terms named
  ``loss_*``; ``gt_instances[i]`` holds ``gt_boxes`` (XYXY, padded-input pixels) and ``gt_classes``.
- ``decode(outputs) -> (boxes [B, A, 4] XYXY input pixels, scores [B, A, K])``: per-anchor boxes
  and per-class scores (objectness folded in); the meta-architecture does top-k, NMS and rescaling.
"""
from typing import Dict

import torch.nn as nn
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry

YOLO_HEAD_REGISTRY = Registry("YOLO_HEAD")
YOLO_HEAD_REGISTRY.__doc__ = __doc__


def build_yolo_head(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    return YOLO_HEAD_REGISTRY.get(cfg.MODEL.YOLO.HEAD_NAME)(cfg, input_shape)
