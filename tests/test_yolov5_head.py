"""YOLOv5Head: decode, bias priors, gains, SAL composition, training steps, overfit, dense scenes,
checkpointed anchors (tiny CSPDarknet-v5 + SARL + PAFPN on CPU)."""
from __future__ import annotations

import io
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone
from detectron2.structures import Boxes, Instances

from sarl.config import add_sarl_config
from sarl.modeling import build_yolo_head
from sarl.modeling.heads.yolov5_head import YOLOv5Head
from sarl.modeling.losses import SALParams
from sarl.ops.box_iou import paired_box_iou

IMG = 64  # tiny inputs: P3 8x8, P4 4x4, P5 2x2


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(*, sal: bool = True, sarl: bool = True, num_classes: int = 3, p2: bool = False):
    cfg = add_sarl_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_sarl_cspdarknet_pafpn_backbone"
    cfg.MODEL.CSPDARKNET.FLAVOR = "yolov5"
    cfg.MODEL.CSPDARKNET.DEPTH_MULTIPLIER = 0.33
    cfg.MODEL.CSPDARKNET.WIDTH_MULTIPLIER = 0.125
    cfg.MODEL.SARL.ENABLED = sarl
    cfg.MODEL.SAL.ENABLED = sal
    cfg.MODEL.YOLO.HEAD_NAME = "YOLOv5Head"
    cfg.MODEL.YOLO.NUM_CLASSES = num_classes
    cfg.INPUT.YOLO.IMG_SIZE = IMG
    if p2:
        cfg.MODEL.CSPDARKNET.OUT_FEATURES = ["dark2", "dark3", "dark4", "dark5"]
        cfg.MODEL.SARL.IN_FEATURES = ["dark2", "dark3", "dark4", "dark5"]
        cfg.MODEL.YOLOPAFPN.IN_FEATURES = ["dark2", "dark3", "dark4", "dark5"]
        cfg.MODEL.YOLOPAFPN.USE_P2 = True
        cfg.MODEL.YOLO.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    return cfg


class TinyDetector(torch.nn.Module):
    """Backbone chain + YOLOv5Head, enough for training steps (the meta-architecture is elsewhere)."""

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.in_features = list(cfg.MODEL.YOLO.IN_FEATURES)
        self.head = build_yolo_head(cfg, self.backbone.output_shape())

    def forward(self, images):
        features = self.backbone(images)
        return self.head([features[f] for f in self.in_features])


def _instances(boxes, classes, size=(IMG, IMG)) -> Instances:
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
    return inst


def _fixed_batch():
    gts = [_instances([[8, 10, 20, 22], [30, 28, 36, 40], [44, 6, 60, 18]], [0, 1, 2]),
           _instances([[20, 20, 26, 25], [4, 40, 30, 60]], [2, 0])]
    return torch.randn(2, 3, IMG, IMG), gts


def _random_gts(num, rng, size=IMG, num_classes=3):
    xy = torch.rand(num, 2, generator=rng) * (size - 8)
    wh = 2 + torch.rand(num, 2, generator=rng) * 14
    return _instances(torch.cat([xy, (xy + wh).clamp(max=size)], 1),
                      torch.randint(0, num_classes, (num,), generator=rng))


def paired_iou(pred_cxcywh: torch.Tensor, target_cxcywh: torch.Tensor) -> torch.Tensor:
    return paired_box_iou(pred_cxcywh, target_cxcywh, box_format="cxcywh")


def _head_only(num_classes=3, **kwargs) -> YOLOv5Head:
    defaults = dict(in_channels=[8, 16, 32], strides=[8, 16, 32], num_classes=num_classes,
                    anchors=[[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]],
                             [[116, 90], [156, 198], [373, 326]]], img_size=IMG)
    defaults.update(kwargs)
    return YOLOv5Head(**defaults)


