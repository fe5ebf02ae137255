"""Dataset-dict annotations -> box arrays: the one reader that training, evaluation and AutoAnchor share.

One rule for what an annotation is:
    - *crowd* (``is_crowd``): ``iscrowd`` or ``ignore`` is set. The box is not one object instance: training drops
      it from the targets (a YOLO head has no ignore label), AutoAnchor leaves it out of the box sizes (anchors fit
      the boxes the head is trained on), the evaluator scores it as COCO "crowd" (a detection on it is neither a
      true nor a false positive).
    - *difficult* (``is_difficult``): DOTA's ``difficult`` flag. The box is a real object: training and AutoAnchor
      keep it; the evaluator ignores it like a crowd (DOTA's protocol does not score difficult objects).

Boxes are validated once, here, for every annotation (crowd ones too): 4 finite numbers with a non-negative width
and height. Zero-area boxes are valid (what to do with them is the caller's choice).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from detectron2.structures import BoxMode

__all__ = ["AnnotationArrays", "annotation_arrays", "ignore_regions"]

@dataclass(frozen=True)
class AnnotationArrays:
    """The annotations of one image as columns (N annotations, in input order).

    Attributes:
        boxes_xyxy: [N, 4] float64 XYXY_ABS.
        boxes_xywh: [N, 4] float64 XYWH_ABS (each computed from the annotation's own mode: an XYWH_ABS bbox is kept
            exactly, with no round trip through XYXY).
        classes: [N] int64 ``category_id`` (-1 where it is absent and not required).
        is_crowd: [N] bool, ``iscrowd`` or ``ignore`` (see the module docstring).
        is_difficult: [N] bool, ``difficult``.
    """

    boxes_xyxy: np.ndarray
    boxes_xywh: np.ndarray
    classes: np.ndarray
    is_crowd: np.ndarray
    is_difficult: np.ndarray

    def __len__(self) -> int:
        return len(self.classes)

    def select(self, keep: np.ndarray) -> "AnnotationArrays":
        """The annotations where ``keep`` ([N] bool) is true."""
        return AnnotationArrays(self.boxes_xyxy[keep], self.boxes_xywh[keep], self.classes[keep],
                                self.is_crowd[keep], self.is_difficult[keep])

    def without_crowd(self) -> "AnnotationArrays":
        """The object instances: every annotation that is not crowd (difficult ones stay)."""
        return self.select(~self.is_crowd)


def _where_of(record: Mapping[str, Any]) -> str:
    if record.get("file_name"):
        return str(record["file_name"])
    return f"image {record.get('image_id')!r}"


def _bbox_rows(annotations: Sequence[Mapping[str, Any]], where: str) -> np.ndarray:
    """[N, 4] float64 of the ``bbox`` fields as written (one numpy call; per annotation only to name a bad one)."""
    try:
        raw = np.array([a["bbox"] for a in annotations], dtype=np.float64)
        if raw.shape == (len(annotations), 4):
            return raw
    except (KeyError, ValueError, TypeError):
        pass
    for k, annotation in enumerate(annotations):
        try:
            box = np.asarray(annotation["bbox"], dtype=np.float64)
        except (KeyError, ValueError, TypeError):
            box = None
        if box is None or box.shape != (4,):
            raise ValueError(f"{where} annotation {k}: 'bbox' is not 4 numbers")
    raise AssertionError("unreachable: some bbox failed the bulk conversion")


def annotation_arrays(
    record_or_annotations: Union[Mapping[str, Any], Sequence[Mapping[str, Any]]],
    *,
    where: Optional[str] = None,
    require_category: bool = True,
) -> AnnotationArrays:
    """Box arrays of a detectron2 dataset dict (its ``annotations``) or of a list of annotations.

    Args:
        record_or_annotations: a dataset dict, or its ``annotations`` list. Each annotation has ``bbox`` (4 numbers),
            optional ``bbox_mode`` (XYWH_ABS, the default, or XYXY_ABS), ``category_id``, ``iscrowd``, ``ignore``,
            ``difficult``.
        where: names the image in error messages (default: the record's ``file_name`` or ``image_id``).
        require_category: raise when an annotation has no ``category_id``; when False it reads as -1 (box-only
            dicts, e.g. for AutoAnchor).
    Returns:
        :class:`AnnotationArrays`; empty arrays of the right shapes when there are no annotations.
    Raises:
        ValueError naming ``where`` and the annotation's index when a bbox is not 4 finite numbers with
        non-negative width and height, its mode is another one, or a required ``category_id`` is missing.
    """
    if isinstance(record_or_annotations, Mapping):
        annotations = record_or_annotations.get("annotations") or []
        where = where if where is not None else _where_of(record_or_annotations)
    else:
        annotations = record_or_annotations
        where = where if where is not None else "annotations"
    n = len(annotations)
    if n == 0:
        empty_boxes = np.zeros((0, 4), dtype=np.float64)
        empty_flags = np.zeros(0, dtype=bool)
        return AnnotationArrays(empty_boxes, empty_boxes.copy(), np.zeros(0, dtype=np.int64), empty_flags,
                                empty_flags.copy())
    raw = _bbox_rows(annotations, where)
    modes = np.array([int(a.get("bbox_mode", BoxMode.XYWH_ABS)) for a in annotations])
    # The absolute 4-number modes (detectron2 cannot convert relative ones without the image size).
    is_xywh, is_xyxy = modes == int(BoxMode.XYWH_ABS), modes == int(BoxMode.XYXY_ABS)
    unsupported = np.flatnonzero(~(is_xywh | is_xyxy))
    if len(unsupported):
        k = int(unsupported[0])
        raise ValueError(f"{where} annotation {k}: bbox_mode {annotations[k].get('bbox_mode')!r} is not supported "
                         f"(XYWH_ABS or XYXY_ABS)")
    xywh, xyxy = raw.copy(), raw.copy()
    xyxy[is_xywh, 2:] = raw[is_xywh, :2] + raw[is_xywh, 2:]
    xywh[is_xyxy, 2:] = raw[is_xyxy, 2:] - raw[is_xyxy, :2]
    bad = np.flatnonzero(~np.isfinite(xywh).all(axis=1) | (xywh[:, 2:] < 0).any(axis=1))
    if len(bad):
        k = int(bad[0])
        raise ValueError(f"{where} annotation {k}: bbox {annotations[k]['bbox']!r} is not finite or has a negative "
                         f"width or height")
    if require_category:
        missing = [k for k, a in enumerate(annotations) if "category_id" not in a]
        if missing:
            raise ValueError(f"{where} annotation {missing[0]}: no 'category_id'")
    classes = np.array([int(a.get("category_id", -1)) for a in annotations], dtype=np.int64)
    is_crowd = np.array([bool(a.get("iscrowd", 0) or a.get("ignore", 0)) for a in annotations], dtype=bool)
    is_difficult = np.array([bool(a.get("difficult", 0)) for a in annotations], dtype=bool)
    return AnnotationArrays(xyxy, xywh, classes, is_crowd, is_difficult)


def ignore_regions(record: Mapping[str, Any], *, where: Optional[str] = None) -> np.ndarray:
    """[R, 4] float64 XYXY ignore regions of a dataset dict (VisDrone's ``ignore_regions``; [0, 4] when absent).

    Raises ValueError when a region is not [x1, y1, x2, y2] with x2 >= x1 and y2 >= y1.
    """
    regions = record.get("ignore_regions")
    regions = np.asarray([] if regions is None else regions, dtype=np.float64).reshape(-1, 4)
    if len(regions) and not (regions[:, 2:] >= regions[:, :2]).all():
        where = where if where is not None else _where_of(record)
        raise ValueError(f"{where}: an ignore region is not [x1, y1, x2, y2] with x2 >= x1, y2 >= y1")
    return regions
