"""Dataset readers on small fixtures written in the official formats (AI-TOD json, VisDrone txt, DOTA labelTxt,
YOLO txt), their error messages, registration, and the real KIT AIS cars folder (skipped when absent)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from sarl.data.datasets import (
    AITOD_CLASSES,
    DOTA_V1_CLASSES,
    DOTA_V2_CLASSES,
    KIT_AIS_CLASSES,
    VISDRONE_CLASSES,
    DatasetFormatError,
    DatasetNotFoundError,
    default_datasets_root,
    load_aerial_coco_json,
    load_visdrone,
    load_yolo_folder,
    parse_dota_labels,
    register_all_aerial,
)


@pytest.fixture
def restore_registration():
    """Tests that re-point the registered names put them back to the default root afterwards."""
    yield
    register_all_aerial(default_datasets_root())


def _write_image(path: Path, height: int, width: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((height, width, 3), 90, np.uint8))


# ------------------------------------------------------------------------------------------------ AI-TOD / COCO


def _aitod_json(tmp_path: Path, annotations, categories=None, images=None) -> Path:
    # json ids deliberately not in the official order: vehicle is 1, airplane 8.
    names_by_json_id = {1: "vehicle", 2: "ship", 3: "person", 4: "storage-tank", 5: "bridge", 6: "swimming-pool",
                        7: "wind-mill", 8: "airplane"}
    categories = categories or [{"id": i, "name": n} for i, n in names_by_json_id.items()]
    images = images or [{"id": 10, "file_name": "a.png", "width": 800, "height": 800},
                        {"id": 11, "file_name": "b.png", "width": 800, "height": 800}]
    for image in images:
        _write_image(tmp_path / "images" / image["file_name"], 8, 8)
    json_file = tmp_path / "small_test_v1_1.0.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return json_file


def test_aitod_json_maps_categories_by_official_name_order_and_clips(tmp_path, caplog):
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 1, "bbox": [10, 20, 6, 4], "area": 24, "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 8, "bbox": [795, 100, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 3, "image_id": 11, "category_id": 3, "bbox": [-5, -5, 3, 3], "area": 9, "iscrowd": 0},
        {"id": 4, "image_id": 11, "category_id": 2, "bbox": [300, 400, 12.5, 7.25], "area": 90.625, "iscrowd": 0},
    ]
    json_file = _aitod_json(tmp_path, annotations)
    with caplog.at_level(logging.INFO):
        dicts = load_aerial_coco_json(str(json_file), str(tmp_path / "images"), AITOD_CLASSES)
    by_id = {d["image_id"]: d for d in dicts}
    assert by_id[10]["file_name"] == str(tmp_path / "images" / "a.png")
    assert (by_id[10]["height"], by_id[10]["width"]) == (800, 800)
    first, clipped = by_id[10]["annotations"]
    assert first["category_id"] == AITOD_CLASSES.index("vehicle") == 5
    assert first["bbox"] == [10.0, 20.0, 6.0, 4.0] and first["bbox_mode"] == BoxMode.XYWH_ABS
    assert first["area"] == 24 and first["iscrowd"] == 0
    assert clipped["category_id"] == AITOD_CLASSES.index("airplane") == 0
    assert clipped["bbox"] == [795.0, 100.0, 5.0, 10.0] and clipped["area"] == 50.0
    # The box wholly outside is dropped, with a count in the log; the other one of image 11 stays.
    assert [a["category_id"] for a in by_id[11]["annotations"]] == [AITOD_CLASSES.index("ship")]
    assert "dropped 1 boxes of zero area" in caplog.text


@pytest.mark.parametrize(
    "bad_annotation, message",
    [
        ({"id": 7, "image_id": 10, "category_id": 1, "bbox": [1, 2, -3, 4]}, "negative width"),
        ({"id": 7, "image_id": 10, "category_id": 99, "bbox": [1, 2, 3, 4]}, "unknown category_id 99"),
        ({"id": 7, "image_id": 12, "category_id": 1, "bbox": [1, 2, 3, 4]}, "image_id 12 is not in 'images'"),
        ({"id": 7, "image_id": 10, "category_id": 1, "bbox": [1, 2, 3]}, "is not [x, y, w, h]"),
    ],
)
def test_aitod_json_errors_name_file_and_record(tmp_path, bad_annotation, message):
    good = {"id": 1, "image_id": 10, "category_id": 1, "bbox": [10, 20, 6, 4]}
    json_file = _aitod_json(tmp_path, [good, bad_annotation])
    with pytest.raises(DatasetFormatError) as error:
        load_aerial_coco_json(str(json_file), str(tmp_path / "images"), AITOD_CLASSES)
    assert str(json_file) in str(error.value) and "annotations[1], id 7" in str(error.value)
    assert message in str(error.value)


def test_aitod_json_missing_image_and_unknown_class_name(tmp_path):
    json_file = _aitod_json(tmp_path, [])
    os.remove(tmp_path / "images" / "b.png")
    with pytest.raises(DatasetFormatError, match=r"images\[1\].*b\.png does not exist"):
        load_aerial_coco_json(str(json_file), str(tmp_path / "images"), AITOD_CLASSES)
    json_file = _aitod_json(tmp_path, [], categories=[{"id": 1, "name": "tractor"}])
    with pytest.raises(DatasetFormatError, match=r"categories\[0\].*unknown category 'tractor'"):
        load_aerial_coco_json(str(json_file), str(tmp_path / "images"), AITOD_CLASSES)


def test_registered_aitod_names_are_lazy_and_name_missing_data(tmp_path, restore_registration):
    register_all_aerial(str(tmp_path))
    metadata = MetadataCatalog.get("aitod_v1_test")
    assert metadata.thing_classes == list(AITOD_CLASSES) and metadata.evaluator_type == "aitod"
    with pytest.raises(DatasetNotFoundError) as error:
        DatasetCatalog.get("aitod_v1_test")
    assert str(tmp_path / "AI-TOD" / "annotations" / "small_test_v1_1.0.json") in str(error.value)
    assert "AI-TOD" in str(error.value) and "github.com/jwwangchn/AI-TOD" in str(error.value)

    # The official layout, with a v2 test json without annotations (labels withheld).
    root = tmp_path / "AI-TOD-v2"
    _write_image(root / "test" / "images" / "x.png", 8, 8)
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "small_test_v2_2.0.json").write_text(json.dumps({
        "images": [{"id": 3, "file_name": "x.png", "width": 800, "height": 800}],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(reversed(AITOD_CLASSES))],
    }))
    dicts = DatasetCatalog.get("aitod_v2_test")
    assert len(dicts) == 1 and dicts[0]["annotations"] == []
    mapping = MetadataCatalog.get("aitod_v2_test").thing_dataset_id_to_contiguous_id
    assert mapping == {i + 1: len(AITOD_CLASSES) - 1 - i for i in range(len(AITOD_CLASSES))}


# ------------------------------------------------------------------------------------------------ VisDrone


def _visdrone_split(tmp_path: Path, rows_by_image: dict, size=(60, 80)) -> Path:
    split = tmp_path / "VisDrone2019-DET-val"
    (split / "annotations").mkdir(parents=True)
    for stem, rows in rows_by_image.items():
        _write_image(split / "images" / f"{stem}.jpg", *size)
        (split / "annotations" / f"{stem}.txt").write_text("\n".join(rows) + "\n")
    return split


def test_visdrone_reader_ignored_regions_others_and_clipping(tmp_path, restore_registration):
    rows = [
        "10,12,6,4,1,4,0,1",  # car
        "70,50,20,20,1,1,0,0,",  # pedestrian partly outside an 80x60 image, trailing comma
        "0,0,30,20,0,0,0,0",  # ignored region
        "40,30,8,8,1,11,0,0",  # others: an ignore region too
        "50,5,4,4,0,4,0,0",  # score 0: ignored in evaluation, so an ignore region as well
        "",
    ]
    _visdrone_split(tmp_path, {"0000001_00000_d_0000001": rows, "0000002_00000_d_0000002": ["5,5,3,3,1,10,0,0"]})
    register_all_aerial(str(tmp_path))
    dicts = DatasetCatalog.get("visdrone2019_det_val")
    assert [d["image_id"] for d in dicts] == [0, 1]
    first = dicts[0]
    assert (first["height"], first["width"]) == (60, 80)
    assert [a["category_id"] for a in first["annotations"]] == [VISDRONE_CLASSES.index("car"),
                                                                VISDRONE_CLASSES.index("pedestrian")]
    assert first["annotations"][0]["bbox"] == [10.0, 12.0, 6.0, 4.0]
    assert first["annotations"][1]["bbox"] == [70.0, 50.0, 10.0, 10.0]
    assert first["ignore_regions"] == [[0.0, 0.0, 30.0, 20.0], [40.0, 30.0, 48.0, 38.0], [50.0, 5.0, 54.0, 9.0]]
    assert dicts[1]["annotations"][0]["category_id"] == VISDRONE_CLASSES.index("motor")
    assert dicts[1]["ignore_regions"] == []
    metadata = MetadataCatalog.get("visdrone2019_det_val")
    assert metadata.thing_classes == list(VISDRONE_CLASSES) and metadata.dataset_format == "visdrone"


@pytest.mark.parametrize(
    "row, message",
    [
        ("10,12,6,x4,1,4,0,1", "cannot parse height 'x4'"),
        ("10,12,-6,4,1,4,0,1", "negative width"),
        ("10,12,6,4,1,12,0,1", "unknown category '12'"),
        ("10,12,6", "expected 'left,top,width,height"),
    ],
)
def test_visdrone_malformed_row_names_file_and_line(tmp_path, row, message):
    split = _visdrone_split(tmp_path, {"img": ["1,1,2,2,1,1,0,0", row]})
    with pytest.raises(DatasetFormatError) as error:
        load_visdrone(str(split))
    assert f"{split / 'annotations' / 'img.txt'}:2" in str(error.value) and message in str(error.value)


def test_visdrone_image_without_annotation_file_is_an_error(tmp_path):
    split = _visdrone_split(tmp_path, {"img": ["1,1,2,2,1,1,0,0"]})
    _write_image(split / "images" / "lonely.jpg", 10, 10)
    with pytest.raises(DatasetFormatError, match=r"lonely\.jpg: no annotation file"):
        load_visdrone(str(split))


# ------------------------------------------------------------------------------------------------ DOTA labels


def test_dota_labels_skip_headers_and_keep_difficult(tmp_path):
    label = tmp_path / "P0001.txt"
    label.write_text(
        "imagesource:GoogleEarth\n"
        "gsd:0.146343590398\n"
        "10 20 30 22 29 40 9 38 small-vehicle 0\n"
        "100.5 100 140 100 140 120 100.5 120 Plane 1\n"  # case does not matter
        "1 1 5 1 5 5 1 5 harbor\n"  # 9 fields: difficult 0
    )
    objects = parse_dota_labels(str(label), DOTA_V1_CLASSES)
    assert [o.category for o in objects] == ["small-vehicle", "plane", "harbor"]
    assert [o.difficult for o in objects] == [0, 1, 0]
    assert [o.line_number for o in objects] == [3, 4, 5]
    assert objects[0].horizontal_box() == [9.0, 20.0, 30.0, 40.0]
    assert objects[1].horizontal_box() == [100.5, 100.0, 140.0, 120.0]


@pytest.mark.parametrize(
    "row, message",
    [
        ("10 20 30 22 29 40 9 38 airport 0", "unknown category 'airport'"),  # a v2.0 class in v1.0
        ("10 20 30 22 29 forty 9 38 plane 0", "cannot parse coordinate 6"),
        ("10 20 30 22 29 40 plane 0", "expected 'x1 y1 x2 y2"),
        ("10 20 30 22 29 40 9 38 plane 7", "difficult flag '7'"),
    ],
)
def test_dota_malformed_row_names_file_and_line(tmp_path, row, message):
    label = tmp_path / "P0002.txt"
    label.write_text("imagesource:GoogleEarth\ngsd:null\n1 1 5 1 5 5 1 5 plane 0\n" + row + "\n")
    with pytest.raises(DatasetFormatError) as error:
        parse_dota_labels(str(label), DOTA_V1_CLASSES)
    assert f"{label}:4" in str(error.value) and message in str(error.value)
    if "airport" in row:  # ... which DOTA-v2.0 knows
        assert [o.category for o in parse_dota_labels(str(label), DOTA_V2_CLASSES)] == ["plane", "airport"]


# ------------------------------------------------------------------------------------------------ YOLO txt / KIT AIS


def test_yolo_folder_reader_clips_and_reports_bad_rows(tmp_path, caplog):
    _write_image(tmp_path / "f1.png", 50, 100)
    _write_image(tmp_path / "f2.png", 50, 100)  # no label file: a background image
    (tmp_path / "f1.txt").write_text("0 0.5 0.5 0.2 0.4\n2 0.99 0.1 0.04 0.2\n")
    with caplog.at_level(logging.INFO):
        dicts = load_yolo_folder(str(tmp_path), KIT_AIS_CLASSES)
    assert [len(d["annotations"]) for d in dicts] == [2, 0]
    np.testing.assert_allclose(dicts[0]["annotations"][0]["bbox"], [40, 15, 20, 20])
    np.testing.assert_allclose(dicts[0]["annotations"][1]["bbox"], [97, 0, 3, 10])  # clipped right and top
    assert "1 images have no label file" in caplog.text
    (tmp_path / "f1.txt").write_text("0 0.5 0.5 0.2 0.4\n7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetFormatError, match=r"f1\.txt:2: unknown class '7'"):
        load_yolo_folder(str(tmp_path), KIT_AIS_CLASSES)


def test_kit_ais_cars_yolo_txt_matches_its_coco_json(kit_ais_dir):
    names = (kit_ais_dir / "aerial.names").read_text().split()
    assert tuple(names) == KIT_AIS_CLASSES
    from_txt = load_yolo_folder(str(kit_ais_dir), names)
    from_json = load_aerial_coco_json(
        str(kit_ais_dir / "instances_kit_ais_cars.json"), str(kit_ais_dir), names
    )
    assert len(from_txt) == len(from_json) == 33
    json_by_file = {d["file_name"]: d for d in from_json}
    total = 0
    for record in from_txt:
        reference = json_by_file[record["file_name"]]
        assert (record["height"], record["width"]) == (reference["height"], reference["width"])
        boxes = np.array([a["bbox"] for a in record["annotations"]])
        expected = np.array([a["bbox"] for a in reference["annotations"]])
        assert boxes.shape == expected.shape
        np.testing.assert_allclose(boxes, expected, atol=0.02)  # the json rounds to 0.01 px
        assert [a["category_id"] for a in record["annotations"]] == [a["category_id"] for a in reference["annotations"]]
        assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 0] + boxes[:, 2] <= record["width"] + 1e-9)
        total += len(boxes)
    assert total == 1321


def test_register_aerial_coco_any_json_takes_classes_from_it(tmp_path):
    from sarl.data.datasets import register_aerial_coco

    categories = [{"id": 5, "name": "truck"}, {"id": 2, "name": "car"}]
    json_file = _aitod_json(tmp_path, [{"id": 1, "image_id": 10, "category_id": 5, "bbox": [1, 2, 3, 4]}],
                            categories=categories)
    name = "test_any_aerial_coco"
    register_aerial_coco(name, str(json_file), str(tmp_path / "images"))
    register_aerial_coco(name, str(json_file), str(tmp_path / "images"))  # registering again re-points
    try:
        dicts = DatasetCatalog.get(name)
        metadata = MetadataCatalog.get(name)
        assert metadata.thing_classes == ["car", "truck"]  # json id order
        assert metadata.thing_dataset_id_to_contiguous_id == {2: 0, 5: 1}
        assert dicts[0]["annotations"][0]["category_id"] == 1
        assert metadata.json_file == str(json_file) and metadata.evaluator_type == "aitod"
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
