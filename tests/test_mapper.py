"""YOLO mapper and transforms: tiny boxes survive mosaic, boxes stay inside, min-size rule, letterbox inverse,
the no-aug switch (also in DataLoader workers), unreadable images, a visual check PNG, real KIT AIS images."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from sarl.config import add_sarl_config
from sarl.data import transforms as T
from sarl.data.build import build_yolo_test_loader, build_yolo_train_loader
from sarl.data.mapper import YOLOMapper

BACKGROUND = 40
OBJECT = 250


def _artifact_dir(tmp_path: Path) -> Path:
    """Visual checks go to $SARL_TEST_ARTIFACTS (e.g. output/test_artifacts) when set, else to tmp_path."""
    folder = Path(os.environ.get("SARL_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write_scenes(folder: Path, count: int = 4, size=(240, 320), objects: int = 25, seed: int = 0,
                  side_range=(2, 8)):
    """Dark images with bright solid rectangles exactly on the labelled boxes (integer pixels), so the pixels
    under a transformed box tell whether the box still sits on its object."""
    rng = np.random.default_rng(seed)
    dicts = []
    for index in range(count):
        height, width = size
        image = np.full((height, width, 3), BACKGROUND, np.uint8)
        annotations = []
        for _ in range(objects):
            w, h = (int(v) for v in rng.integers(side_range[0], side_range[1] + 1, 2))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            if (image[max(y - 2, 0): y + h + 2, max(x - 2, 0): x + w + 2] != BACKGROUND).any():
                continue  # keep objects apart: one object per box
            image[y: y + h, x: x + w] = OBJECT
            annotations.append({"bbox": [float(x), float(y), float(w), float(h)], "bbox_mode": BoxMode.XYWH_ABS,
                                "category_id": int(rng.integers(0, 3)), "iscrowd": 0})
        path = folder / f"scene_{seed}_{index}.png"
        cv2.imwrite(str(path), image)
        dicts.append({"file_name": str(path), "image_id": f"scene_{seed}_{index}", "height": height, "width": width,
                      "annotations": annotations})
    return dicts


def _cfg(**overrides):
    cfg = add_sarl_config(get_cfg())
    cfg.INPUT.YOLO.IMG_SIZE = 320
    cfg.INPUT.YOLO.SEED = 0
    for key, value in overrides.items():
        setattr(cfg.INPUT.YOLO, key, value)
    return cfg


NO_STRONG_AUG = dict(MOSAIC_PROB=0.0, MIXUP_PROB=0.0, HSV_PROB=0.0, FLIP_PROB=0.0)


def _bgr(output) -> np.ndarray:
    return output["image"].permute(1, 2, 0).numpy()


def _assert_boxes_valid(output, size, min_side):
    boxes = output["instances"].gt_boxes.tensor.numpy()
    assert output["image"].shape == (3, size, size) and output["image"].dtype == torch.uint8
    assert (boxes >= 0).all() and (boxes <= size).all(), "boxes must be clipped to the image"
    wh = boxes[:, 2:] - boxes[:, :2]
    assert (wh >= min_side - 1e-4).all(), "min-size rule"
    assert output["instances"].gt_classes.dtype == torch.int64
    assert len(output["instances"].gt_classes) == len(boxes)


def _brightness_inside(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mean grey level inside the central part of each box (the rounding of its edges excluded)."""
    grey = image.mean(axis=2)
    values = []
    for x1, y1, x2, y2 in boxes:
        cx1, cy1 = int(np.floor(x1 + 0.5)), int(np.floor(y1 + 0.5))
        cx2, cy2 = max(int(np.ceil(x2 - 0.5)), cx1 + 1), max(int(np.ceil(y2 - 0.5)), cy1 + 1)
        values.append(grey[cy1:cy2, cx1:cx2].mean())
    return np.array(values)


