"""AI-TOD evaluator: engine equality (the project's C++ engine equals pycocotools to the bit, on random and
adversarial cases), protocol edge cases, ignore regions, the per-image cap, the DatasetEvaluator."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("faster_coco_eval")
pytest.importorskip("pycocotools")

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.structures import BoxMode, Boxes, Instances  # noqa: E402

from conftest import needs_extension  # noqa: E402
from sarl.evaluation import (  # noqa: E402
    AITODEvaluator,
    accumulate_detections,
    evaluate_detections,
    ignored_fraction,
    summarize_aitod,
)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sarl.evaluation.arrays import build_eval_arrays, coco_dicts_from_arrays  # noqa: E402
from sarl.evaluation.engines import native_engine_available, run_engine  # noqa: E402

requires_native = needs_extension("sarl._C (the 'sarl' evaluation engine)", native_engine_available())

CLASSES = ["plane", "ship", "vehicle"]


def _make_case(seed: int, num_images: int = 6, max_gt: int = 25, crowd_prob: float = 0.1):
    """Random GT over all AI-TOD area ranges (sides 2..60 px) and noisy detections: jittered copies of most GT
    with random scores, plus false positives, plus a class confusion or two. Some images have no GT."""
    rng = np.random.default_rng(seed)
    gt_dicts, predictions = [], []
    for index in range(num_images):
        n = int(rng.integers(0, max_gt + 1)) if index else 0  # image 0 has no ground truth
        wh = np.exp(rng.uniform(np.log(2), np.log(60), (n, 2)))  # log-uniform: every area range
        xy = rng.uniform(0, 400 - 60, (n, 2))
        classes = rng.integers(0, len(CLASSES), n)
        annotations = [
            {"bbox": [*xy[j], *wh[j]], "bbox_mode": BoxMode.XYWH_ABS, "category_id": int(classes[j]),
             "iscrowd": int(rng.uniform() < crowd_prob)}
            for j in range(n)
        ]
        gt_dicts.append({"image_id": f"img_{index}", "file_name": f"img_{index}.png", "height": 400, "width": 400,
                         "annotations": annotations})
        hit = rng.uniform(size=n) < 0.8
        jitter = rng.normal(0, 0.05, (n, 4)) * np.concatenate([wh, wh], 1)
        tp_boxes = (np.concatenate([xy, xy + wh], 1) + jitter)[hit]
        fp_count = int(rng.integers(0, 40))
        fp_xy = rng.uniform(0, 380, (fp_count, 2))
        fp_boxes = np.concatenate([fp_xy, fp_xy + rng.uniform(2, 40, (fp_count, 2))], 1)
        boxes = np.concatenate([tp_boxes, fp_boxes])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)
        det_classes = np.concatenate([classes[hit], rng.integers(0, len(CLASSES), fp_count)])
        if index != 1:  # image 1 has no detections at all
            predictions.append({"image_id": f"img_{index}", "boxes": boxes,
                                "scores": rng.uniform(0.01, 1, len(boxes)), "classes": det_classes})
    return gt_dicts, predictions


def _perfect_predictions(gt_dicts):
    predictions = []
    for record in gt_dicts:
        boxes = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]])
        predictions.append({"image_id": record["image_id"], "boxes": boxes.reshape(-1, 4),
                            "scores": np.linspace(1.0, 0.5, len(boxes)),
                            "classes": np.array([a["category_id"] for a in record["annotations"]], dtype=np.int64)})
    return predictions


def _evaluate_with_arrays(gt_dicts, predictions, **kwargs):
    """(metrics, accumulated arrays) of one evaluation."""
    accumulated = accumulate_detections(gt_dicts, predictions, len(CLASSES), **kwargs)
    return summarize_aitod(accumulated, CLASSES), accumulated


def _assert_metrics_equal(a, b, tol=1e-6):
    assert list(a) == list(b)
    for key in a:
        if math.isnan(a[key]):
            assert math.isnan(b[key]), key
        else:
            assert abs(a[key] - b[key]) <= tol, (key, a[key], b[key])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_faster_coco_eval_equals_pycocotools(seed):
    gt_dicts, predictions = _make_case(seed)
    fast, fast_arrays = _evaluate_with_arrays(gt_dicts, predictions, engine="faster_coco_eval")
    slow, slow_arrays = _evaluate_with_arrays(gt_dicts, predictions, engine="pycocotools")
    _assert_metrics_equal(fast, slow)
    np.testing.assert_allclose(fast_arrays["precision"], slow_arrays["precision"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(fast_arrays["recall"], slow_arrays["recall"], atol=1e-6, rtol=0)
    # The case must be non-trivial: the metrics are neither perfect nor empty.
    assert 5.0 < fast["AP"] < 95.0
    assert fast_arrays["precision"].shape == (10, 101, len(CLASSES), 5, 3)


def test_reported_keys_and_protocol_params():
    gt_dicts, predictions = _make_case(3)
    metrics, arrays = _evaluate_with_arrays(gt_dicts, predictions)
    _assert_metrics_equal(metrics, evaluate_detections(gt_dicts, predictions, CLASSES), tol=0.0)
    expected = ["AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m", "AR@100", "AR@300", "AR@1500",
                "AR_vt@1500", "AR_t@1500", "AR_s@1500", "AR_m@1500"] + [f"AP-{c}" for c in CLASSES]
    assert list(metrics) == expected
    assert arrays["params"]["maxDets"] == [100, 300, 1500]
    assert arrays["params"]["areaRngLbl"] == ["all", "vt", "t", "s", "m"]
    assert arrays["params"]["areaRng"] == [[0.0, 1e10], [0.0, 64.0], [64.0, 256.0], [256.0, 1024.0], [1024.0, 1e10]]
    assert metrics["AP50"] >= metrics["AP75"]


@pytest.mark.parametrize("engine", ["sarl", "faster_coco_eval", "pycocotools"])
def test_perfect_detector_scores_100(engine):
    gt_dicts, _ = _make_case(4, crowd_prob=0.0)
    metrics = evaluate_detections(gt_dicts, _perfect_predictions(gt_dicts), CLASSES, engine=engine)
    for key in ("AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m", "AR@100", "AR@1500"):
        assert metrics[key] == pytest.approx(100.0, abs=1e-9), key
    for name in CLASSES:
        assert metrics[f"AP-{name}"] == pytest.approx(100.0, abs=1e-9)


@pytest.mark.parametrize("empty_kind", ["no_entries", "empty_arrays"])
def test_empty_detector_scores_0(empty_kind):
    gt_dicts, _ = _make_case(5, crowd_prob=0.0)
    predictions = [] if empty_kind == "no_entries" else [
        {"image_id": r["image_id"], "boxes": np.zeros((0, 4)), "scores": np.zeros(0), "classes": np.zeros(0, int)}
        for r in gt_dicts
    ]
    metrics = evaluate_detections(gt_dicts, predictions, CLASSES)
    for key in ("AP", "AP50", "AP_vt", "AP_m", "AR@1500"):
        assert metrics[key] == 0.0, key


def test_no_ground_truth_gives_nan_not_zero():
    gt_dicts = [{"image_id": 1, "height": 50, "width": 50, "annotations": []}]
    predictions = [{"image_id": 1, "boxes": [[1, 1, 5, 5]], "scores": [0.9], "classes": [0]}]
    metrics = evaluate_detections(gt_dicts, predictions, CLASSES)
    assert math.isnan(metrics["AP"]) and math.isnan(metrics["AP-plane"])


def _visdrone_case():
    """One image, two cars; an ignore region on the right half holds many confident false positives."""
    annotations = [
        {"bbox": [10, 10, 12, 8], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "iscrowd": 0},
        {"bbox": [40, 60, 6, 6], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "iscrowd": 0},
    ]
    record = {"image_id": "vd_1", "height": 200, "width": 200, "annotations": annotations,
              "ignore_regions": [[100, 0, 150, 200], [150, 0, 200, 200]]}  # two abutting regions: union counts
    rng = np.random.default_rng(0)
    fp_xy = rng.uniform(105, 185, (30, 2))
    fp_boxes = np.concatenate([fp_xy, fp_xy + 10], axis=1)  # some straddle x = 150
    boxes = np.concatenate([[[10, 10, 22, 18], [40, 60, 46, 66]], fp_boxes])
    scores = np.concatenate([[0.5, 0.4], np.full(30, 0.9)])
    prediction = {"image_id": "vd_1", "boxes": boxes, "scores": scores, "classes": np.full(32, 2)}
    return record, prediction


def test_detections_in_visdrone_ignore_regions_do_not_count():
    record, prediction = _visdrone_case()
    with_regions = evaluate_detections([record], [prediction], CLASSES)
    assert with_regions["AP-vehicle"] == pytest.approx(100.0)
    no_regions = dict(record, ignore_regions=[])
    without = evaluate_detections([no_regions], [prediction], CLASSES)
    assert without["AP-vehicle"] < 50.0  # the 30 confident false positives rank first
    # Equal to scoring with the in-region detections deleted by hand.
    keep = np.r_[True, True, np.zeros(30, bool)]
    pruned = {k: (np.asarray(v)[keep] if k != "image_id" else v) for k, v in prediction.items()}
    _assert_metrics_equal(with_regions, evaluate_detections([no_regions], [pruned], CLASSES))


def test_ground_truth_in_ignore_region_is_not_a_miss():
    record, prediction = _visdrone_case()
    record["annotations"].append(
        {"bbox": [120, 120, 8, 8], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "iscrowd": 0})
    metrics = evaluate_detections([record], [prediction], CLASSES)
    assert metrics["AR@1500"] == pytest.approx(100.0)


def test_ignored_fraction_matches_raster():
    rng = np.random.default_rng(1)
    regions = np.array([[10, 10, 40, 30], [30, 20, 60, 50], [0, 45, 20, 60], [35, 25, 45, 35]], dtype=float)
    xy = rng.integers(0, 55, (200, 2))
    boxes = np.concatenate([xy, xy + rng.integers(1, 20, (200, 2))], axis=1).astype(float)
    mask = np.zeros((100, 100), bool)
    for x1, y1, x2, y2 in regions.astype(int):
        mask[y1:y2, x1:x2] = True
    expected = np.array([mask[y1:y2, x1:x2].mean() for x1, y1, x2, y2 in boxes.astype(int)])
    np.testing.assert_allclose(ignored_fraction(boxes, regions), expected, atol=1e-12)
    assert ignored_fraction(boxes, np.zeros((0, 4))).tolist() == [0.0] * 200
    assert ignored_fraction(np.zeros((0, 4)), regions).shape == (0,)


def test_difficult_ground_truth_is_ignored():
    annotations = [
        {"bbox": [10, 10, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0},
        {"bbox": [50, 50, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0, "difficult": 1},
        {"bbox": [80, 10, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0, "difficult": 1},
    ]
    record = {"image_id": 7, "height": 100, "width": 100, "annotations": annotations}
    # Detects the normal box and one difficult box (ranked first); misses the other difficult box.
    prediction = {"image_id": 7, "boxes": [[50, 50, 60, 60], [10, 10, 20, 20]], "scores": [0.9, 0.8],
                  "classes": [0, 0]}
    metrics = evaluate_detections([record], [prediction], CLASSES)
    assert metrics["AP-plane"] == pytest.approx(100.0)
    assert metrics["AR@1500"] == pytest.approx(100.0)


def test_cap_keeps_top_3000_detections_per_image():
    annotations = [
        {"bbox": [5, 5, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0},
        {"bbox": [300, 300, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "iscrowd": 0},
    ]
    record = {"image_id": 1, "height": 400, "width": 400, "annotations": annotations}
    rng = np.random.default_rng(2)
    fp_xy = rng.uniform(100, 250, (3000, 2))
    # 3000 confident plane false positives, then the two true positives with the lowest scores.
    boxes = np.concatenate([np.concatenate([fp_xy, fp_xy + 8], 1), [[5, 5, 15, 15], [300, 300, 310, 310]]])
    scores = np.concatenate([rng.uniform(0.5, 1.0, 3000), [0.2, 0.1]])
    classes = np.concatenate([np.zeros(3000, int), [0, 1]])
    prediction = {"image_id": 1, "boxes": boxes, "scores": scores, "classes": classes}
    capped = evaluate_detections([record], [prediction], CLASSES)
    assert capped["AP-ship"] == 0.0  # its only detection was the 3002nd
    uncapped = evaluate_detections([record], [prediction], CLASSES, max_dets_per_image=0)
    assert uncapped["AP-ship"] == pytest.approx(100.0)
    fast = evaluate_detections([record], [prediction], CLASSES, max_dets_per_image=3001)
    assert fast["AP-ship"] == 0.0 and fast["AR@1500"] == 0.0  # plane TP at rank 3001 > maxDets 1500


def test_bad_inputs_raise_clear_errors():
    gt_dicts, predictions = _make_case(6)
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate_detections(gt_dicts, [dict(predictions[0], image_id="missing")], CLASSES)
    bad = dict(predictions[0], classes=np.full(len(predictions[0]["classes"]), 7))
    with pytest.raises(ValueError, match="class ids"):
        evaluate_detections(gt_dicts, [bad], CLASSES)
    nan_boxes = np.array(predictions[0]["boxes"], dtype=float)
    nan_boxes[0, 0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        evaluate_detections(gt_dicts, [dict(predictions[0], boxes=nan_boxes)], CLASSES)
    with pytest.raises(ValueError, match="unknown evaluation engine"):
        evaluate_detections(gt_dicts, predictions, CLASSES, engine="nope")
    with pytest.raises(ValueError, match="duplicate image_id"):
        build_eval_arrays(gt_dicts + gt_dicts[:1], [], len(CLASSES))


def test_dataset_evaluator_end_to_end(tmp_path):
    gt_dicts, predictions = _make_case(7)
    name = "test_aitod_evaluator_case"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: gt_dicts)
    MetadataCatalog.get(name).set(thing_classes=CLASSES)
    try:
        evaluator = AITODEvaluator(name, distributed=False, output_dir=str(tmp_path))
        evaluator.reset()
        by_id = {p["image_id"]: p for p in predictions}
        for record in gt_dicts:
            instances = Instances((record["height"], record["width"]))
            p = by_id.get(record["image_id"], {"boxes": np.zeros((0, 4)), "scores": [], "classes": []})
            instances.pred_boxes = Boxes(torch.as_tensor(np.asarray(p["boxes"]), dtype=torch.float32).reshape(-1, 4))
            instances.scores = torch.as_tensor(np.asarray(p["scores"]), dtype=torch.float32)
            instances.pred_classes = torch.as_tensor(np.asarray(p["classes"]), dtype=torch.int64)
            evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
        results = evaluator.evaluate()
        direct = evaluate_detections(gt_dicts, predictions, CLASSES)
        assert set(results) == {"bbox"}
        # float32 boxes in Instances vs float64 here: equal to a small tolerance.
        for key, value in direct.items():
            assert results["bbox"][key] == pytest.approx(value, abs=1e-3, nan_ok=True), key
        dump = np.load(tmp_path / "aitod_eval.npz")
        assert dump["precision"].shape == (10, 101, len(CLASSES), 5, 3)
        with open(tmp_path / "aitod_eval.json") as f:
            payload = json.load(f)
        assert payload["class_names"] == CLASSES
        assert payload["metrics"]["AP"] == pytest.approx(results["bbox"]["AP"])
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_engine_inputs_are_identical_objects():
    """Both engines read the same COCO dicts; ids are 1-based (0 means 'unmatched' inside the engines)."""
    gt_dicts, predictions = _make_case(8)
    arrays, counts = build_eval_arrays(gt_dicts, predictions, len(CLASSES))
    gt, dt = coco_dicts_from_arrays(arrays)
    assert min(a["id"] for a in gt["annotations"]) == 1 and min(a["id"] for a in dt["annotations"]) == 1
    assert [i["id"] for i in gt["images"]] == list(range(1, len(gt_dicts) + 1))
    assert counts["gt_crowd"] == sum(a["iscrowd"] for r in gt_dicts for a in r["annotations"])
    a = run_engine(arrays, engine="faster_coco_eval", coco_dicts=(gt, dt))
    b = run_engine(arrays, engine="pycocotools", coco_dicts=(gt, dt))
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-6, rtol=0)


def test_empty_ground_truth_and_predictions_are_valid():
    metrics = evaluate_detections([], [], CLASSES)
    assert all(math.isnan(v) for v in metrics.values())
    assert "AP-ship" in metrics


def test_category_parallel_evaluation_equals_single_process():
    gt_dicts, predictions = _make_case(9)
    single, single_arrays = _evaluate_with_arrays(gt_dicts, predictions, engine="faster_coco_eval")
    parallel, parallel_arrays = _evaluate_with_arrays(gt_dicts, predictions, workers=2, engine="faster_coco_eval")
    _assert_metrics_equal(single, parallel, tol=0.0)
    for key in ("precision", "recall", "scores"):
        np.testing.assert_array_equal(single_arrays[key], parallel_arrays[key])
    assert parallel_arrays["params"] == single_arrays["params"]


# ------------------------------------------------------------------ the "sarl" engine (csrc/eval) vs pycocotools
def _assert_engines_identical(arrays, max_dets=(100, 300, 1500)):
    """The C++ engine's precision, recall and scores arrays equal pycocotools' bit for bit."""
    native = run_engine(arrays, engine="sarl", max_dets=max_dets)
    reference = run_engine(arrays, engine="pycocotools", max_dets=max_dets)
    for key in ("precision", "recall", "scores"):
        assert native[key].shape == reference[key].shape, key
        mismatch = np.argwhere(native[key] != reference[key])
        assert len(mismatch) == 0, (key, mismatch[:5].tolist())
    assert native["params"] == {k: reference["params"][k] for k in native["params"]}
    return native


@requires_native
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("max_dets", [(100, 300, 1500), (1, 3, 10)])  # small caps: truncation per image and maxDet
def test_sarl_engine_equals_pycocotools_to_the_bit(seed, max_dets):
    gt_dicts, predictions = _make_case(seed, num_images=8, max_gt=40, crowd_prob=0.15)
    arrays, _ = build_eval_arrays(gt_dicts, predictions, len(CLASSES))
    native = _assert_engines_identical(arrays, max_dets)
    assert (native["precision"] > 0).any() and (native["precision"] < 1).any()  # a case with something to get wrong


@st.composite
def _adversarial_case(draw):
    """Few images and boxes on a coarse grid, so that scores tie, boxes coincide or only touch, widths are 0, box
    areas sit exactly on the area-range limits (64, 256, 1024), crowds overlap, and dataset areas differ from box
    areas: the places where an evaluator's ordering and boundary rules show."""
    num_images = draw(st.integers(1, 4))
    num_classes = draw(st.integers(1, 3))
    sides = st.sampled_from([0.0, 1.0, 4.0, 8.0, 16.0, 32.0, 12.5, 40.0])
    coords = st.sampled_from([0.0, 2.0, 4.0, 8.0, 10.0, 16.0])
    gt_dicts, predictions = [], []
    for index in range(num_images):
        annotations = []
        for _ in range(draw(st.integers(0, 7))):
            box = [draw(coords), draw(coords), draw(sides), draw(sides)]
            annotation = {"bbox": box, "bbox_mode": BoxMode.XYWH_ABS, "category_id": draw(st.integers(0, num_classes - 1)),
                          "iscrowd": int(draw(st.booleans()) and draw(st.booleans()))}
            if draw(st.booleans()):
                annotation["area"] = draw(st.sampled_from([0.0, 63.0, 64.0, 65.0, 256.0, 1024.0, 2000.0]))
            annotations.append(annotation)
        gt_dicts.append({"image_id": index, "height": 64, "width": 64, "annotations": annotations})
        count = draw(st.integers(0, 9))
        xy = [[draw(coords), draw(coords)] for _ in range(count)]
        wh = [[draw(sides), draw(sides)] for _ in range(count)]
        boxes = np.array([[x, y, x + w, y + h] for (x, y), (w, h) in zip(xy, wh)]).reshape(-1, 4)
        scores = np.array([draw(st.sampled_from([0.1, 0.5, 0.5, 0.9])) for _ in range(count)])
        classes = np.array([draw(st.integers(0, num_classes - 1)) for _ in range(count)], dtype=np.int64)
        predictions.append({"image_id": index, "boxes": boxes, "scores": scores, "classes": classes})
    max_dets = draw(st.sampled_from([(1, 2, 5), (100, 300, 1500), (2, 4)]))
    return gt_dicts, predictions, num_classes, max_dets