# ---------------------------------------------------------------- structure and priors
def test_built_from_config_with_official_priors_and_gains():
    cfg = _cfg(num_classes=3)
    model = TinyDetector(cfg)
    head = model.head
    assert isinstance(head, YOLOv5Head)
    assert head.strides == [8, 16, 32] and head.num_anchors == 3
    torch.testing.assert_close(head.anchors, torch.tensor(cfg.MODEL.YOLOV5.ANCHORS, dtype=torch.float32))
    # Bias priors on top of the default conv init (|init| <= 1/sqrt(fan_in)).
    for conv, stride, channels in zip(head.predictors, head.strides, [32, 64, 128]):
        bias = conv.bias.view(3, 8)
        bound = 1 / math.sqrt(channels)
        obj_prior = math.log(8 / (640 / stride) ** 2)
        cls_prior = math.log(0.6 / (3 - 0.99999))
        assert ((bias[:, 4] - obj_prior).abs() <= bound + 1e-6).all()
        assert ((bias[:, 5:] - cls_prior).abs() <= bound + 1e-6).all()
    # Gains: 3/nl, nc/80, (img/640)^2.
    assert head.box_gain == pytest.approx(0.05)
    assert head.cls_gain == pytest.approx(0.5 * 3 / 80)
    assert head.obj_gain == pytest.approx((IMG / 640) ** 2)
    assert head.sal.enabled and head.sal.loss_type == "iou2"  # SAL on: the paper's base loss
    plain = TinyDetector(_cfg(sal=False)).head
    assert not plain.sal.enabled and plain.sal.loss_type == "ciou"  # SAL off: official YOLOv5
    assert plain.obj_target_complete_iou and not head.obj_target_complete_iou  # CIoU obj targets with CIoU
    # The box loss is an explicit argument too (the config builds it with SALParams.from_config).
    assert _head_only(sal=SALParams(enabled=False, loss_type="ciou")).obj_target_complete_iou
    with pytest.raises(ValueError, match="box loss type"):
        _head_only(sal=SALParams(loss_type="l1"))


def test_p2_level_gets_its_anchors_balance_and_gain_scaling():
    cfg = _cfg(p2=True)
    model = TinyDetector(cfg)
    head = model.head
    assert head.strides == [4, 8, 16, 32]
    assert head.anchors.shape == (4, 3, 2)
    torch.testing.assert_close(head.anchors[0], torch.tensor(cfg.MODEL.YOLOV5.ANCHORS_P2, dtype=torch.float32))
    assert head.balance == [4.0, 4.0, 1.0, 0.4]
    assert head.box_gain == pytest.approx(0.05 * 3 / 4)
    outputs = model(torch.randn(1, 3, IMG, IMG))
    assert [o.shape[2] for o in outputs] == [16, 8, 4, 2]
    losses = head.losses(outputs, [_instances([[10, 10, 14, 13]], [1])])
    assert all(torch.isfinite(v) for v in losses.values())

    bad = _cfg(p2=True)
    bad.MODEL.YOLOV5.BALANCE = [1.0, 1.0]
    with pytest.raises(ValueError, match="BALANCE"):
        TinyDetector(bad)


def _logits_for(boxes_cxcywh_px, cell_xy, anchor_wh, stride):
    """Inverse of the decode: logits giving the boxes (cx, cy, w, h) from a cell and an anchor."""
    s_xy = ((boxes_cxcywh_px[:, :2] / stride - cell_xy) + 0.5) / 2
    s_wh = torch.sqrt(boxes_cxcywh_px[:, 2:] / anchor_wh) / 2
    return torch.logit(torch.cat([s_xy, s_wh], 1))