def test_tiny_boxes_survive_mosaic_and_stay_on_their_objects(tmp_path):
    dicts = _write_scenes(tmp_path, size=(320, 320))
    # Scale 1, no rotation/shear: the mosaic is a pure translation, so every tiny box keeps its exact size.
    mapper = YOLOMapper(_cfg(MOSAIC_PROB=1.0, MIXUP_PROB=0.0, HSV_PROB=0.0, FLIP_PROB=0.5, MOSAIC_SCALE=[1.0, 1.0],
                             DEGREES=0.0, SHEAR=0.0, TRANSLATE=0.0), True, dicts)
    input_sizes = {(a["bbox"][2], a["bbox"][3]) for d in dicts for a in d["annotations"]}
    total = 0
    for index in range(6):
        output = mapper(dicts[index % len(dicts)])
        _assert_boxes_valid(output, 320, 1.0)
        boxes = output["instances"].gt_boxes.tensor.numpy().astype(np.float64)
        total += len(boxes)
        interior = (boxes[:, :2] > 0.5).all(1) & (boxes[:, 2:] < 319.5).all(1)
        sizes = np.round(boxes[interior, 2:] - boxes[interior, :2], 3)
        assert all((w, h) in input_sizes for w, h in sizes), "an uncut tiny box changed size"
        assert (_brightness_inside(_bgr(output), boxes) > 200).all(), "a box left its object"
    assert total >= 60  # the mosaic crop shows about a quarter of 4 x ~25 objects per sample


def test_default_augmentation_keeps_tiny_objects_and_valid_boxes(tmp_path):
    dicts = _write_scenes(tmp_path, size=(320, 320), side_range=(2, 6))
    mapper = YOLOMapper(_cfg(), True, dicts)  # every default: mosaic, mixup, affine, HSV, flip
    tiny = 0
    for index in range(6):
        output = mapper(dicts[index % len(dicts)])
        _assert_boxes_valid(output, 320, 1.0)
        wh = (output["instances"].gt_boxes.tensor[:, 2:] - output["instances"].gt_boxes.tensor[:, :2]).numpy()
        tiny += int((wh.max(axis=1) < 8).sum())
        assert output["letterbox"] == (1.0, 0.0, 0.0)
    assert tiny > 20, "tiny objects must survive the default augmentation"


def test_min_box_size_rule(tmp_path):
    # A 320x320 image letterboxed to 320 (scale 1): 1 px and 2 px wide boxes only meet the min-size rule.
    image = np.full((320, 320, 3), BACKGROUND, np.uint8)
    path = tmp_path / "sizes.png"
    cv2.imwrite(str(path), image)
    sizes = [1.0, 1.5, 2.0, 3.0, 5.0]
    annotations = [{"bbox": [20.0 + 30 * i, 50.0, s, s], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0,
                    "iscrowd": 0} for i, s in enumerate(sizes)]
    record = {"file_name": str(path), "image_id": 1, "height": 320, "width": 320, "annotations": annotations}
    for min_size, expected in [(1.0, sizes), (2.0, sizes[2:]), (3.0, sizes[3:])]:
        mapper = YOLOMapper(_cfg(MIN_BOX_SIZE=min_size, **NO_STRONG_AUG), True, [record])
        boxes = mapper(dict(record))["instances"].gt_boxes.tensor.numpy()
        np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], expected, atol=1e-5)
    kept, _ = T.filter_boxes(np.array([[0, 0, 1, 4], [0, 0, 0.9, 4], [0, 0, 4, 0.99]]), np.arange(3), 1.0)
    assert len(kept) == 1
    # Mostly cut off by the border: dropped by the visible-fraction rule, whatever its size.
    kept, _ = T.filter_boxes(np.array([[0, 0, 4, 4]]), np.arange(1), 1.0, np.array([200.0]), 0.1)
    assert len(kept) == 0


