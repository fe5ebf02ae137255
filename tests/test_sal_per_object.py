"""MODEL.SAL.PER_OBJECT (this project's option; the paper counts every matched anchor): each ground-truth object
counts once in the min-max and in the mean weight of weight_norm="mean", however many anchors it is assigned.
Checked by hand on two objects, one with 5 anchors and one with 1 (sarl.modeling.losses.sal_box_loss)."""
from __future__ import annotations

import math

import pytest
import torch

from sarl.config import UserError, add_sarl_config
from sarl.modeling.losses import SALParams, per_object_sal_weights, sal_box_loss
from sarl.ops import sal_weights

BETA = 2 / math.log(2)
# Object A: [0, 0, 4, 4] (area 16) matched by 5 anchors; object B: [10, 10, 20, 20] (area 100) by 1.
TARGET = torch.tensor([[0, 0, 4, 4]] * 5 + [[10, 10, 20, 20]], dtype=torch.float64)
PRED = torch.tensor([[0, 0, 4, 3], [1, 0, 5, 4], [0, 0, 2, 4], [0, 1, 4, 5], [0, 0, 6, 4], [11, 10, 21, 20]],
                    dtype=torch.float64)
GT_INDEX = torch.tensor([0, 0, 0, 0, 0, 1])
# 1 - IoU^2 of each pair by hand: intersections 12, 12, 8, 12, 16, 90 over unions 16, 20, 16, 20, 24, 110.
IOU = [12 / 16, 12 / 20, 8 / 16, 12 / 20, 16 / 24, 90 / 110]
BASE = torch.tensor([1 - i * i for i in IOU], dtype=torch.float64)


def _params(normalize: str, per_object: bool, weight_norm: str = "mean") -> SALParams:
    return SALParams(normalize=normalize, area_range=(0.0, 200.0) if normalize == "fixed" else None,
                     weight_norm=weight_norm, per_object=per_object, eps=0.0)


@pytest.mark.parametrize("per_object", [True, False])
def test_two_objects_one_with_five_anchors_fixed_range(per_object):
    """"fixed" (0, 200): w_A = beta ln(2 - 16/200), w_B = beta ln(2 - 100/200). The mean weight is over objects
    ((w_A + w_B) / 2) per object, over anchors ((5 w_A + w_B) / 6) as the paper counts them."""
    w_a, w_b = BETA * math.log(2 - 16 / 200), BETA * math.log(2 - 100 / 200)
    mean = (w_a + w_b) / 2 if per_object else (5 * w_a + w_b) / 6
    expected = torch.tensor([w_a / mean] * 5 + [w_b / mean], dtype=torch.float64) * BASE
    got = sal_box_loss(_params("fixed", per_object), PRED, TARGET, gt_index=GT_INDEX, reduction="none")
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("per_object", [True, False])
def test_two_objects_one_with_five_anchors_batch_min_max(per_object):
    """Batch min-max: A is the smallest (weight beta ln2), B the largest (0), with or without repeats. The mean is
    beta ln2 / 2 over objects, so A's anchors weigh 2; over anchors it is 5 beta ln2 / 6, so they weigh 1.2."""
    weight_a = 2.0 if per_object else 1.2
    expected = torch.tensor([weight_a] * 5 + [0.0], dtype=torch.float64) * BASE
    got = sal_box_loss(_params("batch", per_object), PRED, TARGET, gt_index=GT_INDEX, reduction="none")
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


def test_per_object_changes_nothing_with_the_paper_weights():
    """Min-max over a multiset equals min-max over its set: without weight_norm the weights are the paper's."""
    for normalize in ("batch", "fixed"):
        paper = sal_box_loss(_params(normalize, False, "none"), PRED, TARGET, reduction="none")
        per_object = sal_box_loss(_params(normalize, True, "none"), PRED, TARGET, gt_index=GT_INDEX, reduction="none")
        torch.testing.assert_close(per_object, paper, atol=1e-12, rtol=1e-12)
        assert paper[:5].min() > 0


def test_per_image_objects():
    """normalize="image": image 0 holds A (3 anchors) and B (1 anchor), image 1 holds C alone (2 anchors). Per
    object, image 0's mean is (beta ln2 + 0) / 2, so A's anchors weigh 2; C, alone, weighs 1."""
    target = torch.tensor([[0, 0, 4, 4]] * 3 + [[10, 10, 20, 20]] + [[5, 5, 9, 9]] * 2, dtype=torch.float64)
    batch_index = torch.tensor([0, 0, 0, 0, 1, 1])
    gt_index = torch.tensor([0, 0, 0, 1, 2, 2])
    weights = per_object_sal_weights(_params("image", True), target, gt_index, batch_index)
    torch.testing.assert_close(weights, torch.tensor([2.0, 2.0, 2.0, 0.0, 1.0, 1.0], dtype=torch.float64))
    # Counting anchors instead (the paper's count), image 0's mean is 3 beta ln2 / 4: A's anchors weigh 4/3.
    anchors = sal_weights(target, normalize="image", batch_index=batch_index, weight_norm="mean")
    torch.testing.assert_close(anchors, torch.tensor([4 / 3, 4 / 3, 4 / 3, 0.0, 1.0, 1.0], dtype=torch.float64))


def test_weights_are_constants_and_the_loss_gradient_flows_to_pred():
    pred = PRED.clone().requires_grad_(True)
    loss = sal_box_loss(_params("batch", True), pred, TARGET, gt_index=GT_INDEX)
    loss.backward()
    assert pred.grad[:5].abs().sum() > 0 and not pred.grad[5].any()  # B weighs 0 in batch min-max


def test_no_pairs_and_missing_gt_index():
    empty = torch.zeros(0, 4)
    loss = sal_box_loss(_params("batch", True), empty.clone().requires_grad_(True), empty,
                        gt_index=torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    with pytest.raises(ValueError, match="PER_OBJECT needs gt_index"):
        sal_box_loss(_params("batch", True), PRED, TARGET)
    # SAL off: no weights, so no object ids are needed.
    plain = sal_box_loss(SALParams(enabled=False, per_object=True, eps=0.0), PRED, TARGET, reduction="none")
    torch.testing.assert_close(plain, BASE, atol=1e-12, rtol=1e-12)


def test_config_keys_default_to_the_paper():
    from detectron2.config import get_cfg

    cfg = add_sarl_config(get_cfg())
    params = SALParams.from_config(cfg)
    assert params.weight_norm == "none" and params.per_object is False
    cfg.MODEL.SAL.WEIGHT_NORM, cfg.MODEL.SAL.PER_OBJECT = "mean", True
    params = SALParams.from_config(cfg)
    assert params.weight_norm == "mean" and params.per_object is True
    cfg.MODEL.SAL.WEIGHT_NORM = "median"
    with pytest.raises(UserError, match="MODEL.SAL.WEIGHT_NORM"):
        SALParams.from_config(cfg)