@requires_native
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_adversarial_case())
def test_sarl_engine_equals_pycocotools_on_adversarial_cases(case):
    gt_dicts, predictions, num_classes, max_dets = case
    arrays, _ = build_eval_arrays(gt_dicts, predictions, num_classes)
    _assert_engines_identical(arrays, max_dets)


@requires_native
def test_sarl_engine_is_deterministic_across_thread_counts():
    gt_dicts, predictions = _make_case(11, num_images=12)
    arrays, _ = build_eval_arrays(gt_dicts, predictions, len(CLASSES))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_engine(arrays, engine="sarl")
        torch.set_num_threads(2)
        two = run_engine(arrays, engine="sarl")
    finally:
        torch.set_num_threads(threads)
    for key in ("precision", "recall", "scores"):
        np.testing.assert_array_equal(one[key], two[key])


@requires_native
def test_sarl_engine_empty_inputs_and_errors():
    gt_dicts, predictions = _make_case(12, num_images=3)
    arrays, _ = build_eval_arrays(gt_dicts, predictions, len(CLASSES))
    # No detections at all: recall and precision 0 wherever ground truth counts (as pycocotools).
    no_dets, _ = build_eval_arrays(gt_dicts, [], len(CLASSES))
    _assert_engines_identical(no_dets)
    # No ground truth: every cell -1.
    empty_gt = [dict(r, annotations=[]) for r in gt_dicts]
    no_gt, _ = build_eval_arrays(empty_gt, predictions, len(CLASSES))
    assert (run_engine(no_gt, engine="sarl")["precision"] == -1).all()
    op = torch.ops.sarl.coco_eval_bbox
    t = torch.from_numpy
    args = [t(arrays.gt_boxes), t(arrays.gt_image), t(arrays.gt_category), t(arrays.gt_area), t(arrays.gt_crowd),
            t(arrays.dt_boxes), t(arrays.dt_image), t(arrays.dt_category), t(arrays.dt_score), t(arrays.dt_area),
            3, len(CLASSES), [0.5], [0.0, 1.0], [0.0, 1e10], [10]]
    bad = list(args)
    bad[0] = bad[0].float()
    with pytest.raises(TypeError, match="gt_boxes must be"):
        op(*bad)
    bad = list(args)
    bad[10] = 2  # image ids reach 2: num_images must be above
    with pytest.raises(ValueError, match="gt_image must lie in"):
        op(*bad)
    bad = list(args)
    bad[8] = bad[8].clone()
    bad[8][0] = float("nan")
    with pytest.raises(ValueError, match="dt_score must be finite"):
        op(*bad)
    bad = list(args)
    bad[15] = [10, 5]
    with pytest.raises(ValueError, match="max_dets must be positive and ascending"):
        op(*bad)