def test_letterbox_inverse_maps_boxes_back(tmp_path):
    dicts = _write_scenes(tmp_path, count=1, size=(180, 300), objects=15)
    record = dicts[0]
    mapper = YOLOMapper(_cfg(), False)
    output = mapper(dict(record))
    scale, pad_x, pad_y = output["letterbox"]
    assert (output["height"], output["width"]) == (180, 300)
    assert scale == pytest.approx(320 / 300) and pad_x == 0.0 and pad_y == float((320 - 192) // 2)
    boxes = output["instances"].gt_boxes.tensor.numpy().astype(np.float64)
    back = T.unletterbox_boxes(boxes, scale, pad_x, pad_y)
    original = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                         for a in record["annotations"]])
    np.testing.assert_allclose(back, original, atol=1e-3)  # float32 tensor round trip
    # The letterboxed boxes sit on the (resized) objects and the padding is grey.
    assert (_brightness_inside(_bgr(output), boxes) > 180).all()
    assert (_bgr(output)[: int(pad_y)] == T.PAD_VALUE).all()


@settings(max_examples=25, deadline=None)
@given(height=st.integers(1, 900), width=st.integers(1, 900), size=st.sampled_from([64, 320, 640]),
       box=st.tuples(*[st.floats(0, 1) for _ in range(4)]))
def test_letterbox_round_trip_property(height, width, size, box):
    image = np.zeros((height, width, 3), np.uint8)
    out, scale, pad_x, pad_y = T.letterbox(image, size)
    assert out.shape == (size, size, 3)
    x1, x2 = sorted([box[0] * width, box[2] * width])
    y1, y2 = sorted([box[1] * height, box[3] * height])
    boxes = np.array([[x1, y1, x2, y2]])
    mapped = T.letterbox_boxes(boxes, scale, pad_x, pad_y)
    assert (mapped >= -1e-6).all() and (mapped <= size + 1e-6 + scale).all()
    np.testing.assert_allclose(T.unletterbox_boxes(mapped, scale, pad_x, pad_y), boxes, atol=1e-9)


def test_augmentation_off_gives_the_plain_letterbox(tmp_path):
    dicts = _write_scenes(tmp_path, size=(200, 300))
    cfg = _cfg(HSV_PROB=0.0, FLIP_PROB=0.0)
    assert YOLOMapper(cfg, True, dicts)(dict(dicts[0]))["letterbox"] == (1.0, 0.0, 0.0)  # mosaic
    mapper = YOLOMapper(cfg, True, dicts, augment=False)  # the no-aug phase's mapper
    output = mapper(dict(dicts[0]))
    test_output = YOLOMapper(_cfg(), False)(dict(dicts[0]))
    assert torch.equal(output["image"], test_output["image"])
    torch.testing.assert_close(output["instances"].gt_boxes.tensor, test_output["instances"].gt_boxes.tensor)


def test_seeded_mapper_repeats_and_rgb_format(tmp_path):
    dicts = _write_scenes(tmp_path)
    first = YOLOMapper(_cfg(), True, dicts)(dict(dicts[1]))
    second = YOLOMapper(_cfg(), True, dicts)(dict(dicts[1]))
    assert torch.equal(first["image"], second["image"])
    torch.testing.assert_close(first["instances"].gt_boxes.tensor, second["instances"].gt_boxes.tensor)
    cfg = _cfg()
    cfg.INPUT.FORMAT = "RGB"
    rgb = YOLOMapper(cfg, True, dicts)(dict(dicts[1]))
    assert torch.equal(rgb["image"], first["image"].flip(0))
    cfg.INPUT.FORMAT = "L"
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        YOLOMapper(cfg, True, dicts)


