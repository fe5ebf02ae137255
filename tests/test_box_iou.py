"""IoU / GIoU / DIoU / CIoU of matched pairs (sarl.ops.box_iou) against values worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from sarl.ops.box_iou import iou_loss, paired_box_iou

# pred [1, 1, 5, 3] (4 x 2, centre (3, 2)), target [0, 0, 4, 4] (4 x 4, centre (2, 2)).
PRED = torch.tensor([[1.0, 1.0, 5.0, 3.0]], dtype=torch.float64)
TARGET = torch.tensor([[0.0, 0.0, 4.0, 4.0]], dtype=torch.float64)
# Overlap 3 x 2 = 6, union 8 + 16 - 6 = 18, enclosing box [0, 0, 5, 4]: area 20, diagonal^2 41,
# centre distance^2 1, aspect term v = 4 / pi^2 (atan(4 / 4) - atan(4 / 2))^2.
IOU = 6 / 18
V = 4 / math.pi ** 2 * (math.atan(1.0) - math.atan(2.0)) ** 2
BY_HAND = {
    "iou": IOU,
    "giou": IOU - (20 - 18) / 20,
    "diou": IOU - 1 / 41,
    "ciou": IOU - 1 / 41 - V / (1 - IOU + V) * V,
}


@pytest.mark.parametrize("kind", sorted(BY_HAND))
def test_each_kind_matches_the_hand_computation(kind):
    got = paired_box_iou(PRED, TARGET, kind=kind)
    assert got.item() == pytest.approx(BY_HAND[kind], rel=1e-6)
    pred_cxcywh = torch.tensor([[3.0, 2.0, 4.0, 2.0]], dtype=torch.float64)
    target_cxcywh = torch.tensor([[2.0, 2.0, 4.0, 4.0]], dtype=torch.float64)
    got = paired_box_iou(pred_cxcywh, target_cxcywh, kind=kind, box_format="cxcywh")
    assert got.item() == pytest.approx(BY_HAND[kind], rel=1e-6)


@pytest.mark.parametrize("loss_type", ["iou", "giou", "diou", "ciou"])
def test_losses_are_one_minus_the_kind(loss_type):
    assert iou_loss(PRED, TARGET, loss_type=loss_type).item() == pytest.approx(1 - BY_HAND[loss_type], rel=1e-6)
    assert iou_loss(PRED, TARGET, loss_type="iou2").item() == pytest.approx(1 - IOU ** 2, rel=1e-6)


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="kind"):
        paired_box_iou(PRED, TARGET, kind="eiou")
    with pytest.raises(ValueError, match="loss_type"):
        iou_loss(PRED, TARGET, loss_type="l1")
