"""YOLOXHead: layout, decode, loss terms as REFERENCE.md section 2, SAL vs plain IoU, L1 switch."""
from __future__ import annotations

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances

from sarl.config import add_sarl_config
from sarl.modeling.assigners.simota import make_anchor_points, pairwise_box_iou, simota_assign_dense
from sarl.modeling.heads import build_yolo_head
from sarl.modeling.heads.yolox_head import YOLOXHead, YOLOXOutputs
from sarl.modeling.losses import SALParams, sal_box_loss

IMG = 64
STRIDES = (8, 16, 32)
CHANNELS = (16, 32, 64)


pytestmark = pytest.mark.usefixtures("one_thread")


def head_cfg(**overrides):
    cfg = get_cfg()
    add_sarl_config(cfg)
    cfg.merge_from_file("configs/Base-YOLOX.yaml")
    cfg.MODEL.YOLO.NUM_CLASSES = 3
    cfg.MODEL.CSPDARKNET.WIDTH_MULTIPLIER = 0.125  # hidden = 256 * 0.125 = 32
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return cfg


def build_head(**overrides) -> YOLOXHead:
    shapes = {f"p{i + 3}": ShapeSpec(channels=c, stride=s) for i, (c, s) in enumerate(zip(CHANNELS, STRIDES))}
    return build_yolo_head(head_cfg(**overrides), shapes)