def test_unreadable_image_is_skipped_with_a_warning_and_counted(tmp_path, caplog):
    dicts = _write_scenes(tmp_path, count=2)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    bad = dict(dicts[0], file_name=str(broken), image_id="broken")
    mapper = YOLOMapper(_cfg(**NO_STRONG_AUG), True, dicts)
    with caplog.at_level(logging.WARNING, logger="sarl.data.mapper"):
        output = mapper(bad)
    assert str(broken) in caplog.text
    assert mapper.num_unreadable == 1
    assert output["image"].shape == (3, 320, 320) and len(output["instances"]) > 0
    assert output["image_id"] in {d["image_id"] for d in dicts}  # the output names the substitute it shows
    with pytest.raises(OSError, match="broken.png"):
        YOLOMapper(_cfg(), False)(bad)
    with pytest.raises(ValueError, match="dataset_dicts"):
        YOLOMapper(_cfg(), True, None)


def test_loaders_in_worker_processes_with_and_without_augmentation(tmp_path):
    dicts = _write_scenes(tmp_path, count=4)
    name = "test_yolo_mapper_scenes"
    for n in (name,):
        if n in DatasetCatalog.list():
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"])
    try:
        cfg = _cfg(MIXUP_PROB=0.0)
        cfg.DATASETS.TRAIN = (name,)
        cfg.SOLVER.IMS_PER_BATCH = 2
        cfg.DATALOADER.NUM_WORKERS = 1
        cfg.SEED = 3
        batch = next(iter(build_yolo_train_loader(cfg)))
        assert len(batch) == 2 and all(b["letterbox"] == (1.0, 0.0, 0.0) for b in batch)
        # The no-aug phase's loader (the trainer builds one in its place): no mosaic in the worker either.
        no_aug = build_yolo_train_loader(cfg, mapper=YOLOMapper(cfg, True, dicts, augment=False))
        batch = next(iter(no_aug))
        assert len(batch) == 2 and all(b["letterbox"] != (1.0, 0.0, 0.0) for b in batch)

        # The trainer's form: its own dataset list and sampler.
        from detectron2.data.samplers import TrainingSampler

        custom = build_yolo_train_loader(cfg, dataset=[dict(d) for d in dicts[:2]],
                                         sampler=TrainingSampler(2, seed=1))
        assert len(custom.yolo_mapper.dataset_dicts) == 2

        test_loader = build_yolo_test_loader(cfg, name)
        outputs = [batch[0] for batch in test_loader]
        assert [o["image_id"] for o in outputs] == [d["image_id"] for d in dicts]
        assert all(o["image"].shape == (3, 320, 320) for o in outputs)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_augmentation_follows_the_stream_position_not_the_process(tmp_path):
    """With the trainer's sampler (stream keys), sample p of the stream is augmented identically when the loader
    starts at p (a resume) and whatever the number of workers; the augmentation is random (mosaics differ)."""
    from sarl.data.samplers import ResumableTrainingSampler

    dicts = _write_scenes(tmp_path, count=6)
    cfg = _cfg(MIXUP_PROB=0.5)
    cfg.SOLVER.IMS_PER_BATCH = 2

    def samples(start: int, workers: int, count: int):
        cfg.DATALOADER.NUM_WORKERS = workers
        sampler = ResumableTrainingSampler(len(dicts), seed=5, start_index=start, with_positions=True)
        loader = build_yolo_train_loader(cfg, dataset=[dict(d) for d in dicts], sampler=sampler)
        out, iterator = [], iter(loader)
        while len(out) < count:
            out += next(iterator)
        del iterator
        return out[:count]

    full = samples(0, 0, 8)
    resumed = samples(4, 0, 4)
    with_workers = samples(0, 2, 8)
    for a, b in zip(full[4:], resumed):
        assert a["file_name"] == b["file_name"] and torch.equal(a["image"], b["image"])
        assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)
    for a, b in zip(full, with_workers):
        assert torch.equal(a["image"], b["image"])
    assert not torch.equal(full[0]["image"], full[1]["image"])
    # Without stream keys (a plain index), the mapper falls back to its per-process stream: still valid output.
    mapper = YOLOMapper(cfg, True, dicts)
    assert mapper(dict(dicts[0]))["image"].shape == (3, 320, 320)