def test_decode_inverts_the_encoding_and_orders_levels_anchors_cells():
    head = _head_only().double()
    outputs = [torch.zeros(1, 3, 8 // (2 ** i), 8 // (2 ** i), 8, dtype=torch.float64) for i in range(3)]
    # A box per (level, anchor) at a chosen cell, each within the decode's reach.
    wanted = {}
    for level, stride in enumerate(head.strides):
        for a in range(3):
            y, x = (1 + a) % outputs[level].shape[2], a % outputs[level].shape[3]
            anchor = head.anchors[level, a].double()
            box = torch.tensor([[(x + 0.2 + 0.3 * a) * stride, (y + 1.1 - 0.4 * a) * stride,
                                 anchor[0] * (0.5 + a), anchor[1] * (2.5 - 0.6 * a)]], dtype=torch.float64)
            outputs[level][0, a, y, x, :4] = _logits_for(box, torch.tensor([x, y]), anchor, stride)[0]
            outputs[level][0, a, y, x, 4] = 10.0
            wanted[(level, a, y, x)] = box[0]
    for (level, a, y, x), box in wanted.items():
        torch.testing.assert_close(head.decode_level(outputs[level], level)[0, a, y, x], box)

    boxes, scores = head.decode(outputs)
    assert boxes.shape == (1, 3 * (64 + 16 + 4), 4) and scores.shape == (1, 3 * (64 + 16 + 4), 3)
    for (level, a, y, x), box in wanted.items():
        sizes = [3 * o.shape[2] * o.shape[3] for o in outputs]
        flat = sum(sizes[:level]) + (a * outputs[level].shape[2] + y) * outputs[level].shape[3] + x
        xyxy = torch.cat([box[:2] - box[2:] / 2, box[:2] + box[2:] / 2])
        torch.testing.assert_close(boxes[0, flat], xyxy)
        # obj logit 10, class logits 0: score = sigmoid(10) * 0.5.
        torch.testing.assert_close(scores[0, flat], torch.full((3,), torch.sigmoid(torch.tensor(10.0)).item() * 0.5,
                                                               dtype=torch.float64))


def test_single_class_scores_are_objectness():
    head = _head_only(num_classes=1)
    outputs = head([torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4), torch.randn(2, 32, 2, 2)])
    _, scores = head.decode(outputs)
    torch.testing.assert_close(scores[..., 0], torch.cat([o[..., 4].sigmoid().reshape(2, -1) for o in outputs], 1))
    losses = head.losses(outputs, [_instances([[8, 8, 20, 20]], [0]), _instances([], [])])
    assert losses["loss_cls"].item() == 0.0  # YOLOv5 trains no class for nc = 1


# ---------------------------------------------------------------- losses
def test_sal_box_loss_composition_matches_a_hand_computation():
    """loss_box = batch * gain * sum over levels of mean over matches of w_i * (1 - IoU_i^2), with
    w_i = beta ln(2 - s_i), s_i the target areas min-max normalised over all matches of all levels,
    in input pixels."""
    head = _head_only()
    outputs = head([torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4), torch.randn(2, 32, 2, 2)])
    gts = [_instances([[4, 4, 10, 12], [20, 20, 60, 50]], [0, 1]), _instances([[30, 8, 38, 30]], [2])]
    matches, _ = head.match(outputs, gts)
    preds, targets, level_sizes = [], [], []
    for level, m in enumerate(matches):
        p = outputs[level][m.batch_index, m.anchor_index, m.grid_y, m.grid_x]
        stride = head.strides[level]
        preds.append(torch.cat([p[:, :2].sigmoid() * 2 - 0.5, (p[:, 2:4].sigmoid() * 2) ** 2 * m.anchors], 1) * stride)
        targets.append(m.target_boxes * stride)
        level_sizes.append(len(m))
    assert sum(1 for n in level_sizes if n) >= 2, "the case should spread over several levels"
    pred, target = torch.cat(preds), torch.cat(targets)
    area = target[:, 2] * target[:, 3]
    s = (area - area.min()) / (area.max() - area.min())
    per_match = head.sal.beta * torch.log(2 - s) * (1 - paired_iou(pred, target) ** 2)
    expected = sum(chunk.mean() for chunk in per_match.split(level_sizes) if len(chunk))
    losses = head.losses(outputs, gts)
    torch.testing.assert_close(losses["loss_box"], expected * head.box_gain * 2, rtol=1e-5, atol=1e-6)
    # Same gradients w.r.t. the raw outputs (the SAL weights are constants).
    got = torch.autograd.grad(losses["loss_box"], outputs, retain_graph=True)
    want = torch.autograd.grad(expected * head.box_gain * 2, outputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)


def test_objectness_target_is_the_detached_iou_and_balanced():
    head = _head_only()
    outputs = head([torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4), torch.randn(1, 32, 2, 2)])
    gts = [_instances([[12, 12, 24, 28]], [1])]
    matches, _ = head.match(outputs, gts)
    expected = 0.0
    for level, (o, m) in enumerate(zip(outputs, matches)):
        target = torch.zeros(o.shape[:4])
        if len(m):
            p = o[m.batch_index, m.anchor_index, m.grid_y, m.grid_x]
            pred = torch.cat([p[:, :2].sigmoid() * 2 - 0.5, (p[:, 2:4].sigmoid() * 2) ** 2 * m.anchors], 1)
            iou = paired_iou(pred, m.target_boxes).clamp(min=0)
            for k in range(len(m)):
                cell = (m.batch_index[k], m.anchor_index[k], m.grid_y[k], m.grid_x[k])
                target[cell] = torch.maximum(target[cell], iou[k].detach())
        bce = torch.nn.functional.binary_cross_entropy_with_logits(o[..., 4], target)
        expected = expected + head.balance[level] * bce
    torch.testing.assert_close(head.losses(outputs, gts)["loss_obj"], expected * head.obj_gain)


