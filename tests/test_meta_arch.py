"""YOLODetector end to end on CPU: training steps (SARL/SAL on and off), overfitting a tiny batch,
inference outputs, letterbox undo, 0/1/2000 objects, non-finite losses stopped with a clear message."""
from __future__ import annotations

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import sarl.modeling  # noqa: F401  (registers YOLODetector, heads, backbone)
from sarl.config import add_sarl_config
from sarl.modeling.meta_arch import YOLODetector, check_losses_finite

IMG = 64


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(config="configs/demo/sarl_yolox_synthetic.yaml", sarl=True, sal=True, img=IMG):
    """The demo config, shrunk: YOLOX-nano widths without depthwise convs, a tiny input."""
    cfg = get_cfg()
    add_sarl_config(cfg)
    cfg.merge_from_file(config)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.CSPDARKNET.DEPTHWISE = False
    cfg.MODEL.SARL.ENABLED = sarl
    cfg.MODEL.SAL.ENABLED = sal
    cfg.INPUT.YOLO.IMG_SIZE = img
    return cfg


def scene(num_objects, size=IMG, num_classes=4, min_side=10.0, side_span=8.0, **extra):
    """A dark image with one bright rectangle per object (so objects are learnable)."""
    centre = torch.rand(num_objects, 2) * (size - 24) + 12
    wh = torch.rand(num_objects, 2) * side_span + min_side
    boxes = torch.cat([centre - wh / 2, centre + wh / 2], dim=1).clamp(0, size)
    classes = torch.randint(0, num_classes, (num_objects,))
    image = torch.full((3, size, size), 40, dtype=torch.uint8)
    for (x0, y0, x1, y1), k in zip(boxes.round().long().tolist(), classes.tolist()):
        image[k % 3, y0:y1, x0:x1] = 220
    inst = Instances((size, size))
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = classes
    return {"image": image, "instances": inst, **extra}


def train_step(model, batch, optimizer=None):
    model.train()
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    if optimizer is not None:
        optimizer.zero_grad()
    total.backward()
    if optimizer is not None:
        optimizer.step()
    return losses


@pytest.mark.parametrize("sarl,sal", [(True, True), (False, False), (True, False), (False, True)])
def test_training_step_with_sarl_and_sal_on_and_off(sarl, sal):
    model = build_model(tiny_cfg(sarl=sarl, sal=sal))
    assert isinstance(model, YOLODetector)
    losses = train_step(model, [scene(3), scene(1)])
    assert set(losses) == {"loss_box", "loss_obj", "loss_cls"}
    assert all(torch.isfinite(v) for v in losses.values())
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    relays = [m for m in model.modules() if type(m).__name__ == "SARLRelay"]
    assert len(relays) == 1 and relays[0].enabled == sarl


def test_sal_changes_the_box_loss():
    torch.manual_seed(0)
    batch = [scene(4), scene(2)]
    values = {}
    for sal in (True, False):
        torch.manual_seed(1)
        model = build_model(tiny_cfg(sarl=False, sal=sal))
        values[sal] = train_step(model, batch)
    assert values[True]["loss_obj"].item() == pytest.approx(values[False]["loss_obj"].item(), rel=1e-5)
    assert values[True]["loss_box"].item() != pytest.approx(values[False]["loss_box"].item(), rel=1e-3)


def test_overfits_a_tiny_fixed_batch():
    # 60 steps: after 30 the loss is still on its noisy plateau at 0.50-0.60 of the start, and where in that band
    # it lands depends on the CPU's SIMD kernels and the memory format (float rounding); by 60 it is 0.23-0.34.
    model = build_model(tiny_cfg(sarl=False))
    batch = [scene(3), scene(3)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = [sum(train_step(model, batch, optimizer).values()).item() for _ in range(60)]
    final = sum(history[-3:]) / 3
    assert final < 0.5 * history[0], f"loss went {history[0]:.3f} -> {final:.3f}: {history}"


@pytest.mark.parametrize("num_objects", [0, 1, 2000])
def test_training_with_0_1_2000_objects(num_objects):
    size = 128
    model = build_model(tiny_cfg(img=size))
    if num_objects == 2000:
        centre = torch.rand(2000, 2) * (size - 4) + 2
        item = scene(0, size=size)
        crowd = Instances((size, size))
        crowd.gt_boxes = Boxes(torch.cat([centre - 1.5, centre + 1.5], dim=1))
        crowd.gt_classes = torch.randint(0, 4, (2000,))
        item["instances"] = crowd
    else:
        item = scene(num_objects, size=size)
    losses = train_step(model, [item])
    assert all(torch.isfinite(v) for v in losses.values())
    if num_objects == 0:
        assert losses["loss_box"].item() == 0.0 and losses["loss_cls"].item() == 0.0


def test_inference_outputs_types_sizes_and_letterbox():
    cfg = tiny_cfg()
    cfg.TEST.DETECTIONS_PER_IMAGE = 50
    cfg.MODEL.YOLO.SCORE_THRESH_TEST = 0.0  # keep everything: exercises top-k and the cap
    model = build_model(cfg).eval()
    # Original 200x100 letterboxed into 64x64: scale 0.32, pad_y = (64 - 32) / 2 = 16.
    letterboxed = scene(2, letterbox=(0.32, 0.0, 16.0), height=100, width=200)
    plain = scene(1, height=128, width=96)  # no letterbox: plain rescale to height/width
    empty = scene(0)
    with torch.no_grad():
        outputs = model([letterboxed, plain, empty])
    assert len(outputs) == 3
    expected_sizes = [(100, 200), (128, 96), (IMG, IMG)]
    for out, (h, w) in zip(outputs, expected_sizes):
        inst = out["instances"]
        assert isinstance(inst, Instances) and inst.image_size == (h, w)
        assert isinstance(inst.pred_boxes, Boxes)
        assert 0 < len(inst) <= 50
        assert inst.scores.dtype == torch.float32 and inst.pred_classes.dtype == torch.int64
        boxes = inst.pred_boxes.tensor
        assert torch.isfinite(boxes).all() and torch.isfinite(inst.scores).all()
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= w).all()
        assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= h).all()
        assert inst.pred_classes.min() >= 0 and inst.pred_classes.max() < 4
        assert torch.all(inst.scores[:-1] >= inst.scores[1:])  # NMS keeps score order