def _draw(output, path: Path) -> np.ndarray:
    image = np.ascontiguousarray(_bgr(output))
    for x1, y1, x2, y2 in output["instances"].gt_boxes.tensor.numpy():
        cv2.rectangle(image, (int(x1) - 1, int(y1) - 1), (int(np.ceil(x2)), int(np.ceil(y2))), (0, 0, 255), 1)
    cv2.imwrite(str(path), image)
    return image


def test_visual_check_png_is_written(tmp_path):
    dicts = _write_scenes(tmp_path, size=(320, 320))
    mapper = YOLOMapper(_cfg(), True, dicts)
    path = _artifact_dir(tmp_path) / "mapper_mosaic_synthetic.png"
    drawn = _draw(mapper(dict(dicts[0])), path)
    reread = cv2.imread(str(path))
    assert reread is not None and reread.shape == (320, 320, 3)
    assert np.array_equal(reread, drawn)


def _kit_ais_dicts(folder: Path, limit: int = 4):
    dicts = []
    for label_path in sorted(folder.glob("*.txt"))[:limit]:
        image_path = label_path.with_suffix(".png")
        height, width = cv2.imread(str(image_path)).shape[:2]
        annotations = []
        for line in label_path.read_text().splitlines():
            if not line.strip():
                continue
            cls, cx, cy, w, h = (float(v) for v in line.split())
            annotations.append({"bbox": [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height],
                                "bbox_mode": BoxMode.XYWH_ABS, "category_id": int(cls), "iscrowd": 0})
        dicts.append({"file_name": str(image_path), "image_id": image_path.stem, "height": height, "width": width,
                      "annotations": annotations})
    return dicts


def test_kit_ais_real_images_through_mosaic(kit_ais_dir, tmp_path):
    dicts = _kit_ais_dicts(kit_ais_dir)
    assert sum(len(d["annotations"]) for d in dicts) > 0
    mapper = YOLOMapper(_cfg(IMG_SIZE=640, MIXUP_PROB=0.0), True, dicts)
    output = mapper(dict(dicts[0]))
    _assert_boxes_valid(output, 640, 1.0)
    assert len(output["instances"]) > 0, "the cars must survive the mosaic"
    _draw(output, _artifact_dir(tmp_path) / "mapper_mosaic_kit_ais.png")
    test_output = YOLOMapper(_cfg(IMG_SIZE=640), False)(dict(dicts[0]))
    back = T.unletterbox_boxes(test_output["instances"].gt_boxes.tensor.numpy(), *test_output["letterbox"])
    original = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                         for a in dicts[0]["annotations"]])
    np.testing.assert_allclose(back, T.clip_boxes(original, dicts[0]["width"], dicts[0]["height"]), atol=1e-2)


def test_ignore_regions_are_greyed_for_training_only(tmp_path):
    dicts = _write_scenes(tmp_path, count=1, size=(320, 320))
    # The second region lies outside the image (negative ends): it must paint nothing.
    record = dict(dicts[0], ignore_regions=[[0.0, 0.0, 160.0, 100.0], [-50.0, -40.0, -10.0, -5.0]])
    train = YOLOMapper(_cfg(**NO_STRONG_AUG), True, [record])(dict(record))
    assert (_bgr(train)[:100, :160] == T.PAD_VALUE).all()
    assert not (_bgr(train)[100:, 160:] == T.PAD_VALUE).all()
    test = YOLOMapper(_cfg(), False)(dict(record))
    assert not (_bgr(test)[:100, :160] == T.PAD_VALUE).all()
    unmasked = YOLOMapper(_cfg(MASK_IGNORE_REGIONS=False, **NO_STRONG_AUG), True, [record])(dict(record))
    assert torch.equal(unmasked["image"], test["image"])