@pytest.mark.parametrize("sal, sarl", [(True, True), (False, False), (True, False)])
def test_training_step_with_sal_and_sarl_switches(sal, sarl):
    model = TinyDetector(_cfg(sal=sal, sarl=sarl))
    images, gts = _fixed_batch()
    losses = model.head.losses(model(images), gts)
    assert set(losses) == {"loss_box", "loss_obj", "loss_cls"}
    assert all(v.dim() == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in model.head.predictors[0].parameters() for g in [g.grad])


def test_sal_changes_the_box_loss_only():
    """Same weights, SAL on vs off with the same base loss (iou2): only the box weights differ."""
    images, gts = _fixed_batch()
    with_sal = TinyDetector(_cfg(sal=True))
    plain_cfg = _cfg(sal=False)
    plain_cfg.MODEL.YOLOV5.BOX_LOSS_TYPE = "iou2"
    without = TinyDetector(plain_cfg)
    without.load_state_dict(with_sal.state_dict())
    with_sal.eval(), without.eval()
    a, b = with_sal.head.losses(with_sal(images), gts), without.head.losses(without(images), gts)
    assert not torch.allclose(a["loss_box"], b["loss_box"])
    torch.testing.assert_close(a["loss_cls"], b["loss_cls"])
    torch.testing.assert_close(a["loss_obj"], b["loss_obj"])


def _matched_mean_iou(model, images, gts) -> float:
    outputs = model(images)
    matches, _ = model.head.match(outputs, gts)
    ious = []
    for output, m in zip(outputs, matches):
        p = output[m.batch_index, m.anchor_index, m.grid_y, m.grid_x]
        pred = torch.cat([p[:, :2].sigmoid() * 2 - 0.5, (p[:, 2:4].sigmoid() * 2) ** 2 * m.anchors], 1)
        ious.append(paired_iou(pred, m.target_boxes))
    return torch.cat(ious).mean().item()


def test_loss_decreases_when_overfitting_a_fixed_batch():
    """30 Adam steps with SARL and SAL on a fixed batch of 2 images: every term goes down clearly
    and the matched boxes fit their GTs better. (1 - IoU^2 moves slower than CIoU at low IoU: its
    gradient scales with IoU; here about 0.26 -> 0.37 mean IoU, CIoU reaches about 0.6.)"""
    model = TinyDetector(_cfg(sal=True, sarl=True))
    images, gts = _fixed_batch()
    iou_before = _matched_mean_iou(model, images, gts)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(30):
        losses = model.head.losses(model(images), gts)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()} | {"total": total.item()})
    first, last = history[0], history[-1]
    assert all(math.isfinite(h["total"]) for h in history)
    assert last["total"] < 0.7 * first["total"], history
    assert last["loss_box"] < 0.85 * first["loss_box"], history
    assert last["loss_cls"] < 0.25 * first["loss_cls"], history
    assert _matched_mean_iou(model, images, gts) > iou_before + 0.05