def features(batch=2):
    return [torch.randn(batch, c, IMG // s, IMG // s) for c, s in zip(CHANNELS, STRIDES)]


def instances(boxes, classes):
    inst = Instances((IMG, IMG))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.long)
    return inst


def test_layout_shapes_and_prior_bias():
    head = build_head()
    out = head(features())
    num_anchors = sum((IMG // s) ** 2 for s in STRIDES)
    assert out.cls_logits.shape == (2, num_anchors, 3)
    assert out.reg_deltas.shape == (2, num_anchors, 4)
    assert out.obj_logits.shape == (2, num_anchors)
    assert out.anchors.num_anchors == num_anchors
    assert head.stems[0].conv.out_channels == 32
    prior = -math.log((1 - 0.01) / 0.01)
    assert torch.allclose(head.cls_preds[0].bias, torch.full((3,), prior))
    assert torch.allclose(head.obj_preds[2].bias, torch.full((1,), prior))


def test_decode_matches_the_yolox_formula():
    anchors = make_anchor_points([(2, 3)], (16,))
    deltas = torch.zeros(1, 6, 4)
    deltas[0, 4] = torch.tensor([0.25, -0.5, math.log(2.0), 0.0])  # grid (x=1, y=1)
    boxes = YOLOXHead.decode_boxes(deltas, anchors)
    cx, cy, w, h = (1 + 0.25) * 16, (1 - 0.5) * 16, 2.0 * 16, 16.0
    assert torch.allclose(boxes[0, 4], torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
    assert torch.allclose(boxes[0, 0], torch.tensor([-8.0, -8.0, 8.0, 8.0]))
    huge = YOLOXHead.decode_boxes(torch.full((1, 6, 4), 1e4), anchors)
    assert torch.isfinite(huge).all()


def test_losses_follow_reference_formulas():
    """Recompute every term by hand from a dense assignment of the same predictions."""
    head = build_head(**{"MODEL.SAL.ENABLED": False, "MODEL.YOLOX.ASSIGNER": "dense"})
    out = head(features())
    gts = [instances([[10, 12, 22, 20], [40, 40, 48, 52]], [0, 2]), instances([[30, 5, 36, 11]], [1])]
    losses = head.losses(out, gts)
    assert set(losses) == {"loss_box", "loss_obj", "loss_cls"}

    boxes = YOLOXHead.decode_boxes(out.reg_deltas, out.anchors)
    obj_target, box_terms, cls_terms = torch.zeros_like(out.obj_logits), [], []
    for i, inst in enumerate(gts):
        a = simota_assign_dense(out.anchors, boxes[i].detach(), out.cls_logits[i].detach(),
                                out.obj_logits[i].detach(), inst.gt_boxes.tensor, inst.gt_classes)
        fg = a.fg_mask
        obj_target[i] = fg.float()
        gt = inst.gt_boxes.tensor[a.matched_gt[fg]]
        iou = pairwise_box_iou(boxes[i][fg], gt)
        box_terms.append(1 - iou ** 2)
        onehot = torch.nn.functional.one_hot(inst.gt_classes[a.matched_gt[fg]], 3).float()
        cls_terms.append(torch.nn.functional.binary_cross_entropy_with_logits(
            out.cls_logits[i][fg], onehot * a.matched_iou[fg][:, None], reduction="none").sum(1))
    num_fg = int(obj_target.sum())
    assert num_fg >= 3  # every GT got at least one anchor in this scene
    expected_obj = torch.nn.functional.binary_cross_entropy_with_logits(
        out.obj_logits, obj_target, reduction="sum") / num_fg
    torch.testing.assert_close(losses["loss_obj"], expected_obj)
    torch.testing.assert_close(losses["loss_box"], 5.0 * torch.cat(box_terms).sum() / num_fg, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses["loss_cls"], torch.cat(cls_terms).sum() / num_fg)


def test_sal_reweights_the_box_term_by_gt_size():
    """With SAL the smallest GT weighs beta*ln2 = 2, the largest 0 (batch min-max)."""
    pred = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 10.0, 10.0]])
    target = torch.tensor([[1.0, 1.0, 5.0, 5.0], [2.0, 2.0, 42.0, 42.0], [0.0, 0.0, 8.0, 8.0]])
    plain = sal_box_loss(SALParams(enabled=False), pred, target, reduction="none")
    weighted = sal_box_loss(SALParams(enabled=True), pred, target, reduction="none")
    iou = pairwise_box_iou(pred, target)
    torch.testing.assert_close(plain, 1 - iou ** 2)
    areas = torch.tensor([16.0, 1600.0, 64.0])
    s = (areas - areas.min()) / (areas.max() - areas.min())
    torch.testing.assert_close(weighted, (2 / math.log(2)) * torch.log(2 - s) * (1 - iou ** 2))
    assert weighted[1].item() == pytest.approx(0.0, abs=1e-6)
    # From a config: ENABLED False switches the weights off.
    cfg = head_cfg(**{"MODEL.SAL.ENABLED": False})
    torch.testing.assert_close(sal_box_loss(SALParams.from_config(cfg), pred, target), plain.sum())


def _hand_picked_scene():
    """Three GTs (two in image 0, one in image 1), each with one anchor whose predicted box overlaps
    it; every other anchor predicts a box of ~1e-7 px^2 (IoU ~ 0). SimOTA's dynamic k is then
    int(IoU) -> 1, and each GT takes its overlapping anchor (the IoU cost of the others is ~55).

    Returns (outputs, gts, {image: [anchor index]}, [(IoU, GT area)] in plain floats).
    Anchors: stride 8 (8x8 grid, indices 0..63), 16 (64..79), 32 (80..83); decode: centre =
    (delta + grid) * stride, size = exp(log-delta) * stride, so log-deltas of 0 give a stride-sized box.
    """
    anchors = make_anchor_points([(IMG // s, IMG // s) for s in STRIDES], STRIDES)
    num_anchors = anchors.num_anchors
    reg = torch.zeros(2, num_anchors, 4)
    reg[..., 2:] = -10.0  # exp(-10) * stride: a box of ~1e-7 px^2 everywhere ...
    # ... except the picked anchors: (image, anchor, dx, dy) with a stride x stride box.
    # GT A [8, 9, 16, 15] (8 x 6): stride 8, grid (1, 1) -> anchor 9, box centre (13, 12) -> [9, 8, 17, 16].
    reg[0, 9] = torch.tensor([0.625, 0.5, 0.0, 0.0])
    # GT B [36, 36, 52, 48] (16 x 12): stride 16, grid (2, 2) -> anchor 74, centre (44, 44) -> [36, 36, 52, 52].
    reg[0, 74] = torch.tensor([0.75, 0.75, 0.0, 0.0])
    # GT C [10, 14, 34, 34] (24 x 20): stride 32, grid (0, 0) -> anchor 80, centre (24, 24) -> [8, 8, 40, 40].
    reg[1, 80] = torch.tensor([0.75, 0.75, 0.0, 0.0])
    outputs = YOLOXOutputs(torch.zeros(2, num_anchors, 3), reg, torch.zeros(2, num_anchors), anchors)
    gts = [instances([[8, 9, 16, 15], [36, 36, 52, 48]], [0, 1]), instances([[10, 14, 34, 34]], [2])]
    # IoU by hand: A: overlap 7 x 6 = 42, union 48 + 64 - 42 = 70; B: overlap 16 x 12 = 192 = B,
    # union 256; C: overlap 24 x 20 = 480 = C, union 1024.
    pairs = [(42 / 70, 48.0), (192 / 256, 192.0), (480 / 1024, 480.0)]
    return outputs, gts, {0: [9, 74], 1: [80]}, pairs


@pytest.mark.parametrize("assigner", ["sparse", "dense"])
def test_sal_box_term_of_the_head_matches_the_paper_formula_by_hand(assigner):
    """loss_box = alpha * sum_i w_i (1 - IoU_i^2) / num_fg with w_i = beta ln(2 - s_i) and s_i the GT
    areas min-max normalised over the whole batch (paper eq. 3-5), computed in plain floats."""
    head = build_head(**{"MODEL.SAL.ENABLED": True, "MODEL.SAL.NORMALIZE": "batch", "MODEL.SAL.LOSS_TYPE": "iou2",
                         "MODEL.SAL.ALPHA": 5.0, "MODEL.YOLOX.ASSIGNER": assigner})
    outputs, gts, picked, pairs = _hand_picked_scene()

    # The premise: SimOTA assigns exactly the picked anchors.
    boxes = YOLOXHead.decode_boxes(outputs.reg_deltas, outputs.anchors)
    for image, inst in enumerate(gts):
        a = simota_assign_dense(outputs.anchors, boxes[image], outputs.cls_logits[image],
                                outputs.obj_logits[image], inst.gt_boxes.tensor, inst.gt_classes)
        assert a.fg_mask.nonzero().flatten().tolist() == picked[image]

    beta, alpha = 2 / math.log(2), 5.0
    areas = [area for _, area in pairs]
    lo, hi = min(areas), max(areas)
    expected = alpha * sum(beta * math.log(2 - (area - lo) / (hi - lo)) * (1 - iou ** 2)
                           for iou, area in pairs) / len(pairs)
    # = 5 * (2 * 0.64 + beta ln(5/3) * 0.4375 + 0 * 0.78027) / 3
    assert expected == pytest.approx(5 * (1.28 + beta * math.log(5 / 3) * 0.4375) / 3)
    assert head.losses(outputs, gts)["loss_box"].item() == pytest.approx(expected, rel=1e-5)


def test_syncbn_norm_reaches_the_head():
    head = build_head(**{"MODEL.CSPDARKNET.NORM": "SyncBN"})
    norms = [m for m in head.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)


def test_no_gt_keeps_every_branch_in_the_graph():
    head = build_head()
    out = head(features())
    losses = head.losses(out, [instances([], []), instances([], [])])
    assert losses["loss_box"].item() == 0.0 and losses["loss_cls"].item() == 0.0
    assert losses["loss_obj"].item() > 0
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in head.parameters())


def test_l1_switch_adds_the_yolox_l1_term():
    head = build_head()
    out = head(features(batch=1))
    gts = [instances([[10, 12, 22, 20]], [1])]
    assert "loss_l1" not in head.losses(out, gts)
    head.use_l1 = True  # what the no-aug hook does
    losses = head.losses(out, gts)
    assert torch.isfinite(losses["loss_l1"]) and losses["loss_l1"].item() > 0
    # YOLOX's L1 target: (centre / stride - grid, log(size / stride)).
    anchors = out.anchors
    mask = torch.zeros(1, anchors.num_anchors, dtype=torch.bool)
    mask[0, 5] = True
    target = YOLOXHead._l1_targets(torch.tensor([[10.0, 12.0, 22.0, 20.0]]), anchors, mask)
    torch.testing.assert_close(target[0, :2], torch.tensor([16.0, 16.0]) / 8 - anchors.grids[5])
    torch.testing.assert_close(target[0, 2:], torch.log(torch.tensor([12.0, 8.0]) / 8 + 1e-8))
    # ... and the deltas equal to it decode back to the GT box.
    decoded = YOLOXHead.decode_boxes(target[None], _single_anchor(anchors, 5))
    torch.testing.assert_close(decoded[0, 0], torch.tensor([10.0, 12.0, 22.0, 20.0]))


def _single_anchor(anchors, index):
    from sarl.modeling.assigners.simota import AnchorPoints

    return AnchorPoints(anchors.grids[index:index + 1], anchors.strides[index:index + 1],
                        anchors.centers[index:index + 1], [(1, 1, float(anchors.strides[index]), 0)])


@pytest.mark.parametrize("assigner", ["sparse", "dense"])
def test_dense_scene_of_2000_objects(assigner):
    head = build_head(**{"MODEL.YOLOX.ASSIGNER": assigner})
    big = 256
    feats = [torch.randn(1, c, big // s, big // s) for c, s in zip(CHANNELS, STRIDES)]
    out = head(feats)
    centre = torch.rand(2000, 2) * (big - 4) + 2
    boxes = torch.cat([centre - 1.5, centre + 1.5], dim=1)
    inst = Instances((big, big))
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.randint(0, 3, (2000,))
    losses = head.losses(out, [inst])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_bad_assigner_name_is_reported():
    with pytest.raises(ValueError, match="MODEL.YOLOX.ASSIGNER"):
        build_head(**{"MODEL.YOLOX.ASSIGNER": "fast"})
    with pytest.raises(ValueError, match="IN_FEATURES"):
        YOLOXHead(head_cfg(**{"MODEL.YOLO.IN_FEATURES": ["p2", "p3"]}),
                  {"p3": ShapeSpec(channels=16, stride=8)})


def test_head_alone_learns_boxes_on_fixed_features():
    """Optimising the head on fixed features drives the box loss down (decode, SimOTA and SAL
    gradients agree in direction)."""
    head = build_head()
    feats = features(batch=1)
    gts = [instances([[10, 12, 26, 24], [36, 30, 50, 46]], [0, 1])]
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    history = []
    for _ in range(40):
        losses = head.losses(head(feats), gts)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    first, last = history[0], history[-1]
    assert sum(last.values()) < 0.5 * sum(first.values())
    assert isinstance(head(feats), YOLOXOutputs)


def test_per_object_sal_gets_object_ids_unique_over_the_batch(monkeypatch):
    """MODEL.SAL.PER_OBJECT (this project's option): the head hands the loss each foreground pair's GT as an id
    unique over the batch (image 0: 0, 1; image 1: 2) whose box is the pair's target; the big GT takes 2 anchors
    here, so counting objects instead of anchors changes the mean weight of WEIGHT_NORM "mean" and loss_box."""
    import sarl.modeling.heads.yolox_head as yolox_module

    seen = {}
    real_loss = yolox_module.sal_box_loss

    def spy(params, pred, target, batch_index=None, **kwargs):
        seen.update(target=target, batch_index=batch_index, gt_index=kwargs["gt_index"])
        return real_loss(params, pred, target, batch_index, **kwargs)

    monkeypatch.setattr(yolox_module, "sal_box_loss", spy)
    sal = {"MODEL.SAL.ENABLED": True, "MODEL.SAL.WEIGHT_NORM": "mean"}
    head = build_head(**sal, **{"MODEL.SAL.PER_OBJECT": True})
    out = head(features())
    boxes = [[4, 6, 40, 44], [44, 40, 52, 52], [30, 5, 36, 11]]
    gts = [instances(boxes[:2], [0, 2]), instances(boxes[2:], [1])]
    per_object = head.losses(out, gts)["loss_box"]
    gt_index = seen["gt_index"]
    assert sorted(set(gt_index.tolist())) == [0, 1, 2] and int(torch.bincount(gt_index).max()) >= 2
    torch.testing.assert_close(seen["target"], torch.tensor(boxes, dtype=torch.float32)[gt_index])
    assert torch.equal(seen["batch_index"], (gt_index == 2).long())
    per_anchor = build_head(**sal).losses(out, gts)["loss_box"]
    assert not torch.allclose(per_object, per_anchor)
