"""SimOTA: sparse and dense forms give identical assignments; both match a plain per-GT loop."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sarl.modeling.assigners.simota import (
    make_anchor_points,
    pairwise_box_iou,
    simota_assign,
    simota_assign_dense,
    simota_assign_sparse,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def random_scene(num_gt: int, height: int = 256, width: int = 256, strides=(8, 16, 32), num_classes: int = 5,
                 max_side: float = 24.0, seed: int = 0, outside: bool = False):
    """Tiny GTs anywhere in the image (optionally some centres outside it) and predictions
    scattered around the anchor centres, as a half-trained head gives."""
    gen = torch.Generator().manual_seed(seed)
    anchors = make_anchor_points([(math.ceil(height / s), math.ceil(width / s)) for s in strides], strides)
    num_anchors = anchors.num_anchors
    size = torch.rand(num_gt, 2, generator=gen) * max_side + 1.0
    lo = -20.0 if outside else 0.0
    centre = torch.rand(num_gt, 2, generator=gen) * torch.tensor([width - 2 * lo, height - 2 * lo]) + lo
    gt_boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    jitter = torch.randn(num_anchors, 2, generator=gen) * anchors.strides[:, None] * 0.6
    pred_centre = anchors.centers + jitter
    pred_size = torch.exp(torch.randn(num_anchors, 2, generator=gen) * 0.6) * anchors.strides[:, None]
    pred_boxes = torch.cat([pred_centre - pred_size / 2, pred_centre + pred_size / 2], dim=1)
    cls_logits = torch.randn(num_anchors, num_classes, generator=gen) * 2
    obj_logits = torch.randn(num_anchors, generator=gen) * 2
    gt_classes = torch.randint(0, num_classes, (num_gt,), generator=gen)
    return anchors, pred_boxes, cls_logits, obj_logits, gt_boxes, gt_classes


def assert_same(a, b):
    assert torch.equal(a.fg_mask, b.fg_mask)
    assert torch.equal(a.matched_gt, b.matched_gt)
    assert torch.equal(a.matched_iou, b.matched_iou)


def loop_reference(anchors, pred_boxes, cls_logits, obj_logits, gt_boxes, gt_classes, radius=1.5, topk=10,
                   iou_weight=3.0):
    """The assignment written as plainly as possible (float64, per GT, per anchor): an
    independent check of both vectorised forms."""
    num_gt, num_anchors = gt_boxes.shape[0], anchors.num_anchors
    centres, strides = anchors.centers.double(), anchors.strides.double()
    prob = (cls_logits.double().sigmoid() * obj_logits.double().sigmoid()[:, None]).sqrt()
    costs = {}
    chosen = {}
    for g in range(num_gt):
        cx = float(gt_boxes[g, 0] + gt_boxes[g, 2]) / 2
        cy = float(gt_boxes[g, 1] + gt_boxes[g, 3]) / 2
        cands = [a for a in range(num_anchors)
                 if abs(float(centres[a, 0]) - cx) < radius * float(strides[a])
                 and abs(float(centres[a, 1]) - cy) < radius * float(strides[a])]
        if not cands:
            continue
        ious = pairwise_box_iou(gt_boxes[g].double()[None], pred_boxes[cands].double())
        onehot = torch.nn.functional.one_hot(gt_classes[g], cls_logits.shape[1]).double()
        for a, iou in zip(cands, ious.tolist()):
            bce = torch.nn.functional.binary_cross_entropy(prob[a], onehot, reduction="sum")
            costs[(g, a)] = float(bce) + iou_weight * -math.log(iou + 1e-8)
        k = int(sorted(ious.tolist(), reverse=True)[:topk] and sum(sorted(ious.tolist(), reverse=True)[:topk]))
        k = min(max(k, 1), len(cands))
        chosen[g] = sorted(cands, key=lambda a: (costs[(g, a)], a))[:k]
    owners = {}
    for g, ids in chosen.items():
        for a in ids:
            owners.setdefault(a, []).append(g)
    result = {}
    for a, gs in owners.items():
        if len(gs) == 1:
            result[a] = gs[0]
        else:  # lowest cost over every GT having the anchor as a candidate
            result[a] = min((g for g in range(num_gt) if (g, a) in costs), key=lambda g: (costs[(g, a)], g))
    return result


@pytest.mark.parametrize("num_gt", [0, 1, 3, 40, 200])
@pytest.mark.parametrize("strides", [(8, 16, 32), (4, 8, 16, 32)])
def test_sparse_equals_dense_on_random_scenes(num_gt, strides):
    for seed in range(3):
        scene = random_scene(num_gt, strides=strides, seed=seed, outside=seed == 2)
        dense = simota_assign_dense(*scene)
        sparse = simota_assign_sparse(*scene)
        assert_same(dense, sparse)
        if num_gt:
            assert dense.num_fg > 0
            assert torch.all(dense.matched_iou[dense.fg_mask] >= 0)
            assert torch.all(dense.matched_gt[~dense.fg_mask] == -1)


@settings(max_examples=15, deadline=None)
@given(num_gt=st.integers(0, 60), height=st.integers(33, 200), width=st.integers(33, 200),
       radius=st.sampled_from([0.5, 1.0, 1.5, 2.5]), topk=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_sparse_equals_dense_property(num_gt, height, width, radius, topk, seed):
    scene = random_scene(num_gt, height=height, width=width, seed=seed, outside=seed % 2 == 0)
    kwargs = dict(center_radius=radius, topk=topk)
    assert_same(simota_assign_dense(*scene, **kwargs), simota_assign_sparse(*scene, **kwargs))


@pytest.mark.parametrize("num_gt", [1, 6, 25])
def test_both_forms_match_the_plain_loop(num_gt):
    scene = random_scene(num_gt, height=96, width=128, seed=num_gt)
    expected = loop_reference(*scene)
    for assign in (simota_assign_dense, simota_assign_sparse):
        result = assign(*scene)
        got = {int(a): int(result.matched_gt[a]) for a in result.fg_mask.nonzero().flatten()}
        assert got == expected


def test_dense_crowd_many_conflicts():
    """Overlapping GTs compete for the same anchors: conflict resolution must agree."""
    anchors, pred, cls, obj, _, _ = random_scene(0, height=64, width=64, strides=(8, 16), seed=3)
    gen = torch.Generator().manual_seed(1)
    centre = 24 + torch.rand(80, 2, generator=gen) * 16  # 80 GTs inside a 16x16 px square
    gt = torch.cat([centre - 6, centre + 6], dim=1)
    classes = torch.randint(0, cls.shape[1], (80,), generator=gen)
    dense = simota_assign_dense(anchors, pred, cls, obj, gt, classes)
    sparse = simota_assign_sparse(anchors, pred, cls, obj, gt, classes)
    assert_same(dense, sparse)
    assert dense.num_fg <= anchors.num_anchors


def test_candidates_lie_within_the_centre_radius():
    scene = random_scene(30, seed=5)
    anchors, gt_boxes = scene[0], scene[4]
    result = simota_assign_sparse(*scene)
    fg = result.fg_mask.nonzero().flatten()
    gt = gt_boxes[result.matched_gt[fg]]
    centre = (gt[:, :2] + gt[:, 2:]) / 2
    dist = (anchors.centers[fg] - centre).abs()
    assert torch.all(dist < 1.5 * anchors.strides[fg][:, None])


def test_single_gt_hand_worked():
    """One 4x4 GT centred on the stride-8 anchor (1, 1): candidates are the 3x3 stride-8 cells
    around it and one cell per coarser level; a perfect prediction at (1, 1) wins."""
    anchors = make_anchor_points([(4, 4), (2, 2), (1, 1)], (8, 16, 32))
    num_anchors = anchors.num_anchors
    pred = torch.tensor([[100.0, 100.0, 101.0, 101.0]]).repeat(num_anchors, 1)  # far away: IoU 0
    target_anchor = 1 * 4 + 1  # row 1, column 1 of the stride-8 level
    pred[target_anchor] = torch.tensor([10.0, 10.0, 14.0, 14.0])
    gt = torch.tensor([[10.0, 10.0, 14.0, 14.0]])
    cls = torch.zeros(num_anchors, 2)
    obj = torch.zeros(num_anchors)
    for assign in (simota_assign_dense, simota_assign_sparse):
        result = assign(anchors, pred, cls, obj, gt, torch.tensor([1]))
        # dynamic k = int(1.0 + zeros) = 1: exactly the perfect anchor, with IoU 1.
        assert result.fg_mask.nonzero().flatten().tolist() == [target_anchor]
        assert result.matched_iou[target_anchor].item() == pytest.approx(1.0)


def test_gt_outside_the_image_gets_no_anchor():
    anchors = make_anchor_points([(4, 4)], (8,))
    pred = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(16, 1)
    gt = torch.tensor([[100.0, 100.0, 110.0, 110.0]])
    for assign in (simota_assign_dense, simota_assign_sparse):
        result = assign(anchors, pred, torch.zeros(16, 3), torch.zeros(16), gt, torch.tensor([0]))
        assert result.num_fg == 0


def test_bad_inputs_name_the_argument():
    scene = list(random_scene(3, seed=0))
    with pytest.raises(ValueError, match="gt_classes"):
        simota_assign_sparse(*scene[:5], torch.tensor([0, 1, 99]))
    with pytest.raises(ValueError, match="pred_boxes"):
        simota_assign_sparse(scene[0], scene[1][:-1], *scene[2:])
    bad = scene[4].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="gt_boxes"):
        simota_assign_dense(*scene[:4], bad, scene[5])
    with pytest.raises(ValueError, match="ASSIGNER"):
        simota_assign("fast", *scene)
