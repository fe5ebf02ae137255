"""Registry of dense YOLO heads (``cfg.MODEL.YOLO.HEAD_NAME``).

A head is an ``nn.Module`` with a ``@configurable`` ``__init__`` and a ``from_config(cls, cfg, input_shape)``
(so it is built as ``Head(cfg, input_shape: Dict[str, ShapeSpec])`` or from explicit arguments), with:

- ``forward(features: List[Tensor]) -> outputs``: raw per-level predictions for the feature
  maps named by ``cfg.MODEL.YOLO.IN_FEATURES`` (finest first).
- ``losses(outputs, gt_instances: List[Instances]) -> Dict[str, Tensor]``: loss terms named
  ``loss_*``; ``gt_instances[i]`` holds ``gt_boxes`` (XYXY, padded-input pixels) and ``gt_classes``.
- ``decode(outputs) -> (boxes [B, A, 4] XYXY input pixels, scores [B, A, K])``: per-anchor boxes
  and per-class scores (objectness folded in); the meta-architecture does top-k, NMS and rescaling.
"""
from typing import Dict, List

import torch.nn as nn
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry

YOLO_HEAD_REGISTRY = Registry("YOLO_HEAD")
YOLO_HEAD_REGISTRY.__doc__ = __doc__


def build_yolo_head(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """The head named by ``cfg.MODEL.YOLO.HEAD_NAME``, built from ``cfg`` over ``input_shape``."""
    return YOLO_HEAD_REGISTRY.get(cfg.MODEL.YOLO.HEAD_NAME)(cfg, input_shape)


def head_input_shapes(cfg, input_shape: Dict[str, ShapeSpec]) -> List[ShapeSpec]:
    """The shapes of the levels ``cfg.MODEL.YOLO.IN_FEATURES`` names, in that order (the heads' ``from_config``);
    ValueError naming the levels the backbone does not output."""
    in_features = list(cfg.MODEL.YOLO.IN_FEATURES)
    missing = [f for f in in_features if f not in input_shape]
    if missing:
        raise ValueError(f"MODEL.YOLO.IN_FEATURES names {missing}, which the backbone does not output "
                         f"(it outputs {sorted(input_shape)})")
    return [input_shape[f] for f in in_features]
