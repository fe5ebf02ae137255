"""Native-resolution crops of large frames (INPUT.YOLO.NATIVE_CROP): windows, boxes, the visibility rule,
determinism, and the mapper using them for the main image and mosaic partners."""
from __future__ import annotations

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.structures import BoxMode
from hypothesis import given, settings
from hypothesis import strategies as st

from sarl.config import add_sarl_config
from sarl.data import YOLOMapper
from sarl.data import transforms as T

pytestmark = pytest.mark.usefixtures("one_thread")


def _frame(width=1760, height=430, seed=0):
    """A textured frame whose pixel (x, y) encodes its position, with a few boxes."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = (np.arange(width)[None, :] % 251).astype(np.uint8)
    image[..., 1] = (np.arange(height)[:, None] % 241).astype(np.uint8)
    image[..., 2] = rng.integers(0, 255, (height, width), dtype=np.uint8)
    xy = rng.uniform([0, 0], [width - 40, height - 20], size=(12, 2))
    boxes = np.concatenate([xy, xy + [33, 18]], axis=1)
    classes = np.arange(12) % 3
    return image, boxes, classes


def test_crop_keeps_native_pixels_and_moves_boxes():
    image, boxes, classes = _frame()
    rng = np.random.default_rng(1)
    crop, cropped, kept = T.native_crop(image, boxes, classes, 640, rng, object_prob=1.0, min_visible=0.1)
    assert crop.shape == (430, 640, 3)  # 640 wide, the frame's full 430 high: no resize
    # Find the window from the encoded pixels, and check boxes moved with it (same size, shifted).
    x0 = int(np.flatnonzero(image[0, :, 0] == crop[0, 0, 0])[0])
    while not np.array_equal(image[:, x0:x0 + 640], crop):
        x0 = int(np.flatnonzero((image[0, :, 0] == crop[0, 0, 0]) & (np.arange(image.shape[1]) > x0))[0])
    assert len(cropped) >= 1  # object_prob=1: the window holds an object's centre
    inside = (boxes[:, 0] >= x0) & (boxes[:, 2] <= x0 + 640)
    expected = boxes[inside] - [x0, 0, x0, 0]
    for box in expected:  # every box wholly inside survives, unchanged in size
        assert np.isclose(cropped, box).all(axis=1).any()
    assert (cropped[:, [0, 2]] >= 0).all() and (cropped[:, [0, 2]] <= 640).all()


def test_visibility_rule_on_cut_boxes():
    image = np.zeros((300, 2000, 3), dtype=np.uint8)
    # Two boxes 100 px wide; the window [0, 640) cuts the first to 20 px (20%) and the second to 5 px (5%).
    boxes = np.array([[620.0, 10, 720, 40], [635.0, 100, 735, 130], [100.0, 100, 140, 120]])
    classes = np.array([0, 1, 2])

    class FixedRng:  # window at x0 = 0: no object bias, uniform draw returns 0
        def uniform(self, *a):
            return 1.0

        def integers(self, low, high=None):
            return 0

    _, kept_boxes, kept_classes = T.native_crop(image, boxes, classes, 640, FixedRng(), object_prob=0.0,
                                                min_visible=0.1)
    assert sorted(kept_classes.tolist()) == [0, 2]  # 20% visible kept, 5% dropped
    assert np.allclose(kept_boxes[kept_classes == 0], [[620, 10, 640, 40]])
    _, _, kept_classes = T.native_crop(image, boxes, classes, 640, FixedRng(), object_prob=0.0, min_visible=0.3)
    assert kept_classes.tolist() == [2]


def test_small_images_pass_unchanged():
    image = np.zeros((300, 500, 3), dtype=np.uint8)
    boxes = np.array([[10.0, 10, 20, 20]])
    out, out_boxes, _ = T.native_crop(image, boxes, np.array([0]), 640, np.random.default_rng(0))
    assert out is image and np.array_equal(out_boxes, boxes)


@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 3000), height=st.integers(1, 3000), size=st.integers(16, 1024),
       seed=st.integers(0, 2**31 - 1), object_prob=st.floats(0, 1))
def test_window_inside_the_image(width, height, size, seed, object_prob):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, [width, height], size=(5, 2))
    boxes = np.concatenate([xy, xy + 3], axis=1)
    x0, y0, x1, y1 = T.crop_window(width, height, size, boxes, rng, object_prob)
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert (x1 - x0, y1 - y0) == (min(size, width), min(size, height))


def test_object_bias_puts_objects_in_windows():
    """A sparse frame: one object in a 5000 px wide image. With object_prob 1 every window holds it."""
    image = np.zeros((200, 5000, 3), dtype=np.uint8)
    boxes = np.array([[4000.0, 50, 4030, 70]])
    rng = np.random.default_rng(0)
    hits = [len(T.native_crop(image, boxes, np.array([0]), 640, rng, object_prob=1.0)[1]) for _ in range(50)]
    assert all(h == 1 for h in hits)
    misses = [len(T.native_crop(image, boxes, np.array([0]), 640, rng, object_prob=0.0)[1]) for _ in range(50)]
    assert sum(misses) < 25  # uniform windows mostly miss it


def _cfg(**overrides):
    cfg = add_sarl_config(get_cfg())
    cfg.INPUT.YOLO.IMG_SIZE = 320
    cfg.INPUT.YOLO.NATIVE_CROP = True
    cfg.INPUT.YOLO.MIXUP_PROB = 0.0
    for key, value in overrides.items():
        node = cfg
        *path, leaf = key.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return cfg


def _records(tmp_path, count=3):
    import cv2

    records = []
    for i in range(count):
        image, boxes, classes = _frame(width=1200, height=500, seed=i)
        path = str(tmp_path / f"frame{i}.png")
        cv2.imwrite(path, image)
        annotations = [{"bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "bbox_mode": BoxMode.XYWH_ABS,
                        "category_id": int(c), "iscrowd": 0} for b, c in zip(boxes, classes)]
        records.append({"file_name": path, "image_id": i, "height": 500, "width": 1200, "annotations": annotations})
    return records


@pytest.mark.parametrize("mosaic_prob", [0.0, 1.0])
def test_mapper_crops_deterministically_and_keeps_object_size(tmp_path, mosaic_prob):
    records = _records(tmp_path)
    cfg = _cfg(**{"INPUT.YOLO.MOSAIC_PROB": mosaic_prob, "INPUT.YOLO.MOSAIC_SCALE": [1.0, 1.0],
                  "INPUT.YOLO.DEGREES": 0.0, "INPUT.YOLO.SHEAR": 0.0, "INPUT.YOLO.TRANSLATE": 0.0})
    mapper = YOLOMapper(cfg, True, records)
    a = mapper({**records[0], "sample_seed": (7, 3)})
    b = mapper({**records[0], "sample_seed": (7, 3)})
    c = mapper({**records[0], "sample_seed": (7, 4)})
    assert a["image"].shape == (3, 320, 320)
    assert np.array_equal(a["image"].numpy(), b["image"].numpy())  # same seed, same sample
    assert not np.array_equal(a["image"].numpy(), c["image"].numpy())
    boxes = a["instances"].gt_boxes.tensor.numpy()
    assert len(boxes) > 0
    wh = boxes[:, 2:] - boxes[:, :2]
    whole = (wh[:, 0] > 32.5) & (wh[:, 1] > 17.5)  # boxes not cut by the window
    assert whole.any()
    assert np.allclose(wh[whole], [33, 18], atol=0.51)  # native size: 33 x 18 px, not shrunk


def test_mapper_without_crop_letterboxes_the_frame(tmp_path):
    records = _records(tmp_path)
    cfg = _cfg(**{"INPUT.YOLO.NATIVE_CROP": False, "INPUT.YOLO.MOSAIC_PROB": 0.0})
    out = YOLOMapper(cfg, True, records)({**records[0], "sample_seed": (0, 0)})
    wh = out["instances"].gt_boxes.tensor.numpy()
    wh = wh[:, 2:] - wh[:, :2]
    assert wh[:, 0].max() < 12  # 33 px shrunk by 320/1200
