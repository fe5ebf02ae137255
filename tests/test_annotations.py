"""sarl.data.annotations: dataset-dict annotations -> box arrays, with the one crowd rule shared by training
(YOLOMapper targets), evaluation (crowd ground truth) and AutoAnchor (box sizes)."""
from __future__ import annotations

import numpy as np
import pytest

from detectron2.structures import BoxMode

from sarl.data.annotations import annotation_arrays, ignore_regions


def _ann(bbox, mode=BoxMode.XYWH_ABS, category_id=0, **flags):
    return {"bbox": bbox, "bbox_mode": mode, "category_id": category_id, **flags}


def test_boxes_in_both_layouts_and_dtypes():
    record = {"file_name": "a.png", "annotations": [
        _ann([10.0, 20.0, 4.0, 6.0]),
        _ann([1.0, 2.0, 5.0, 10.0], mode=BoxMode.XYXY_ABS, category_id=3),
        {"bbox": [0.5, 0.5, 2.0, 2.0], "category_id": 1},  # no bbox_mode: XYWH_ABS
    ]}
    arrays = annotation_arrays(record)
    assert len(arrays) == 3
    np.testing.assert_array_equal(arrays.boxes_xyxy, [[10, 20, 14, 26], [1, 2, 5, 10], [0.5, 0.5, 2.5, 2.5]])
    np.testing.assert_array_equal(arrays.boxes_xywh, [[10, 20, 4, 6], [1, 2, 4, 8], [0.5, 0.5, 2, 2]])
    np.testing.assert_array_equal(arrays.classes, [0, 3, 1])
    assert arrays.boxes_xyxy.dtype == arrays.boxes_xywh.dtype == np.float64
    assert arrays.classes.dtype == np.int64 and arrays.is_crowd.dtype == bool and arrays.is_difficult.dtype == bool
    # A list of annotations reads the same as the record holding it.
    np.testing.assert_array_equal(annotation_arrays(record["annotations"]).boxes_xyxy, arrays.boxes_xyxy)


def test_xywh_boxes_are_kept_exactly():
    """No XYXY round trip: x + w - x is not always w in floating point."""
    arrays = annotation_arrays([_ann([0.1, 0.7, 0.2, 0.1])])
    assert arrays.boxes_xywh[0].tolist() == [0.1, 0.7, 0.2, 0.1]


def test_crowd_rule():
    """Crowd = ``iscrowd`` or ``ignore``; ``difficult`` is its own flag (an object: trained on, not scored)."""
    annotations = [
        _ann([0, 0, 4, 4]),
        _ann([0, 0, 4, 4], iscrowd=1),
        _ann([0, 0, 4, 4], ignore=1),
        _ann([0, 0, 4, 4], difficult=1),
        _ann([0, 0, 4, 4], iscrowd=0, ignore=0, difficult=0),
    ]
    arrays = annotation_arrays(annotations)
    assert arrays.is_crowd.tolist() == [False, True, True, False, False]
    assert arrays.is_difficult.tolist() == [False, False, False, True, False]
    objects = arrays.without_crowd()
    assert len(objects) == 3 and not objects.is_crowd.any() and objects.is_difficult.tolist() == [False, True, False]
    assert objects.boxes_xyxy.shape == (3, 4) and objects.classes.shape == (3,)


@pytest.mark.parametrize("record", [
    {"file_name": "empty.png", "annotations": []},
    {"file_name": "none.png"},
    {"file_name": "null.png", "annotations": None},
    [],
])
def test_empty_annotations(record):
    arrays = annotation_arrays(record)
    assert len(arrays) == 0
    assert arrays.boxes_xyxy.shape == arrays.boxes_xywh.shape == (0, 4)
    assert arrays.classes.shape == arrays.is_crowd.shape == arrays.is_difficult.shape == (0,)
    assert arrays.boxes_xyxy.dtype == np.float64 and arrays.classes.dtype == np.int64 and arrays.is_crowd.dtype == bool
    assert len(arrays.without_crowd()) == 0


def test_zero_area_boxes_are_valid():
    arrays = annotation_arrays([_ann([5, 5, 0, 3]), _ann([5, 5, 5, 9], mode=BoxMode.XYXY_ABS), _ann([1, 1, 0, 0])])
    np.testing.assert_array_equal(arrays.boxes_xywh[:, 2:], [[0, 3], [0, 4], [0, 0]])
    np.testing.assert_array_equal(arrays.boxes_xyxy, [[5, 5, 5, 8], [5, 5, 5, 9], [1, 1, 1, 1]])


@pytest.mark.parametrize("annotation, message", [
    (_ann([0, 0, -1, 4]), r"a\.png annotation 1: bbox .* negative"),
    (_ann([4, 0, 2, 4], mode=BoxMode.XYXY_ABS), r"a\.png annotation 1: bbox .* negative"),
    (_ann([0, 0, float("nan"), 4]), r"a\.png annotation 1: bbox .* not finite"),
    (_ann([0, 0, 4]), r"a\.png annotation 1: 'bbox' is not 4 numbers"),
    ({"category_id": 0}, r"a\.png annotation 1: 'bbox' is not 4 numbers"),
    (_ann([0, 0, 4, 4], mode=BoxMode.XYWH_REL), r"a\.png annotation 1: bbox_mode .* not supported"),
    ({"bbox": [0, 0, 4, 4]}, r"a\.png annotation 1: no 'category_id'"),
    (_ann([0, 0, float("inf"), 4], iscrowd=1), r"a\.png annotation 1: .* not finite"),  # crowd boxes are checked too
])
def test_invalid_annotations_name_the_image_and_the_annotation(annotation, message):
    record = {"file_name": "a.png", "annotations": [_ann([0, 0, 1, 1]), annotation]}
    with pytest.raises(ValueError, match=message):
        annotation_arrays(record)


def test_category_optional_for_box_only_dicts():
    arrays = annotation_arrays([{"bbox": [0, 0, 2, 3], "bbox_mode": BoxMode.XYWH_ABS}], require_category=False)
    assert arrays.classes.tolist() == [-1]
    with pytest.raises(ValueError, match=r"dataset_dicts\[4\] annotation 0"):
        annotation_arrays([{"bbox": [0, 0, -2, 3]}], where="dataset_dicts[4]", require_category=False)


def test_ignore_regions():
    assert ignore_regions({"image_id": 1}).shape == (0, 4)
    assert ignore_regions({"image_id": 1, "ignore_regions": []}).shape == (0, 4)
    regions = ignore_regions({"image_id": 1, "ignore_regions": [[0, 0, 10, 5], [3, 3, 3, 3]]})
    assert regions.dtype == np.float64 and regions.tolist() == [[0, 0, 10, 5], [3, 3, 3, 3]]
    with pytest.raises(ValueError, match="image 7: an ignore region"):
        ignore_regions({"image_id": 7, "ignore_regions": [[5, 0, 1, 5]]})
