"""YOLOv5's anchor-based detection head (``Detect`` + ``ComputeLoss`` of ultralytics/yolov5), with
the Scale-Adaptive Loss (SAL) as its box loss.

Per level, a 1x1 conv predicts ``na * (5 + nc)`` channels: for each of the ``na = 3`` anchors,
``(tx, ty, tw, th, obj, cls_0..cls_{nc-1})``. Decode (official v5 form):
    xy = (2 * sigmoid(txy) - 0.5 + cell) * stride        wh = (2 * sigmoid(twh))^2 * anchor
so a prediction's centre reaches half a cell beyond its own cell (hence the neighbour-cell
matching of :mod:`sarl.modeling.assigners.anchor_match`) and its size is 0..4x its anchor (hence
the shape-ratio bound ``ANCHOR_T = 4``).

Losses (official ComputeLoss, SAL in place of the CIoU term):
- box: per level, the mean over matches of the box loss; summed over levels. The box loss is
  :func:`sarl.modeling.losses.sal_box_loss` (the fused ``sarl.ops.scale_adaptive_iou_loss``). With
  ``MODEL.SAL.ENABLED`` it is the loss of
  ``MODEL.SAL.LOSS_TYPE`` ("iou2" = 1 - IoU^2, the paper) weighted by ``beta * ln(2 - s_i)``, with the
  areas normalised over all matches of all levels together (in input pixels, so levels compare);
  without SAL it is the plain loss of ``MODEL.YOLOV5.BOX_LOSS_TYPE`` ("ciou": the official
  YOLOv5). ``MODEL.SAL.ALPHA`` (YOLOX's 5.0) is not used here: ``BOX_GAIN`` plays its role.
  So with the default keys, switching SAL on changes three things: the base loss (CIoU -> 1 - IoU^2),
  the objectness target (CIoU -> IoU) and the weights; an ablation changes one at a time by setting
  both loss-type keys alike and ``MODEL.YOLOV5.OBJ_TARGET`` (see sarl/benchmark/ablation.py).
- obj: BCE over every cell and anchor, target = the matched prediction's IoU with its GT
  (detached, clamped >= 0; ``MODEL.YOLOV5.OBJ_TARGET`` "auto": CIoU when the box loss is "ciou", as
  YOLOv5, else IoU; "iou" / "ciou" fix it), times the level
  balance ``[4.0, 1.0, 0.4]`` (P3, P4, P5). When two GTs claim the same (anchor, cell), the larger
  IoU is kept (deterministic; YOLOv5's ``sort_obj_iou=True`` result). With P2,
  ``BALANCE_P2 = 4.0``, P3's value, is prepended: the obj mean over P2's 4x more cells already
  weakens each P2 cell 4x, and a larger weight would let P2's many negatives dominate.
- cls: BCE of the matched predictions against one-hot targets, only when ``nc > 1``.
- gains: box 0.05 * 3/nl, cls 0.5 * nc/80 * 3/nl, obj 1.0 * (img/640)^2 * 3/nl, where img is
  ``INPUT.YOLO.IMG_SIZE``.
- every term times the number of images in the batch (``LOSS_TIMES_BATCH_SIZE``, YOLOv5's
  ``loss * bs``): YOLOv5's lr 0.01 and its loss gains assume a loss summed over images. The batch
  is the images on this device; under DDP, YOLOv5 further multiplies by the world size (DDP
  averages gradients over devices), which is the trainer's business (or an lr scaled to match).

Anchors live in a buffer ``anchors`` ([nl, na, 2], (w, h) in input pixels, finest level first),
saved in checkpoints, so the ones AutoAnchor fits (:mod:`sarl.modeling.autoanchor`) travel with the
model.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.structures import Instances
from torch import Tensor

from sarl.config import UserError
from sarl.ops.box_iou import LOSS_TYPES, paired_box_iou

from ..assigners.anchor_match import LevelMatches, match_anchors
from ..losses import SALParams, sal_box_loss
from .build import YOLO_HEAD_REGISTRY, head_input_shapes

__all__ = ["YOLOv5Head"]

OBJ_TARGETS = ("auto", "iou", "ciou")


def _cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    half = boxes[:, 2:] / 2
    return torch.cat([boxes[:, :2] - half, boxes[:, :2] + half], 1)


def _expand_for_p2(values: Sequence, p2_value, num_levels: int, key: str) -> list:
    """``values`` with ``p2_value`` prepended when the head has one level more (P2)."""
    values = list(values)
    if len(values) == num_levels:
        return values
    if len(values) + 1 == num_levels:
        return [p2_value] + values
    raise ValueError(f"MODEL.YOLOV5.{key} has {len(values)} levels but MODEL.YOLO.IN_FEATURES has "
                     f"{num_levels}: give one entry per level (or one fewer, then the P2 default is prepended)")


@YOLO_HEAD_REGISTRY.register()
class YOLOv5Head(nn.Module):
    """Anchor-based YOLOv5 head. See the module docstring for the decode and the losses.

    ``forward`` returns, per level, raw predictions ``[B, na, H, W, 5 + nc]`` (finest level first).
    """

    @configurable
    def __init__(self, *, in_channels: Sequence[int], strides: Sequence[int],
                 anchors: Sequence[Sequence[Sequence[float]]], num_classes: int,
                 anchor_t: float = 4.0, balance: Sequence[float] = (4.0, 1.0, 0.4),
                 box_gain: float = 0.05, cls_gain: float = 0.5, obj_gain: float = 1.0,
                 img_size: int = 640, sal: Optional[SALParams] = None, obj_target: str = "auto",
                 loss_times_batch_size: bool = True, autoanchor_bpr_thresh: float = 0.98):
        """
        Args:
            in_channels, strides: per level, finest first.
            anchors: per level, ``na`` (w, h) pairs in input pixels.
            num_classes: number of classes ``nc``.
            anchor_t: shape-ratio bound of the matching.
            balance: objectness weight per level.
            box_gain, cls_gain, obj_gain: YOLOv5's ``hyp`` gains before the 3/nl, nc/80, (img/640)^2 scaling.
            img_size: training image size (for the obj gain; the objectness bias prior keeps
                YOLOv5's fixed 640, i.e. 8 objects per 640x640 area).
            sal: the box loss (default ``SALParams()``: SAL over 1 - IoU^2): SAL-weighted ``sal.loss_type``
                when ``sal.enabled``, else the plain ``sal.loss_type`` ("ciou": official YOLOv5).
                ``sal.alpha`` (YOLOX's weight) is unused: ``box_gain`` is YOLOv5's weight.
            obj_target: objectness target "iou", "ciou", or "auto" (CIoU when ``sal.loss_type`` is "ciou").
            loss_times_batch_size: multiply the losses by the batch size, as YOLOv5.
            autoanchor_bpr_thresh: AutoAnchor refits when the anchors' best possible recall is below it.
        """
        super().__init__()
        num_levels = len(in_channels)
        anchor_tensor = torch.as_tensor(anchors, dtype=torch.float32)
        if anchor_tensor.dim() != 3 or anchor_tensor.shape[0] != num_levels or anchor_tensor.shape[2] != 2:
            raise ValueError(f"anchors must be [{num_levels} levels, na, 2], got {tuple(anchor_tensor.shape)}")
        if not bool((anchor_tensor > 0).all()):
            raise ValueError(f"anchors must be positive, got {anchor_tensor.tolist()}")
        if len(strides) != num_levels or len(balance) != num_levels:
            raise ValueError(f"strides ({len(strides)}) and balance ({len(balance)}) need one entry "
                             f"per level ({num_levels})")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        sal = sal if sal is not None else SALParams()
        if sal.loss_type not in LOSS_TYPES:
            raise ValueError(f"the box loss type (MODEL.SAL.LOSS_TYPE, or MODEL.YOLOV5.BOX_LOSS_TYPE without SAL) "
                             f"must be one of {LOSS_TYPES}, got {sal.loss_type!r}")
        if obj_target not in OBJ_TARGETS:
            raise ValueError(f"MODEL.YOLOV5.OBJ_TARGET must be one of {OBJ_TARGETS}, got {obj_target!r}")

        self.num_classes = int(num_classes)
        self.num_levels = num_levels
        self.num_anchors = int(anchor_tensor.shape[1])
        self.num_outputs = 5 + self.num_classes
        self.strides = [int(s) for s in strides]
        self.anchor_t = float(anchor_t)
        self.balance = [float(b) for b in balance]
        self.autoanchor_bpr_thresh = float(autoanchor_bpr_thresh)
        self.loss_times_batch_size = bool(loss_times_batch_size)
        # YOLOv5's gain scaling: to levels (3/nl), classes (nc/80) and image size ((img/640)^2).
        level_scale = 3.0 / num_levels
        self.box_gain = box_gain * level_scale
        self.cls_gain = cls_gain * self.num_classes / 80.0 * level_scale
        self.obj_gain = obj_gain * (img_size / 640.0) ** 2 * level_scale

        self.sal = sal
        # Official ("auto"): the obj target is the box-loss IoU, i.e. CIoU for the CIoU loss.
        self.obj_target_complete_iou = obj_target == "ciou" or (obj_target == "auto" and sal.loss_type == "ciou")

        # (w, h) in input pixels, saved with the model (AutoAnchor rewrites it in place).
        self.register_buffer("anchors", anchor_tensor.clone())
        self.predictors = nn.ModuleList(
            nn.Conv2d(c, self.num_anchors * self.num_outputs, kernel_size=1) for c in in_channels)
        self._init_biases()

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
        shapes = head_input_shapes(cfg, input_shape)
        num_levels = len(shapes)
        v5 = cfg.MODEL.YOLOV5
        if v5.OBJ_TARGET not in OBJ_TARGETS:
            raise UserError(f"MODEL.YOLOV5.OBJ_TARGET must be one of {OBJ_TARGETS}, got {v5.OBJ_TARGET!r}")
        return {
            "in_channels": [s.channels for s in shapes],
            "strides": [s.stride for s in shapes],
            "anchors": _expand_for_p2(v5.ANCHORS, v5.ANCHORS_P2, num_levels, "ANCHORS"),
            "num_classes": cfg.MODEL.YOLO.NUM_CLASSES,
            "anchor_t": v5.ANCHOR_T,
            "balance": _expand_for_p2(v5.BALANCE, v5.BALANCE_P2, num_levels, "BALANCE"),
            "box_gain": v5.BOX_GAIN,
            "cls_gain": v5.CLS_GAIN,
            "obj_gain": v5.OBJ_GAIN,
            "img_size": cfg.INPUT.YOLO.IMG_SIZE,
            # With SAL the base loss is MODEL.SAL.LOSS_TYPE; without it, YOLOv5's own BOX_LOSS_TYPE.
            "sal": SALParams.from_config(cfg, loss_type=None if cfg.MODEL.SAL.ENABLED else v5.BOX_LOSS_TYPE),
            "obj_target": v5.OBJ_TARGET,
            "loss_times_batch_size": v5.LOSS_TIMES_BATCH_SIZE,
            "autoanchor_bpr_thresh": v5.AUTOANCHOR_BPR_THRESH,
        }

    def _init_biases(self) -> None:
        """YOLOv5's priors: about 8 objects per 640x640 image, and class probability 0.6/nc."""
        with torch.no_grad():
            for conv, stride in zip(self.predictors, self.strides):
                bias = conv.bias.view(self.num_anchors, self.num_outputs)
                bias[:, 4] += math.log(8.0 / (640.0 / stride) ** 2)
                bias[:, 5:] += math.log(0.6 / (self.num_classes - 0.99999))

    # ------------------------------------------------------------------ forward / decode
    def forward(self, features: List[Tensor]) -> List[Tensor]:
        """Args: features: per level [B, C_l, H_l, W_l], finest first.
        Returns: per level [B, na, H_l, W_l, 5 + nc] raw logits."""
        if len(features) != self.num_levels:
            raise ValueError(f"YOLOv5Head expects {self.num_levels} feature maps, got {len(features)}")
        outputs = []
        for x, conv in zip(features, self.predictors):
            batch, _, height, width = x.shape
            y = conv(x).view(batch, self.num_anchors, self.num_outputs, height, width)
            outputs.append(y.permute(0, 1, 3, 4, 2).contiguous())
        return outputs

    def decode_level(self, output: Tensor, level: int) -> Tensor:
        """[B, na, H, W, 5 + nc] logits -> [B, na, H, W, 4] ``(cx, cy, w, h)`` boxes in input pixels."""
        _, _, height, width, _ = output.shape
        stride = self.strides[level]
        ys, xs = torch.meshgrid(torch.arange(height, device=output.device, dtype=output.dtype),
                                torch.arange(width, device=output.device, dtype=output.dtype), indexing="ij")
        cell = torch.stack([xs, ys], -1)  # [H, W, 2] (x, y)
        anchor_wh = self.anchors[level].to(output.dtype).view(1, self.num_anchors, 1, 1, 2)
        xy = (output[..., 0:2].sigmoid() * 2.0 - 0.5 + cell) * stride
        wh = (output[..., 2:4].sigmoid() * 2.0).pow(2) * anchor_wh
        return torch.cat([xy, wh], -1)

    def decode(self, outputs: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """Boxes and scores of every (level, anchor, cell).

        Returns:
            boxes: [B, A, 4] XYXY input pixels, A = sum_l na * H_l * W_l (level, anchor, y, x order).
            scores: [B, A, nc] = sigmoid(obj) * sigmoid(cls); for ``nc == 1`` just sigmoid(obj)
            (YOLOv5 trains no class logit for one class).
        """
        all_boxes, all_scores = [], []
        for level, output in enumerate(outputs):
            batch = output.shape[0]
            cxcywh = self.decode_level(output, level).reshape(-1, 4)
            all_boxes.append(_cxcywh_to_xyxy(cxcywh).view(batch, -1, 4))
            obj = output[..., 4:5].sigmoid().reshape(batch, -1, 1)
            if self.num_classes == 1:
                all_scores.append(obj)
            else:
                all_scores.append(obj * output[..., 5:].sigmoid().reshape(batch, -1, self.num_classes))
        return torch.cat(all_boxes, 1), torch.cat(all_scores, 1)

    # ------------------------------------------------------------------ losses
    def _flatten_gt(self, gt_instances: List[Instances], device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
        boxes, classes, batch_index = [], [], []
        for image_index, inst in enumerate(gt_instances):
            xyxy = inst.gt_boxes.tensor.to(device=device, dtype=torch.float32)
            boxes.append(torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1))
            classes.append(inst.gt_classes.to(device=device, dtype=torch.long))
            batch_index.append(torch.full((len(inst),), image_index, dtype=torch.long, device=device))
        gt_boxes, gt_classes = torch.cat(boxes), torch.cat(classes)
        if gt_boxes.numel() and not bool(torch.isfinite(gt_boxes).all()):
            raise ValueError("gt_instances: gt_boxes holds a non-finite value")
        if gt_classes.numel() and (int(gt_classes.min()) < 0 or int(gt_classes.max()) >= self.num_classes):
            raise ValueError(f"gt_instances: gt_classes must be in [0, {self.num_classes}), got values in "
                             f"[{int(gt_classes.min())}, {int(gt_classes.max())}]")
        return gt_boxes, gt_classes, torch.cat(batch_index)

    def _box_loss_per_match(self, pred: Tensor, target: Tensor, batch_index: Tensor, gt_index: Tensor) -> Tensor:
        """[M] box loss of matched pairs (``cxcywh`` input pixels): SAL-weighted or plain; ``gt_index``
        [M] is each pair's GT row (for ``MODEL.SAL.PER_OBJECT``)."""
        return sal_box_loss(self.sal, _cxcywh_to_xyxy(pred), _cxcywh_to_xyxy(target),
                            batch_index, reduction="none", gt_index=gt_index)

    def match(self, outputs: List[Tensor], gt_instances: List[Instances]) -> Tuple[List[LevelMatches], Tensor]:
        """Run the official matching for these outputs. Returns (per-level matches, gt_classes [G])."""
        gt_boxes, gt_classes, gt_batch_index = self._flatten_gt(gt_instances, outputs[0].device)
        grid_sizes = [(o.shape[2], o.shape[3]) for o in outputs]
        matches = match_anchors(gt_boxes, gt_batch_index, self.anchors.float(), self.strides, grid_sizes,
                                anchor_t=self.anchor_t)
        return matches, gt_classes

    def losses(self, outputs: List[Tensor], gt_instances: List[Instances]) -> Dict[str, Tensor]:
        """YOLOv5 losses ``loss_box``, ``loss_obj``, ``loss_cls`` (each a scalar) for ``outputs``
        of :meth:`forward` and per-image ``gt_instances`` (``gt_boxes`` XYXY input pixels)."""
        if len(outputs) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} levels of outputs, got {len(outputs)}")
        batch_size = outputs[0].shape[0]
        if len(gt_instances) != batch_size:
            raise ValueError(f"gt_instances has {len(gt_instances)} images, outputs have {batch_size}")
        outputs = [o.float() for o in outputs]  # losses in float32 under AMP
        matches, gt_classes = self.match(outputs, gt_instances)

        # Matched predictions of all levels, in input pixels, for one SAL call (the areas are then
        # normalised over the whole batch, across levels).
        pred_boxes, target_boxes, picked = [], [], []
        for level, (output, m) in enumerate(zip(outputs, matches)):
            p = output[m.batch_index, m.anchor_index, m.grid_y, m.grid_x]  # [M, 5 + nc]
            stride = self.strides[level]
            pxy = p[:, 0:2].sigmoid() * 2.0 - 0.5
            pwh = (p[:, 2:4].sigmoid() * 2.0).pow(2) * m.anchors
            pred_boxes.append(torch.cat([pxy, pwh], 1) * stride)
            target_boxes.append(m.target_boxes * stride)
            picked.append(p)
        pred_all, target_all = torch.cat(pred_boxes), torch.cat(target_boxes)
        batch_all = torch.cat([m.batch_index for m in matches])
        per_match_box_loss = self._box_loss_per_match(pred_all, target_all, batch_all,
                                                      torch.cat([m.gt_index for m in matches]))
        with torch.no_grad():
            quality = paired_box_iou(pred_all, target_all, kind="ciou" if self.obj_target_complete_iou else "iou",
                                     box_format="cxcywh").clamp(min=0)
        box_loss_by_level = per_match_box_loss.split([len(m) for m in matches])
        quality_by_level = quality.split([len(m) for m in matches])

        zero = sum(o.sum() for o in outputs) * 0.0  # keeps every output in the graph (DDP)
        loss_box, loss_obj, loss_cls = zero, zero, zero
        for level, (output, m, p) in enumerate(zip(outputs, matches, picked)):
            obj_target = torch.zeros(output.shape[:4], dtype=output.dtype, device=output.device)
            if len(m):
                loss_box = loss_box + box_loss_by_level[level].mean()
                flat_cell = ((m.batch_index * self.num_anchors + m.anchor_index) * output.shape[2]
                             + m.grid_y) * output.shape[3] + m.grid_x
                obj_target.view(-1).scatter_reduce_(0, flat_cell, quality_by_level[level].to(output.dtype),
                                                    reduce="amax")
                if self.num_classes > 1:
                    cls_target = F.one_hot(gt_classes[m.gt_index], self.num_classes).to(p.dtype)
                    loss_cls = loss_cls + F.binary_cross_entropy_with_logits(p[:, 5:], cls_target)
            loss_obj = loss_obj + self.balance[level] * F.binary_cross_entropy_with_logits(
                output[..., 4], obj_target)

        scale = float(batch_size) if self.loss_times_batch_size else 1.0
        return {
            "loss_box": loss_box * (self.box_gain * scale),
            "loss_obj": loss_obj * (self.obj_gain * scale),
            "loss_cls": loss_cls * (self.cls_gain * scale),
        }