# ---------------------------------------------------------------- dense scenes, empties, finiteness
@pytest.mark.parametrize("num_objects", [0, 1, 2000])
def test_zero_one_and_2000_objects_per_image(num_objects):
    rng = torch.Generator().manual_seed(1)
    head = _head_only()
    features = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4), torch.randn(2, 32, 2, 2)]
    outputs = head(features)
    gts = [_random_gts(num_objects, rng), _random_gts(num_objects // 2, rng)]
    losses = head.losses(outputs, gts)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    if num_objects == 0:
        assert losses["loss_box"].item() == 0.0 and losses["loss_cls"].item() == 0.0
        assert losses["loss_obj"].item() > 0
    else:
        assert losses["loss_box"].item() > 0


def test_predictions_are_finite_and_sized():
    model = TinyDetector(_cfg()).eval()
    with torch.no_grad():
        boxes, scores = model.head.decode(model(torch.randn(2, 3, IMG, IMG) * 50))
    anchors_total = 3 * (8 * 8 + 4 * 4 + 2 * 2)
    assert boxes.shape == (2, anchors_total, 4) and scores.shape == (2, anchors_total, 3)
    assert torch.isfinite(boxes).all() and torch.isfinite(scores).all()
    assert (boxes[..., 2:] >= boxes[..., :2]).all() and ((scores >= 0) & (scores <= 1)).all()


def test_bad_ground_truth_is_reported():
    head = _head_only()
    outputs = head([torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4), torch.randn(1, 32, 2, 2)])
    with pytest.raises(ValueError, match="gt_classes"):
        head.losses(outputs, [_instances([[1, 1, 9, 9]], [3])])
    with pytest.raises(ValueError, match="non-finite"):
        head.losses(outputs, [_instances([[1, 1, float("inf"), 9]], [0])])
    with pytest.raises(ValueError, match="gt_instances has 2 images"):
        head.losses(outputs, [_instances([], []), _instances([], [])])
    with pytest.raises(ValueError, match="anchors"):
        _head_only(anchors=[[[10, 13]], [[30, 61]]])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_losses_and_decode_on_cuda_match_the_cpu():
    rng = torch.Generator().manual_seed(2)
    head = _head_only()
    features = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4), torch.randn(2, 32, 2, 2)]
    gts = [_random_gts(300, rng), _random_gts(0, rng)]
    cpu_losses = head.losses(head(features), gts)
    cpu_boxes, cpu_scores = head.decode(head(features))
    head_cuda = head.cuda()
    outputs = head_cuda([f.cuda() for f in features])
    cuda_losses = head_cuda.losses(outputs, [g.to("cuda") for g in gts])
    for name, value in cpu_losses.items():
        torch.testing.assert_close(cuda_losses[name].cpu(), value, rtol=1e-4, atol=1e-6)
    boxes, scores = head_cuda.decode(outputs)
    torch.testing.assert_close(boxes.cpu(), cpu_boxes, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(scores.cpu(), cpu_scores, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- checkpoints
def test_fitted_anchors_survive_a_state_dict_round_trip():
    cfg = _cfg()
    model = TinyDetector(cfg)
    fitted = torch.tensor([[[3, 4], [5, 6], [7, 9]], [[10, 8], [14, 18], [20, 15]], [[30, 28], [40, 52], [90, 70]]],
                          dtype=torch.float32)
    model.head.anchors.copy_(fitted)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = TinyDetector(cfg)
    assert not torch.equal(restored.head.anchors, fitted)
    restored.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(restored.head.anchors, fitted)
    assert "head.anchors" in model.state_dict()


# ---------------------------------------------------------------- inside the detector
def test_yolo_detector_with_the_sarl_yolov5_config_trains_and_predicts():
    """The shipped config (SARL + SAL, 8 classes) at a tiny width: a training step through
    YOLODetector, then inference sized to the requested output resolution."""
    from pathlib import Path

    from detectron2.modeling import build_model

    cfg = add_sarl_config(get_cfg())
    cfg.merge_from_file(str(Path(__file__).resolve().parents[1] / "configs" / "aitod" / "sarl_yolov5_aitod.yaml"))
    cfg.MODEL.CSPDARKNET.WIDTH_MULTIPLIER = 0.125
    cfg.MODEL.CSPDARKNET.DEPTH_MULTIPLIER = 0.33
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert isinstance(model.head, YOLOv5Head) and model.head.sal.enabled and model.head.sal.loss_type == "iou2"
    gts = _instances([[10, 10, 20, 18], [50, 40, 58, 47]], [1, 7], size=(96, 128))
    batch = [{"image": torch.randint(0, 255, (3, 96, 128)).float(), "instances": gts},
             {"image": torch.randint(0, 255, (3, 90, 100)).float(), "instances": gts[:0]}]
    model.train()
    losses = model(batch)
    assert set(losses) == {"loss_box", "loss_obj", "loss_cls"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        results = model([{"image": b["image"], "height": 192, "width": 256} for b in batch])
    for result in results:
        inst = result["instances"]
        assert inst.image_size == (192, 256) and 0 < len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE
        assert torch.isfinite(inst.pred_boxes.tensor).all() and inst.pred_classes.max() < 8
