"""SimOTA label assignment (YOLOX), in a dense reference form and a sparse form for dense scenes.

Both functions implement the same assignment, defined on the candidate pairs only:

- **candidates**: anchor ``a`` is a candidate of GT ``g`` when its centre lies strictly within
  ``center_radius * stride_a`` of the GT centre along x and y (YOLOX's newer rule; the older
  "in box or within 2.5 strides" rule leaves tiny GTs without anchors);
- **cost** of a candidate pair: ``BCE(sqrt(sig(cls) * sig(obj)), one_hot(class_g)).sum()
  + iou_weight * -log(IoU + 1e-8)``; non-candidate pairs cost ``+1e6`` more (never chosen);
- **dynamic k** of a GT: ``clamp(int(sum(top-k IoUs among its candidates)), 1, num_candidates)``;
- each GT takes its ``k`` cheapest candidates (ties: lower anchor index first);
- an anchor taken by several GTs goes to the GT of lowest cost for that anchor among all GTs
  (YOLOX's rule; ties: lower GT index), which is always one of its candidate GTs.

Differences from the official YOLOX code (chosen so that the sparse form can match the dense one
exactly, documented here and in the README):

1. YOLOX takes the top-10 IoUs of a GT over every anchor lying in *any* GT's centre region;
   here only over the GT's own candidates (in a dense scene neighbouring objects' anchors
   would otherwise inflate ``k``; the sparse form never sees those pairs).
2. YOLOX lets ``k`` exceed the number of candidates and then picks non-candidate anchors
   (cost ``1e6``); here ``k`` is capped at the number of candidates.
3. A GT whose centre region holds no anchor (centre outside the image) gets no anchor.

The dense form materialises ``[G, A]`` matrices (as YOLOX does, minus its ``[G, A, C]`` BCE
tensor: the class cost is decomposed per anchor, see :func:`_per_anchor_class_costs`); the
sparse form enumerates at most ``ceil(2 * center_radius)**2`` anchors per GT and level
(9 for the default radius 1.5) and works on those ``P`` pairs only: ``O(P)`` memory instead
of ``O(G * A)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "AnchorPoints",
    "SimOTAAssignment",
    "make_anchor_points",
    "simota_assign_dense",
    "simota_assign_sparse",
    "simota_assign",
    "pairwise_box_iou",
]

# Cost added to pairs outside the centre region (YOLOX's constant).
_NOT_CANDIDATE_COST = 1e6


@dataclass
class AnchorPoints:
    """Anchor points of all levels, flattened level by level, row-major inside a level.

    Attributes:
        grids: [A, 2] (x, y) integer grid coordinates, as floats.
        strides: [A] stride of each anchor's level.
        centers: [A, 2] anchor centres ``(grid + 0.5) * stride`` in input pixels.
        level_shapes: per level ``(height, width, stride, offset)``; ``offset`` is the index of
            the level's first anchor.
    """

    grids: Tensor
    strides: Tensor
    centers: Tensor
    level_shapes: List[Tuple[int, int, float, int]]

    @property
    def num_anchors(self) -> int:
        return int(self.strides.numel())


def make_anchor_points(level_sizes: Sequence[Tuple[int, int]], strides: Sequence[float],
                       device: torch.device = torch.device("cpu"),
                       dtype: torch.dtype = torch.float32) -> AnchorPoints:
    """Anchor points for feature maps of sizes ``[(H_l, W_l)]`` and the given strides."""
    if len(level_sizes) != len(strides):
        raise ValueError(f"level_sizes ({len(level_sizes)}) and strides ({len(strides)}) differ in length")
    grids, stride_list, shapes = [], [], []
    offset = 0
    for (h, w), s in zip(level_sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                                torch.arange(w, device=device, dtype=dtype), indexing="ij")
        grids.append(torch.stack([xs, ys], dim=-1).reshape(-1, 2))
        stride_list.append(torch.full((h * w,), float(s), device=device, dtype=dtype))
        shapes.append((int(h), int(w), float(s), offset))
        offset += h * w
    grid = torch.cat(grids) if grids else torch.zeros(0, 2, device=device, dtype=dtype)
    stride = torch.cat(stride_list) if stride_list else torch.zeros(0, device=device, dtype=dtype)
    centers = (grid + 0.5) * stride[:, None]
    return AnchorPoints(grid, stride, centers, shapes)


@dataclass
class SimOTAAssignment:
    """Result of SimOTA for one image with ``A`` anchors.

    Attributes:
        fg_mask: [A] bool, anchors assigned to a GT (foreground).
        matched_gt: [A] int64, index of the assigned GT, -1 for background.
        matched_iou: [A] IoU between the anchor's predicted box and its GT, 0 for background.
    """

    fg_mask: Tensor
    matched_gt: Tensor
    matched_iou: Tensor

    @property
    def num_fg(self) -> int:
        return int(self.fg_mask.sum())


def pairwise_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-12) -> Tensor:
    """Elementwise IoU of XYXY boxes broadcast against each other (``[..., 4]`` each).

    Written elementwise so that the dense ``[G, A]`` and sparse ``[P]`` forms compute each pair
    with the same floating-point operations.
    """
    lt_x = torch.maximum(boxes1[..., 0], boxes2[..., 0])
    lt_y = torch.maximum(boxes1[..., 1], boxes2[..., 1])
    rb_x = torch.minimum(boxes1[..., 2], boxes2[..., 2])
    rb_y = torch.minimum(boxes1[..., 3], boxes2[..., 3])
    inter = (rb_x - lt_x).clamp(min=0) * (rb_y - lt_y).clamp(min=0)
    area1 = (boxes1[..., 2] - boxes1[..., 0]).clamp(min=0) * (boxes1[..., 3] - boxes1[..., 1]).clamp(min=0)
    area2 = (boxes2[..., 2] - boxes2[..., 0]).clamp(min=0) * (boxes2[..., 3] - boxes2[..., 1]).clamp(min=0)
    return inter / (area1 + area2 - inter).clamp(min=eps)


def _per_anchor_class_costs(cls_logits: Tensor, obj_logits: Tensor) -> Tuple[Tensor, Tensor]:
    """Decomposition of YOLOX's class cost ``sum_c BCE(p_c, onehot_c(y))`` with
    ``p = sqrt(sig(cls) * sig(obj))``:

        cost(a, y) = sum_c -log(1 - p_ac) + [-log(p_ay) + log(1 - p_ay)]

    Returns ``neg_sum`` [A] (the first sum) and ``delta`` [A, C] (the bracket), each log clamped
    at -100 as ``F.binary_cross_entropy`` does. Avoids YOLOX's ``[G, A, C]`` tensor.
    """
    prob = (cls_logits.float().sigmoid() * obj_logits.float().sigmoid()[:, None]).sqrt()
    neg_log_pos = -torch.log(prob).clamp(min=-100.0)
    neg_log_neg = -torch.log(1.0 - prob).clamp(min=-100.0)
    return neg_log_neg.sum(dim=1), neg_log_pos - neg_log_neg


def _check_inputs(anchors: AnchorPoints, pred_boxes: Tensor, cls_logits: Tensor, obj_logits: Tensor,
                  gt_boxes: Tensor, gt_classes: Tensor) -> None:
    a = anchors.num_anchors
    if pred_boxes.shape != (a, 4):
        raise ValueError(f"pred_boxes must be [A={a}, 4], got {tuple(pred_boxes.shape)}")
    if cls_logits.dim() != 2 or cls_logits.shape[0] != a:
        raise ValueError(f"cls_logits must be [A={a}, C], got {tuple(cls_logits.shape)}")
    if obj_logits.shape != (a,):
        raise ValueError(f"obj_logits must be [A={a}], got {tuple(obj_logits.shape)}")
    if gt_boxes.dim() != 2 or gt_boxes.shape[1] != 4:
        raise ValueError(f"gt_boxes must be [G, 4], got {tuple(gt_boxes.shape)}")
    if gt_classes.shape != (gt_boxes.shape[0],):
        raise ValueError(f"gt_classes must be [G={gt_boxes.shape[0]}], got {tuple(gt_classes.shape)}")
    if gt_classes.numel() and (int(gt_classes.min()) < 0 or int(gt_classes.max()) >= cls_logits.shape[1]):
        raise ValueError(f"gt_classes must lie in [0, {cls_logits.shape[1]}), got range "
                         f"[{int(gt_classes.min())}, {int(gt_classes.max())}]")
    if gt_boxes.numel() and not torch.isfinite(gt_boxes).all():
        raise ValueError("gt_boxes contain non-finite values")


def _empty_assignment(num_anchors: int, device: torch.device, dtype: torch.dtype) -> SimOTAAssignment:
    return SimOTAAssignment(torch.zeros(num_anchors, dtype=torch.bool, device=device),
                            torch.full((num_anchors,), -1, dtype=torch.long, device=device),
                            torch.zeros(num_anchors, dtype=dtype, device=device))


def _gt_centre_bounds(gt_boxes: Tensor) -> Tuple[Tensor, Tensor]:
    centre_x = (gt_boxes[:, 0] + gt_boxes[:, 2]) * 0.5
    centre_y = (gt_boxes[:, 1] + gt_boxes[:, 3]) * 0.5
    return centre_x, centre_y


@torch.no_grad()
def simota_assign_dense(anchors: AnchorPoints, pred_boxes: Tensor, cls_logits: Tensor, obj_logits: Tensor,
                        gt_boxes: Tensor, gt_classes: Tensor, *, center_radius: float = 1.5,
                        topk: int = 10, iou_weight: float = 3.0) -> SimOTAAssignment:
    """Reference SimOTA over full ``[G, A]`` matrices (the YOLOX formulation, see module doc).

    Args:
        anchors: anchor points of the image's feature maps (``A`` anchors).
        pred_boxes: [A, 4] predicted XYXY boxes (input pixels).
        cls_logits: [A, C] class logits; obj_logits: [A] objectness logits.
        gt_boxes: [G, 4] XYXY; gt_classes: [G] int64 in ``[0, C)``.
    """
    _check_inputs(anchors, pred_boxes, cls_logits, obj_logits, gt_boxes, gt_classes)
    num_anchors, num_gt = anchors.num_anchors, gt_boxes.shape[0]
    pred_boxes = pred_boxes.float()
    gt_boxes = gt_boxes.float()
    if num_gt == 0 or num_anchors == 0:
        return _empty_assignment(num_anchors, pred_boxes.device, pred_boxes.dtype)

    centers = anchors.centers.to(pred_boxes)
    strides = anchors.strides.to(pred_boxes)
    gt_cx, gt_cy = _gt_centre_bounds(gt_boxes)
    radius = strides * center_radius  # [A]
    is_candidate = ((centers[None, :, 0] - (gt_cx[:, None] - radius[None]) > 0)
                    & ((gt_cx[:, None] + radius[None]) - centers[None, :, 0] > 0)
                    & (centers[None, :, 1] - (gt_cy[:, None] - radius[None]) > 0)
                    & ((gt_cy[:, None] + radius[None]) - centers[None, :, 1] > 0))  # [G, A]

    # As YOLOX: restrict the matrices to anchors that are a candidate of some GT.
    anchor_ids = is_candidate.any(dim=0).nonzero().squeeze(1)  # [A_u]
    is_candidate = is_candidate[:, anchor_ids]
    num_candidates = is_candidate.sum(dim=1)  # [G]
    ious = pairwise_box_iou(gt_boxes[:, None, :], pred_boxes[anchor_ids][None, :, :])  # [G, A_u]

    neg_sum, delta = _per_anchor_class_costs(cls_logits[anchor_ids], obj_logits[anchor_ids])
    cls_cost = neg_sum[None, :] + delta.t()[gt_classes]  # [G, A_u]
    cost = cls_cost + iou_weight * -torch.log(ious + 1e-8)
    cost = cost + _NOT_CANDIDATE_COST * (~is_candidate).to(cost.dtype)

    # Dynamic k from the top-k IoUs of each GT among its candidates.
    candidate_ious = torch.where(is_candidate, ious, torch.zeros_like(ious))
    k_cols = max(topk, 1)
    padded = candidate_ious
    if padded.shape[1] < k_cols:  # pad so the sum always runs over exactly `topk` columns
        padded = torch.cat([padded, padded.new_zeros(num_gt, k_cols - padded.shape[1])], dim=1)
    top_ious = padded.topk(k_cols, dim=1).values
    dynamic_k = torch.minimum(top_ious.sum(dim=1).int().clamp(min=1), num_candidates.int())  # [G]

    # Each GT takes its k cheapest anchors; ties at the k-th cost go to the lower anchor index.
    max_k = int(dynamic_k.max()) if num_gt else 0
    if max_k == 0:
        return _empty_assignment(num_anchors, pred_boxes.device, pred_boxes.dtype)
    kth_cost = cost.topk(min(max_k, cost.shape[1]), dim=1, largest=False).values  # sorted ascending
    kth_cost = kth_cost.gather(1, (dynamic_k.long() - 1).clamp(min=0)[:, None])  # [G, 1]
    below = cost < kth_cost
    at = cost == kth_cost
    needed = dynamic_k[:, None].long() - below.sum(dim=1, keepdim=True)
    matching = below | (at & (at.long().cumsum(dim=1) <= needed))
    matching &= (dynamic_k > 0)[:, None]

    # Conflicts: an anchor taken by several GTs goes to the GT of lowest cost (all GTs, as YOLOX).
    matches_per_anchor = matching.sum(dim=0)  # [A_u]
    best_gt = cost.argmin(dim=0)  # first minimum: lower GT index on ties
    only_gt = matching.long().argmax(dim=0)
    assigned_gt = torch.where(matches_per_anchor > 1, best_gt, only_gt)
    is_fg = matches_per_anchor > 0

    result = _empty_assignment(num_anchors, pred_boxes.device, pred_boxes.dtype)
    fg_anchor_ids = anchor_ids[is_fg]
    fg_gt = assigned_gt[is_fg]
    result.fg_mask[fg_anchor_ids] = True
    result.matched_gt[fg_anchor_ids] = fg_gt
    result.matched_iou[fg_anchor_ids] = ious[fg_gt, is_fg.nonzero().squeeze(1)]
    return result


def _candidate_pairs(anchors: AnchorPoints, gt_boxes: Tensor, center_radius: float) -> Tuple[Tensor, Tensor]:
    """All (GT, anchor) pairs with the anchor inside the GT's centre region, sorted by GT then
    anchor index. Enumerates the few grid cells around each GT centre on every level and keeps
    those passing the exact same test as the dense form."""
    device = gt_boxes.device
    num_gt = gt_boxes.shape[0]
    gt_cx, gt_cy = _gt_centre_bounds(gt_boxes)
    # Cells i with (i + 0.5) * s in (cx - r*s, cx + r*s): at most ceil(2r) of them, starting just
    # after `first`; one more cell on each side absorbs rounding in the division below.
    span = int(math.ceil(2 * center_radius)) + 2
    offsets = torch.arange(span, device=device)
    centers = anchors.centers.to(gt_boxes)
    strides = anchors.strides.to(gt_boxes)
    gt_list, anchor_list = [], []
    gt_ids = torch.arange(num_gt, device=device)
    for height, width, stride, level_offset in anchors.level_shapes:
        # First cell whose centre can lie within the radius: (i + 0.5) * s > cx - r * s.
        first_x = torch.floor(gt_cx / stride - 0.5 - center_radius).long()
        first_y = torch.floor(gt_cy / stride - 0.5 - center_radius).long()
        cells_x = first_x[:, None, None] + offsets[None, None, :]  # [G, 1, span]
        cells_y = first_y[:, None, None] + offsets[None, :, None]  # [G, span, 1]
        inside = (cells_x >= 0) & (cells_x < width) & (cells_y >= 0) & (cells_y < height)
        ids = level_offset + cells_y.clamp(0, max(height - 1, 0)) * width + cells_x.clamp(0, max(width - 1, 0))
        ids, inside = torch.broadcast_tensors(ids, inside)
        g = gt_ids[:, None, None].expand_as(ids)[inside]
        a = ids[inside]
        gt_list.append(g)
        anchor_list.append(a)
    pair_gt = torch.cat(gt_list)
    pair_anchor = torch.cat(anchor_list)
    # The exact candidate test, written as in the dense form (same float operations).
    radius = strides[pair_anchor] * center_radius
    cx, cy = centers[pair_anchor, 0], centers[pair_anchor, 1]
    pcx, pcy = gt_cx[pair_gt], gt_cy[pair_gt]
    keep = ((cx - (pcx - radius) > 0) & ((pcx + radius) - cx > 0)
            & (cy - (pcy - radius) > 0) & ((pcy + radius) - cy > 0))
    pair_gt, pair_anchor = pair_gt[keep], pair_anchor[keep]
    order = torch.argsort(pair_gt * max(anchors.num_anchors, 1) + pair_anchor)
    return pair_gt[order], pair_anchor[order]


@torch.no_grad()
def simota_assign_sparse(anchors: AnchorPoints, pred_boxes: Tensor, cls_logits: Tensor, obj_logits: Tensor,
                         gt_boxes: Tensor, gt_classes: Tensor, *, center_radius: float = 1.5,
                         topk: int = 10, iou_weight: float = 3.0) -> SimOTAAssignment:
    """SimOTA on the candidate pairs only; same arguments and result as :func:`simota_assign_dense`.

    Memory and time are ``O(P + A)`` with ``P <= G * levels * ceil(2r)^2`` candidate pairs,
    instead of ``O(G * A)``: an 800x800 image with 1500 GTs at strides 8/16/32 has at most 40.5k
    pairs against ``G * A`` = 19.7M.
    """
    _check_inputs(anchors, pred_boxes, cls_logits, obj_logits, gt_boxes, gt_classes)
    num_anchors, num_gt = anchors.num_anchors, gt_boxes.shape[0]
    pred_boxes = pred_boxes.float()
    gt_boxes = gt_boxes.float()
    if num_gt == 0 or num_anchors == 0:
        return _empty_assignment(num_anchors, pred_boxes.device, pred_boxes.dtype)
    device = pred_boxes.device

    pair_gt, pair_anchor = _candidate_pairs(anchors, gt_boxes, center_radius)
    num_pairs = pair_gt.numel()
    if num_pairs == 0:
        return _empty_assignment(num_anchors, device, pred_boxes.dtype)

    ious = pairwise_box_iou(gt_boxes[pair_gt], pred_boxes[pair_anchor])  # [P]
    # Class costs only for anchors that are a candidate of some GT (as the dense form).
    used_anchors, local_anchor = torch.unique(pair_anchor, return_inverse=True)
    neg_sum, delta = _per_anchor_class_costs(cls_logits[used_anchors], obj_logits[used_anchors])
    cls_cost = neg_sum[local_anchor] + delta[local_anchor, gt_classes[pair_gt]]
    cost = cls_cost + iou_weight * -torch.log(ious + 1e-8)

    # Lay the pairs out as a padded [G, K] table (K = most candidates of one GT: <= 9 per level at radius 1.5).
    num_candidates = torch.bincount(pair_gt, minlength=num_gt)  # [G]
    starts = torch.cumsum(num_candidates, 0) - num_candidates
    column = torch.arange(num_pairs, device=device) - starts[pair_gt]
    k_cols = max(int(num_candidates.max()), topk, 1)
    iou_table = ious.new_zeros(num_gt, k_cols)
    iou_table[pair_gt, column] = ious
    top_ious = iou_table.topk(max(topk, 1), dim=1).values
    dynamic_k = torch.minimum(top_ious.sum(dim=1).int().clamp(min=1), num_candidates.int())  # [G]

    # Each GT takes its k cheapest candidates; columns are in anchor order, so a stable sort
    # breaks ties by the lower anchor index, like the dense form.
    cost_table = cost.new_full((num_gt, k_cols), float("inf"))
    cost_table[pair_gt, column] = cost
    order = torch.sort(cost_table, dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(k_cols, device=device).expand(num_gt, k_cols))
    chosen = rank[pair_gt, column] < dynamic_k[pair_gt].long()  # [P]

    # Conflicts: lowest cost for the anchor over all its candidate GTs, ties to the lower GT.
    matches_per_anchor = torch.bincount(pair_anchor[chosen], minlength=num_anchors)  # [A]
    anchor_min_cost = torch.full((num_anchors,), float("inf"), device=device, dtype=cost.dtype)
    anchor_min_cost.scatter_reduce_(0, pair_anchor, cost, reduce="amin")
    is_cheapest = cost == anchor_min_cost[pair_anchor]
    big = torch.iinfo(torch.long).max
    cheapest_gt = torch.full((num_anchors,), big, device=device, dtype=torch.long)
    cheapest_gt.scatter_reduce_(0, pair_anchor[is_cheapest], pair_gt[is_cheapest], reduce="amin")
    conflicted = matches_per_anchor[pair_anchor] > 1
    keep = torch.where(conflicted, is_cheapest & (pair_gt == cheapest_gt[pair_anchor]), chosen)

    result = _empty_assignment(num_anchors, device, pred_boxes.dtype)
    result.fg_mask[pair_anchor[keep]] = True
    result.matched_gt[pair_anchor[keep]] = pair_gt[keep]
    result.matched_iou[pair_anchor[keep]] = ious[keep]
    return result


def simota_assign(mode: str, *args, **kwargs) -> SimOTAAssignment:
    """Dispatch to ``simota_assign_sparse`` (``mode="sparse"``) or ``simota_assign_dense``."""
    if mode == "sparse":
        return simota_assign_sparse(*args, **kwargs)
    if mode == "dense":
        return simota_assign_dense(*args, **kwargs)
    raise ValueError(f"unknown SimOTA assigner {mode!r}: expected 'sparse' or 'dense' (MODEL.YOLOX.ASSIGNER)")
