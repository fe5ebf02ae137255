"""AutoAnchor (sarl.modeling.autoanchor): recall metric, k-means, evolution, and the check that
refits the head's anchors on a tiny-object (AI-TOD-like) box distribution."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from detectron2.structures import BoxMode

from sarl.modeling.autoanchor import (best_possible_recall, check_anchors, fit_anchors, kmeans_wh,
                                      letterbox_box_sizes)
from sarl.modeling.heads.yolov5_head import YOLOv5Head

DEFAULT_ANCHORS = [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]],
                   [[116, 90], [156, 198], [373, 326]]]


def _head() -> YOLOv5Head:
    return YOLOv5Head(in_channels=[8, 16, 32], strides=[8, 16, 32], anchors=DEFAULT_ANCHORS, num_classes=8)


def _aitod_like_dicts(num_images=40, boxes_per_image=50, seed=0, mean_size=12.8, sigma=0.7):
    """800x800 images with log-normal box sizes (mean sqrt(w h) = ``mean_size`` px, most 2-32 px)
    and log-normal aspect ratios, as XYXY_ABS annotations."""
    rng = np.random.default_rng(seed)
    mu = np.log(mean_size) - sigma ** 2 / 2
    dicts = []
    for i in range(num_images):
        size = rng.lognormal(mu, sigma, boxes_per_image)
        aspect = rng.lognormal(0.0, 0.3, boxes_per_image)
        w, h = size * np.sqrt(aspect), size / np.sqrt(aspect)
        x, y = rng.uniform(0, 700, boxes_per_image), rng.uniform(0, 700, boxes_per_image)
        anns = [{"bbox": [float(a), float(b), float(a + c), float(b + d)], "bbox_mode": BoxMode.XYXY_ABS,
                 "category_id": 0} for a, b, c, d in zip(x, y, w, h)]
        dicts.append({"file_name": f"img{i}.png", "height": 800, "width": 800, "annotations": anns})
    return dicts


def test_best_possible_recall_by_hand():
    anchors = torch.tensor([[10.0, 13.0]])
    # 10x13: exact fit; 2.6x3.3: ratio 0.26 > 1/4 (recalled); 2.4x13: 0.24 (missed); 41x13: 0.244 (missed).
    wh = torch.tensor([[10.0, 13.0], [2.6, 3.3], [2.4, 13.0], [41.0, 13.0]])
    bpr, per_box = best_possible_recall(wh, anchors, anchor_t=4.0)
    assert bpr == pytest.approx(0.5) and per_box == pytest.approx(0.5)
    assert best_possible_recall(torch.zeros(0, 2), anchors) == (1.0, 0.0)


def test_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[3.0, 4.0], [20.0, 10.0], [60.0, 80.0]])
    points = np.concatenate([c + rng.normal(0, 0.5, (100, 2)) for c in centres])
    found, distortion = kmeans_wh(points, 3, rng=np.random.default_rng(1))
    found = found[np.argsort(found[:, 0])]
    np.testing.assert_allclose(found, centres, atol=0.3)
    assert distortion < 1.0
    with pytest.raises(ValueError, match="n = 5"):
        kmeans_wh(points[:4], 5)


def test_fit_anchors_is_seeded_sorted_and_bounded():
    wh = letterbox_box_sizes(_aitod_like_dicts(num_images=10), 800, scale_jitter=(1.0, 1.0))
    a = fit_anchors(wh, 9, 800, gen=100, seed=3)
    b = fit_anchors(wh, 9, 800, gen=100, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (9, 2) and a.dtype == np.float32
    assert np.all(np.diff(a.prod(1)) >= 0) and a.min() >= 2.0
    # Fewer boxes than anchors: YOLOv5's random start, still n sorted anchors.
    few = fit_anchors(np.array([[5.0, 6.0], [8.0, 9.0]]), 9, 640, gen=50)
    assert few.shape == (9, 2) and np.all(np.diff(few.prod(1)) >= 0)
    with pytest.raises(ValueError, match="wh"):
        fit_anchors(np.array([[np.nan, 3.0]]), 9, 640)


def test_evolution_improves_the_kmeans_fitness():
    wh = letterbox_box_sizes(_aitod_like_dicts(num_images=10), 800, scale_jitter=(1.0, 1.0))
    from sarl.modeling.autoanchor import _anchor_fitness

    wh_t = wh[(wh >= 2.0).any(1)].astype(np.float32)
    kmeans_only = fit_anchors(wh, 9, 800, gen=0, seed=0)
    evolved = fit_anchors(wh, 9, 800, gen=200, seed=0)
    assert _anchor_fitness(wh_t, evolved, 0.25) >= _anchor_fitness(wh_t, kmeans_only, 0.25)


def test_check_anchors_refits_for_tiny_objects(caplog):
    head = _head()
    dicts = _aitod_like_dicts()
    before = best_possible_recall(torch.as_tensor(letterbox_box_sizes(dicts, 800)), head.anchors.view(-1, 2))[0]
    assert before < head.autoanchor_bpr_thresh  # the COCO anchors miss the smallest objects
    with caplog.at_level(logging.INFO, logger="sarl.modeling.autoanchor"):
        result = check_anchors(head, dicts, img_size=800, gen=300)
    assert result["replaced"] and result["bpr_before"] == pytest.approx(before)
    assert result["bpr_after"] >= head.autoanchor_bpr_thresh > result["bpr_before"]
    areas = head.anchors.view(-1, 2).prod(1)
    assert torch.all(areas[1:] >= areas[:-1]), "anchors must grow from the finest level to the coarsest"
    assert head.anchors.view(-1, 2).max() < 100  # fitted to boxes of about 2-60 px
    assert result["anchors"] == head.anchors.tolist()
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert messages.count("best possible recall") == 2 and "new anchors" in messages


def test_check_anchors_keeps_anchors_that_fit():
    rng = np.random.default_rng(0)
    dicts = [{"file_name": "a.png", "height": 640, "width": 640,
              "annotations": [{"bbox": [10.0, 10.0, float(w), float(h)], "bbox_mode": BoxMode.XYWH_ABS}
                              for w, h in rng.uniform(20, 300, (200, 2))]}]
    head = _head()
    original = head.anchors.clone()
    result = check_anchors(head, dicts, img_size=640, gen=10)
    assert not result["replaced"] and result["bpr_before"] >= 0.98
    torch.testing.assert_close(head.anchors, original)
    assert not check_anchors(head, [], img_size=640)["replaced"]  # no boxes: nothing to fit


def test_letterbox_box_sizes_scale_modes_and_errors():
    dicts = [{"file_name": "wide.png", "height": 800, "width": 1600, "annotations": [
        {"bbox": [0, 0, 20, 10], "bbox_mode": BoxMode.XYWH_ABS},
        {"bbox": [100, 100, 140, 130], "bbox_mode": BoxMode.XYXY_ABS},
        {"bbox": [0, 0, 500, 500], "bbox_mode": BoxMode.XYWH_ABS, "iscrowd": 1}]}]
    wh = letterbox_box_sizes(dicts, 640, scale_jitter=(1.0, 1.0))
    np.testing.assert_allclose(wh, [[8.0, 4.0], [16.0, 12.0]])  # scale 640 / 1600
    jittered = letterbox_box_sizes(dicts, 640)
    assert 0.9 <= jittered[0, 0] / 8.0 <= 1.1
    with pytest.raises(ValueError, match=r"dataset_dicts\[0\] \(wide.png\) annotation 0"):
        bad_box = {"bbox": [0, 0, -3, 4], "bbox_mode": BoxMode.XYWH_ABS}
        letterbox_box_sizes([{**dicts[0], "annotations": [bad_box]}], 640)
    with pytest.raises(ValueError, match=r"dataset_dicts\[0\].*height"):
        letterbox_box_sizes([{"file_name": "x.png", "annotations": []}], 640)


def test_real_aerial_cars_at_a_small_input_size(kit_ais_dir):
    """KIT AIS cars (real aerial labels, COCO json): at 640 px the cars (about 17x12 px) fit the
    COCO anchors; letterboxed to 320 px (about 8x6 px, many under 3 px) they do not, and the
    refit recovers every box."""
    from detectron2.data.datasets import load_coco_json

    dicts = load_coco_json(str(kit_ais_dir / "instances_kit_ais_cars.json"), str(kit_ais_dir))
    assert sum(len(r["annotations"]) for r in dicts) > 1000
    assert not check_anchors(_head(), dicts, img_size=640, gen=10)["replaced"]
    head = _head()
    result = check_anchors(head, dicts, img_size=320, gen=200)
    assert result["bpr_before"] < 0.9 and result["replaced"] and result["bpr_after"] >= 0.98
    areas = head.anchors.view(-1, 2).prod(1)
    assert torch.all(areas[1:] >= areas[:-1])