@requires_native
def test_coco_eval_op_schema_and_fake_registration():
    """torch.library.opcheck: schema, fake (shape) implementation and dispatch of sarl::coco_eval_bbox."""
    gt_dicts, predictions = _make_case(14, num_images=3)
    arrays, _ = build_eval_arrays(gt_dicts, predictions, len(CLASSES))
    t = torch.from_numpy
    args = (t(arrays.gt_boxes), t(arrays.gt_image), t(arrays.gt_category), t(arrays.gt_area), t(arrays.gt_crowd),
            t(arrays.dt_boxes), t(arrays.dt_image), t(arrays.dt_category), t(arrays.dt_score), t(arrays.dt_area),
            3, len(CLASSES), [0.5, 0.75], [0.0, 0.5, 1.0], [0.0, 1e10, 0.0, 64.0], [1, 10])
    torch.library.opcheck(torch.ops.sarl.coco_eval_bbox.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    precision, recall, scores = torch.ops.sarl.coco_eval_bbox(*args)
    assert precision.shape == scores.shape == (2, 3, len(CLASSES), 2, 2) and recall.shape == (2, len(CLASSES), 2, 2)


def test_sarl_engine_falls_back_without_the_extension(monkeypatch, caplog):
    import sarl.evaluation.engines as module

    gt_dicts, predictions = _make_case(13)
    expected = evaluate_detections(gt_dicts, predictions, CLASSES, engine="pycocotools")
    monkeypatch.setenv("SARL_DISABLE_EXTENSION", "1")
    monkeypatch.setattr(module, "_WARNED_NO_NATIVE", False)
    with caplog.at_level("WARNING", logger=module.logger.name):
        metrics = evaluate_detections(gt_dicts, predictions, CLASSES, engine="sarl")
    assert "using the faster_coco_eval engine" in caplog.text
    _assert_metrics_equal(metrics, expected)
