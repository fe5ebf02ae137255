"""YOLOX decoupled head (anchor-free), trained with SimOTA and the SAL box loss.

Layout as the official YOLOX head (sub-module names match, so its weights map one to one): per
level a 1x1 stem to ``HEAD_WIDTH * width`` channels, two 3x3 convs for the classification branch
and two for the regression branch, then 1x1 predictions ``cls`` (C), ``reg`` (4), ``obj`` (1).

Losses (REFERENCE.md section 2, YOLOX ``get_losses``), with ``num_fg`` the number of foreground
anchors of the batch *on this process* (YOLOX divides by the local count, it does not average
it over DDP ranks; followed here, so per-GPU losses equal the official ones):

    loss_box = ALPHA * sum_fg SAL(pred, gt) / num_fg      (plain 1 - IoU^2 when MODEL.SAL.ENABLED False)
                                                          (SAL weights: sarl.modeling.losses, MODEL.SAL)
    loss_obj = sum_all_anchors BCE(obj, fg) / num_fg
    loss_cls = sum_fg BCE(cls, one_hot(gt_class) * IoU(pred, gt)) / num_fg
    loss_l1  = sum_fg |reg - (xy/stride - grid, log(wh/stride))| / num_fg   (when ``use_l1``)

``use_l1`` starts as ``MODEL.YOLOX.USE_L1`` and is switched on by the no-aug hook
(``model.head.use_l1 = True``), as YOLOX does for its last 15 epochs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.structures import Instances
from torch import Tensor

from ..assigners.simota import AnchorPoints, make_anchor_points, simota_assign
from ..layers import BaseConv, DWConv, convert_norm
from ..losses import SALParams, check_finite_predictions, sal_box_loss
from .build import YOLO_HEAD_REGISTRY, head_input_shapes

__all__ = ["YOLOXHead", "YOLOXOutputs"]

# Largest log-scale of a predicted box side (in strides): exp() stays finite at any logit.
_MAX_LOG_WH = math.log(1e4)


@dataclass
class YOLOXOutputs:
    """Raw predictions of all levels, flattened level by level (row-major in a level).

    Attributes:
        cls_logits: [N, A, C]; reg_deltas: [N, A, 4] (dx, dy, log w, log h in strides);
        obj_logits: [N, A]; anchors: the matching :class:`AnchorPoints` (``A`` points).
    """

    cls_logits: Tensor
    reg_deltas: Tensor
    obj_logits: Tensor
    anchors: AnchorPoints


@YOLO_HEAD_REGISTRY.register()
class YOLOXHead(nn.Module):
    """Decoupled YOLOX head; see the module docstring for the losses."""

    @configurable
    def __init__(self, *, in_channels: Sequence[int], strides: Sequence[float], num_classes: int,
                 hidden_channels: int, depthwise: bool = False, prior_prob: float = 0.01,
                 assigner: str = "sparse", center_radius: float = 1.5, simota_topk: int = 10,
                 iou_cost_weight: float = 3.0, sal: Optional[SALParams] = None, use_l1: bool = False,
                 norm: str = "BN"):
        """
        Args:
            in_channels, strides: per input level, in ``forward``'s order (finest first).
            num_classes: number of classes C.
            hidden_channels: width of the stems and branches (``HEAD_WIDTH * width multiplier``).
            depthwise: depthwise-separable 3x3 convs (YOLOX-nano).
            prior_prob: initial score of every class and objectness prediction.
            assigner: SimOTA form, "sparse" (dense scenes) or "dense" (reference).
            center_radius, simota_topk, iou_cost_weight: SimOTA's candidate radius (strides), top-k
                for the dynamic k, and weight of the IoU cost.
            sal: the box loss (default ``SALParams()``: SAL over 1 - IoU^2, alpha 5).
            use_l1: add YOLOX's L1 term (the no-aug hook switches it on).
            norm: "BN", or "SyncBN" to convert the head's BatchNorms (as ``convert_norm``).
        """
        super().__init__()
        if len(in_channels) != len(strides):
            raise ValueError(f"in_channels ({len(in_channels)}) and strides ({len(strides)}) need one entry per level")
        if assigner not in ("sparse", "dense"):
            raise ValueError(f"MODEL.YOLOX.ASSIGNER must be 'sparse' or 'dense', got {assigner!r}")
        self.num_classes = int(num_classes)
        self.strides = [float(s) for s in strides]
        hidden = int(hidden_channels)
        conv = DWConv if depthwise else BaseConv

        self.stems = nn.ModuleList([BaseConv(c, hidden, 1, 1) for c in in_channels])
        self.cls_convs = nn.ModuleList([nn.Sequential(conv(hidden, hidden, 3, 1), conv(hidden, hidden, 3, 1))
                                        for _ in in_channels])
        self.reg_convs = nn.ModuleList([nn.Sequential(conv(hidden, hidden, 3, 1), conv(hidden, hidden, 3, 1))
                                        for _ in in_channels])
        self.cls_preds = nn.ModuleList([nn.Conv2d(hidden, self.num_classes, 1) for _ in in_channels])
        self.reg_preds = nn.ModuleList([nn.Conv2d(hidden, 4, 1) for _ in in_channels])
        self.obj_preds = nn.ModuleList([nn.Conv2d(hidden, 1, 1) for _ in in_channels])
        self._init_prior_bias(float(prior_prob))
        convert_norm(self, norm)

        self.assigner = str(assigner)
        self.center_radius = float(center_radius)
        self.simota_topk = int(simota_topk)
        self.iou_cost_weight = float(iou_cost_weight)
        self.sal = sal if sal is not None else SALParams()
        self.use_l1 = bool(use_l1)
        self._anchor_cache: Dict[Tuple, AnchorPoints] = {}

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
        shapes = head_input_shapes(cfg, input_shape)
        yolox = cfg.MODEL.YOLOX
        return {
            "in_channels": [int(s.channels) for s in shapes],
            "strides": [float(s.stride) for s in shapes],
            "num_classes": cfg.MODEL.YOLO.NUM_CLASSES,
            # The official models share the backbone's width, depthwise convs and norm with the head.
            "hidden_channels": int(yolox.HEAD_WIDTH * cfg.MODEL.CSPDARKNET.WIDTH_MULTIPLIER),
            "depthwise": cfg.MODEL.CSPDARKNET.DEPTHWISE,
            "norm": cfg.MODEL.CSPDARKNET.NORM,
            "prior_prob": yolox.PRIOR_PROB,
            "assigner": yolox.ASSIGNER,
            "center_radius": yolox.CENTER_RADIUS,
            "simota_topk": yolox.SIMOTA_TOPK,
            "iou_cost_weight": yolox.IOU_COST_WEIGHT,
            "sal": SALParams.from_config(cfg),
            "use_l1": yolox.USE_L1,
        }

    def _init_prior_bias(self, prior_prob: float) -> None:
        # Start every score at `prior_prob` so the many background anchors do not swamp the loss.
        bias = -math.log((1.0 - prior_prob) / prior_prob)
        for pred in list(self.cls_preds) + list(self.obj_preds):
            nn.init.constant_(pred.bias, bias)

    def anchor_points(self, level_sizes: List[Tuple[int, int]], device: torch.device) -> AnchorPoints:
        key = (tuple(level_sizes), str(device))
        if key not in self._anchor_cache:
            if len(self._anchor_cache) > 16:  # multi-scale training: keep the cache small
                self._anchor_cache.clear()
            self._anchor_cache[key] = make_anchor_points(level_sizes, self.strides, device=device)
        return self._anchor_cache[key]

    def forward(self, features: List[Tensor]) -> YOLOXOutputs:
        """``features``: per level ``[N, C_l, H_l, W_l]`` in ``IN_FEATURES`` order."""
        if len(features) != len(self.stems):
            raise ValueError(f"YOLOXHead expects {len(self.stems)} feature maps (MODEL.YOLO.IN_FEATURES), "
                             f"got {len(features)}")
        cls_all, reg_all, obj_all, sizes = [], [], [], []
        for level, x in enumerate(features):
            x = self.stems[level](x)
            cls_feat = self.cls_convs[level](x)
            reg_feat = self.reg_convs[level](x)
            cls_all.append(self.cls_preds[level](cls_feat).flatten(2).transpose(1, 2))
            reg_all.append(self.reg_preds[level](reg_feat).flatten(2).transpose(1, 2))
            obj_all.append(self.obj_preds[level](reg_feat).flatten(1))
            sizes.append((int(x.shape[-2]), int(x.shape[-1])))
        anchors = self.anchor_points(sizes, features[0].device)
        return YOLOXOutputs(torch.cat(cls_all, 1), torch.cat(reg_all, 1), torch.cat(obj_all, 1), anchors)

    @staticmethod
    def decode_boxes(reg_deltas: Tensor, anchors: AnchorPoints) -> Tensor:
        """[N, A, 4] deltas -> [N, A, 4] XYXY boxes: xy = (d + grid) * s, wh = exp(d) * s."""
        grids = anchors.grids.to(reg_deltas)
        strides = anchors.strides.to(reg_deltas)[:, None]
        centre = (reg_deltas[..., :2] + grids) * strides
        size = reg_deltas[..., 2:].clamp(max=_MAX_LOG_WH).exp() * strides
        return torch.cat([centre - 0.5 * size, centre + 0.5 * size], dim=-1)

    def decode(self, outputs: YOLOXOutputs) -> Tuple[Tensor, Tensor]:
        """-> boxes [N, A, 4] XYXY input pixels, scores [N, A, C] = sig(cls) * sig(obj)."""
        boxes = self.decode_boxes(outputs.reg_deltas, outputs.anchors)
        scores = outputs.cls_logits.sigmoid() * outputs.obj_logits.sigmoid()[..., None]
        return boxes, scores

    def losses(self, outputs: YOLOXOutputs, gt_instances: List[Instances]) -> Dict[str, Tensor]:
        """Loss terms ``loss_box``, ``loss_obj``, ``loss_cls`` (and ``loss_l1``) of the batch."""
        anchors = outputs.anchors
        num_images = outputs.cls_logits.shape[0]
        if len(gt_instances) != num_images:
            raise ValueError(f"got {len(gt_instances)} gt_instances for {num_images} images")
        check_finite_predictions("YOLOXHead", {"cls_logits": outputs.cls_logits, "reg_deltas": outputs.reg_deltas,
                                               "obj_logits": outputs.obj_logits})
        pred_boxes = self.decode_boxes(outputs.reg_deltas.float(), anchors)  # [N, A, 4]

        fg_masks, fg_gt_boxes, fg_gt_classes, fg_ious, fg_image, fg_object = [], [], [], [], [], []
        num_gt_before = 0  # GT objects of the earlier images: ids unique over the batch (MODEL.SAL.PER_OBJECT)
        for i, inst in enumerate(gt_instances):
            gt_boxes = inst.gt_boxes.tensor.to(pred_boxes)
            gt_classes = inst.gt_classes.to(pred_boxes.device).long()
            assignment = simota_assign(
                self.assigner, anchors, pred_boxes[i].detach(), outputs.cls_logits[i].detach(),
                outputs.obj_logits[i].detach(), gt_boxes, gt_classes, center_radius=self.center_radius,
                topk=self.simota_topk, iou_weight=self.iou_cost_weight)
            fg = assignment.fg_mask
            matched = assignment.matched_gt[fg]
            fg_masks.append(fg)
            fg_gt_boxes.append(gt_boxes[matched])
            fg_gt_classes.append(gt_classes[matched])
            fg_ious.append(assignment.matched_iou[fg])
            fg_image.append(torch.full((matched.numel(),), i, dtype=torch.long, device=fg.device))
            fg_object.append(matched.long() + num_gt_before)
            num_gt_before += gt_boxes.shape[0]

        fg_mask = torch.stack(fg_masks)  # [N, A]
        gt_boxes_fg = torch.cat(fg_gt_boxes)  # [M, 4]
        gt_classes_fg = torch.cat(fg_gt_classes)
        ious_fg = torch.cat(fg_ious)
        image_fg = torch.cat(fg_image)
        num_fg_total = int(fg_mask.sum())
        num_fg = max(float(num_fg_total), 1.0)
        _put_scalar("yolox/num_fg_per_image", num_fg_total / max(num_images, 1))

        obj_target = fg_mask.to(outputs.obj_logits.dtype)
        loss_obj = F.binary_cross_entropy_with_logits(outputs.obj_logits.float(), obj_target.float(),
                                                      reduction="sum") / num_fg
        losses: Dict[str, Tensor] = {"loss_obj": loss_obj}
        if num_fg_total == 0:
            # Keep the regression/class branches in the graph (DDP needs every parameter used).
            zero = 0.0 * (outputs.cls_logits.sum() + outputs.reg_deltas.sum())
            losses["loss_box"] = zero
            losses["loss_cls"] = zero.clone()
            if self.use_l1:
                losses["loss_l1"] = zero.clone()
            return losses

        cls_target = F.one_hot(gt_classes_fg, self.num_classes).to(ious_fg) * ious_fg[:, None]
        losses["loss_cls"] = F.binary_cross_entropy_with_logits(
            outputs.cls_logits[fg_mask].float(), cls_target, reduction="sum") / num_fg
        box_loss = sal_box_loss(self.sal, pred_boxes[fg_mask], gt_boxes_fg, image_fg, gt_index=torch.cat(fg_object))
        losses["loss_box"] = self.sal.alpha * box_loss / num_fg
        if self.use_l1:
            losses["loss_l1"] = F.l1_loss(outputs.reg_deltas[fg_mask].float(),
                                          self._l1_targets(gt_boxes_fg, anchors, fg_mask),
                                          reduction="sum") / num_fg
        return losses

    @staticmethod
    def _l1_targets(gt_boxes: Tensor, anchors: AnchorPoints, fg_mask: Tensor) -> Tensor:
        """Targets of the raw deltas (YOLOX ``get_l1_target``): [M, 4]."""
        anchor_ids = fg_mask.nonzero()[:, 1]
        strides = anchors.strides.to(gt_boxes)[anchor_ids]
        grids = anchors.grids.to(gt_boxes)[anchor_ids]
        centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) * 0.5
        size = gt_boxes[:, 2:] - gt_boxes[:, :2]
        return torch.cat([centre / strides[:, None] - grids,
                          torch.log(size / strides[:, None] + 1e-8)], dim=1)


def _put_scalar(name: str, value: float) -> None:
    """Log to detectron2's EventStorage when one is active (training loop), else do nothing."""
    try:
        from detectron2.utils.events import get_event_storage

        get_event_storage().put_scalar(name, value)
    except (AssertionError, ImportError):  # no storage outside a trainer
        pass