def test_letterbox_undo_is_exact():
    """select_detections -> postprocess maps a letterboxed box back to the original pixels."""
    result = Instances((64, 64))
    result.pred_boxes = Boxes(torch.tensor([[16.0, 24.0, 32.0, 40.0]]))
    result.scores = torch.tensor([0.9])
    result.pred_classes = torch.tensor([1])
    out = YOLODetector.postprocess([result], [{"letterbox": (0.32, 0.0, 16.0), "height": 100, "width": 200}],
                                   [(64, 64)])[0]["instances"]
    torch.testing.assert_close(out.pred_boxes.tensor, torch.tensor([[50.0, 25.0, 100.0, 75.0]]))


def test_detections_capped_and_nms_classwise():
    model = build_model(tiny_cfg()).eval()
    model.max_detections_per_image = 3
    model.score_thresh = 0.1
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [30, 30, 40, 40], [50, 50, 60, 60]],
                         dtype=torch.float32)
    scores = torch.zeros(5, 4)
    scores[0, 0], scores[1, 0], scores[2, 1], scores[3, 2], scores[4, 3] = 0.9, 0.8, 0.7, 0.6, 0.5
    inst = model.select_detections(boxes, scores, (64, 64))
    # box 1 is suppressed by box 0 (same class, IoU 0.68 > 0.65); box 2 survives (other class).
    assert inst.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert inst.pred_classes.tolist() == [0, 1, 2]


def test_non_finite_loss_raises_naming_the_term_and_iteration():
    with pytest.raises(FloatingPointError, match=r"loss_cls .*iteration 7"):
        with EventStorage(7):
            check_losses_finite({"loss_box": torch.tensor(1.0), "loss_cls": torch.tensor(float("nan"))})
    # A diverged weight: stopped with the prediction named, even where the loss stays finite
    # (NaN boxes never win SimOTA, so they would never reach the loss).
    model = build_model(tiny_cfg(sarl=False))
    with torch.no_grad():
        model.head.reg_preds[0].bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"reg_deltas predictions at iteration 0"):
        train_step(model, [scene(2)])
    # A loss term that turns NaN inside the head is named by the detector, with the iteration.
    model = build_model(tiny_cfg(sarl=False))
    head_losses = model.head.losses

    def losses_with_nan_cls(outputs, gt_instances):
        losses = head_losses(outputs, gt_instances)
        losses["loss_cls"] = losses["loss_cls"] * float("nan")
        return losses

    model.head.losses = losses_with_nan_cls
    with pytest.raises(FloatingPointError, match=r"Loss term loss_cls is not finite at iteration 0"):
        train_step(model, [scene(1)])


def test_bad_image_shape_is_reported():
    model = build_model(tiny_cfg())
    with pytest.raises(ValueError, match=r"batched_inputs\[0\]\['image'\]"):
        model.train()
        model([{"image": torch.zeros(1, IMG, IMG, dtype=torch.uint8), "instances": scene(0)["instances"]}])


def test_every_config_builds_its_declared_model():
    """Each shipped config merges and names registered components (built at a tiny size)."""
    import glob

    from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY

    from sarl.modeling.heads import YOLO_HEAD_REGISTRY

    files = sorted(glob.glob("configs/**/*.yaml", recursive=True))
    assert len(files) >= 19
    for path in files:
        cfg = get_cfg()
        add_sarl_config(cfg)
        cfg.merge_from_file(path)
        assert META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE) is YOLODetector
        BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)
        YOLO_HEAD_REGISTRY.get(cfg.MODEL.YOLO.HEAD_NAME)
        is_sarl = "sarl_" in path
        assert cfg.MODEL.SARL.ENABLED == is_sarl and cfg.MODEL.SAL.ENABLED == is_sarl, path
        if "aitod" in path and "v2" not in path:
            assert cfg.INPUT.YOLO.IMG_SIZE == 800 and cfg.MODEL.YOLO.NUM_CLASSES == 8
            assert cfg.TEST.DETECTIONS_PER_IMAGE == 3000
    yolox = tiny_cfg("configs/aitod/sarl_yolox_aitod.yaml", img=64)
    yolox.MODEL.CSPDARKNET.DEPTH_MULTIPLIER, yolox.MODEL.CSPDARKNET.WIDTH_MULTIPLIER = 0.33, 0.125
    model = build_model(yolox)
    assert model.head.num_classes == 8 and model.max_detections_per_image == 3000
