"""YOLO-style augmentations as plain functions on numpy images and XYXY boxes.

Conventions (every function):
    image:   HxWx3 uint8, BGR (OpenCV order; the mapper converts to cfg.INPUT.FORMAT at the very end).
    boxes:   [N, 4] float64 XYXY in pixels of ``image``.
    classes: [N] int64.
    rng:     ``numpy.random.Generator`` (the caller owns seeding, so results repeat).
Geometric transforms return boxes clipped to the output image; boxes are removed only by
:func:`filter_boxes` (side < ``min_size`` or mostly cut off by the border), never capped in number.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

PAD_VALUE = 114  # grey fill of letterbox / mosaic / affine borders (YOLOX, YOLOv5)
# Bilinear everywhere (as YOLOX), train and test alike: INTER_AREA keeps thin detail a bit better when shrinking
# but costs ~5x more time per resize, and train/test must resize the same way.
INTERPOLATION = cv2.INTER_LINEAR


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Clip [N, 4] XYXY boxes to ``[0, width] x [0, height]`` (copy)."""
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0.0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0.0, height)
    return out


def filter_boxes(
    boxes: np.ndarray,
    classes: np.ndarray,
    min_size: float,
    unclipped_area: Optional[np.ndarray] = None,
    min_visible: float = 0.0,
) -> Tuple[np.ndarray, np.ndarray]:
    """Keep boxes whose both sides are >= ``min_size`` px and, when ``unclipped_area`` ([N], the area before
    clipping to the image) is given, whose visible fraction is >= ``min_visible``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    wh = boxes[:, 2:] - boxes[:, :2]
    keep = (wh[:, 0] >= min_size) & (wh[:, 1] >= min_size)
    if unclipped_area is not None and min_visible > 0:
        keep &= wh[:, 0] * wh[:, 1] >= min_visible * np.asarray(unclipped_area, dtype=np.float64)
    return boxes[keep], np.asarray(classes)[keep]


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)


# ----------------------------------------------------------------------------------------------------------------
# Letterbox
# ----------------------------------------------------------------------------------------------------------------
def letterbox(image: np.ndarray, size: int, pad_value: int = PAD_VALUE) -> Tuple[np.ndarray, float, float, float]:
    """Resize keeping the aspect ratio so the long side is ``size``, and pad to ``size x size`` (centred).

    Returns ``(out [size, size, 3], scale, pad_x, pad_y)``: a point maps as ``x' = x * scale + pad_x``
    (:func:`letterbox_boxes`), and back with :func:`unletterbox_boxes`.
    """
    height, width = image.shape[:2]
    scale, pad_x, pad_y, new_w, new_h = letterbox_params(height, width, size)
    out = np.full((size, size, 3), pad_value, dtype=np.uint8)
    if (new_w, new_h) != (width, height):
        image = cv2.resize(image, (new_w, new_h), interpolation=INTERPOLATION)
    out[int(pad_y): int(pad_y) + new_h, int(pad_x): int(pad_x) + new_w] = image.reshape(new_h, new_w, -1)[..., :3]
    return out, float(scale), pad_x, pad_y


def letterbox_params(height: int, width: int, size: int) -> Tuple[float, float, float, int, int]:
    """``(scale, pad_x, pad_y, new_w, new_h)`` of :func:`letterbox` for a ``height x width`` image."""
    scale = min(size / height, size / width)
    new_w = max(1, min(size, int(round(width * scale))))
    new_h = max(1, min(size, int(round(height * scale))))
    # Integer offsets so the resized image sits on whole pixels.
    return float(scale), float((size - new_w) // 2), float((size - new_h) // 2), new_w, new_h


def letterbox_boxes(boxes: np.ndarray, scale: float, pad_x: float, pad_y: float) -> np.ndarray:
    """Original-image XYXY boxes -> letterboxed-image boxes."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return boxes * scale + np.array([pad_x, pad_y, pad_x, pad_y])


def unletterbox_boxes(boxes: np.ndarray, scale: float, pad_x: float, pad_y: float) -> np.ndarray:
    """Letterboxed-image XYXY boxes -> original-image boxes (inverse of :func:`letterbox_boxes`)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (boxes - np.array([pad_x, pad_y, pad_x, pad_y])) / scale


# ----------------------------------------------------------------------------------------------------------------
# Native-resolution crop (large frames)
# ----------------------------------------------------------------------------------------------------------------
def crop_window(
    width: int, height: int, size: int, boxes: np.ndarray, rng: np.random.Generator, object_prob: float
) -> Tuple[int, int, int, int]:
    """A ``min(size, width) x min(size, height)`` window ``(x0, y0, x1, y1)`` of a ``width x height`` image.

    With probability ``object_prob`` (and when there are boxes) the window holds the centre of a random box at
    a uniformly random place inside it (clamped to the image), so crops of sparse scenes still show objects;
    otherwise its place is uniform over the image.
    """
    crop_w, crop_h = min(size, width), min(size, height)
    max_x0, max_y0 = width - crop_w, height - crop_h
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) and rng.uniform() < object_prob:
        box = boxes[int(rng.integers(len(boxes)))]
        cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
        x0 = int(np.clip(np.floor(cx - rng.uniform(0.0, crop_w)), 0, max_x0))
        y0 = int(np.clip(np.floor(cy - rng.uniform(0.0, crop_h)), 0, max_y0))
    else:
        x0, y0 = int(rng.integers(0, max_x0 + 1)), int(rng.integers(0, max_y0 + 1))
    return x0, y0, x0 + crop_w, y0 + crop_h


def native_crop(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    size: int,
    rng: np.random.Generator,
    *,
    object_prob: float = 0.8,
    min_size: float = 1.0,
    min_visible: float = 0.1,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A window of at most ``size x size`` pixels cut from ``image`` at its native resolution (objects keep their
    pixel size), placed by :func:`crop_window`. Boxes cut by the window are clipped and kept when both sides are
    >= ``min_size`` and at least ``min_visible`` of their area is inside (the same rule as the affine).
    An image no larger than ``size`` either way is returned unchanged."""
    height, width = image.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if width <= size and height <= size:
        return image, boxes, np.asarray(classes)
    x0, y0, x1, y1 = crop_window(width, height, size, boxes, rng, object_prob)
    moved = boxes - np.array([x0, y0, x0, y0], dtype=np.float64)
    clipped = clip_boxes(moved, x1 - x0, y1 - y0)
    kept_boxes, kept_classes = filter_boxes(clipped, classes, min_size, _area(moved), min_visible)
    return np.ascontiguousarray(image[y0:y1, x0:x1]), kept_boxes, kept_classes


# ----------------------------------------------------------------------------------------------------------------
# Photometric and flip
# ----------------------------------------------------------------------------------------------------------------
def augment_hsv(image: np.ndarray, gains: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Random hue / saturation / value gains (each factor in ``1 +- gain``), by lookup tables (fast)."""
    factors = rng.uniform(-1.0, 1.0, 3) * np.asarray(gains, dtype=np.float64) + 1.0
    hue, sat, val = cv2.split(cv2.cvtColor(image, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_hue = ((x * factors[0]) % 180).astype(np.uint8)  # OpenCV hue is 0..179
    lut_sat = np.clip(x * factors[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * factors[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def horizontal_flip(image: np.ndarray, boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mirror left-right."""
    width = image.shape[1]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
    return cv2.flip(image, 1), boxes  # cv2.flip: a contiguous copy, several times faster than numpy's


# ----------------------------------------------------------------------------------------------------------------
# Random affine (rotation, scale, shear, translation)
# ----------------------------------------------------------------------------------------------------------------
def affine_matrix(
    in_size: Tuple[int, int],
    out_size: Tuple[int, int],
    rng: np.random.Generator,
    degrees: float,
    translate: float,
    scale_range: Sequence[float],
    shear: float,
) -> Tuple[np.ndarray, float]:
    """3x3 matrix: centre of the input -> origin, rotate+scale, shear, -> a point near the output centre.

    ``in_size``/``out_size`` are (width, height). Returns ``(M, scale)``.
    """
    in_w, in_h = in_size
    out_w, out_h = out_size
    centre = np.eye(3)
    centre[0, 2], centre[1, 2] = -in_w / 2, -in_h / 2
    angle = rng.uniform(-degrees, degrees)
    scale = rng.uniform(scale_range[0], scale_range[1])
    rotation = np.eye(3)
    rotation[:2] = cv2.getRotationMatrix2D(angle=angle, center=(0, 0), scale=scale)
    shear_m = np.eye(3)
    shear_m[0, 1] = math.tan(math.radians(rng.uniform(-shear, shear)))
    shear_m[1, 0] = math.tan(math.radians(rng.uniform(-shear, shear)))
    translation = np.eye(3)
    translation[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_w
    translation[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_h
    return translation @ shear_m @ rotation @ centre, float(scale)


def transform_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Axis-aligned bounds of the four transformed corners of each XYXY box (not clipped)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return boxes.copy()
    corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 2)  # 4 corners per box
    corners = np.concatenate([corners, np.ones((len(corners), 1))], axis=1) @ matrix[:2].T
    corners = corners.reshape(-1, 4, 2)
    return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)


def random_affine(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    out_size: int,
    rng: np.random.Generator,
    *,
    degrees: float = 10.0,
    translate: float = 0.1,
    scale_range: Sequence[float] = (0.1, 2.0),
    shear: float = 2.0,
    min_size: float = 1.0,
    min_visible: float = 0.1,
    pad_value: int = PAD_VALUE,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp ``image`` to ``out_size x out_size`` with a random affine; boxes follow, are clipped and filtered."""
    matrix, _ = affine_matrix((image.shape[1], image.shape[0]), (out_size, out_size), rng,
                              degrees, translate, scale_range, shear)
    warped = cv2.warpAffine(image, matrix[:2], dsize=(out_size, out_size), borderValue=(pad_value,) * 3)
    moved = transform_boxes(boxes, matrix)
    clipped = clip_boxes(moved, out_size, out_size)
    boxes, classes = filter_boxes(clipped, classes, min_size, _area(moved), min_visible)
    return warped, boxes, classes


# ----------------------------------------------------------------------------------------------------------------
# Mosaic and mixup
# ----------------------------------------------------------------------------------------------------------------
def mosaic(
    images: Sequence[np.ndarray],
    boxes_list: Sequence[np.ndarray],
    classes_list: Sequence[np.ndarray],
    size: int,
    rng: np.random.Generator,
    pad_value: int = PAD_VALUE,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four images (each resized so its long side is ``size``) around a random centre of a ``2size x 2size``
    canvas: top-left, top-right, bottom-left, bottom-right. Boxes are clipped to each image's visible part
    (not filtered: :func:`random_affine` follows and filters)."""
    if len(images) != 4:
        raise ValueError(f"mosaic needs 4 images, got {len(images)}")
    canvas = np.full((2 * size, 2 * size, 3), pad_value, dtype=np.uint8)
    xc = int(rng.uniform(0.5 * size, 1.5 * size))
    yc = int(rng.uniform(0.5 * size, 1.5 * size))
    all_boxes: List[np.ndarray] = []
    all_classes: List[np.ndarray] = []
    for index, (image, boxes, classes) in enumerate(zip(images, boxes_list, classes_list)):
        height, width = image.shape[:2]
        scale = min(size / height, size / width)
        w, h = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
        image = cv2.resize(image, (w, h), interpolation=INTERPOLATION)
        # Destination rectangle on the canvas, and the part of the image that lands in it.
        if index == 0:
            x1, y1, x2, y2 = max(xc - w, 0), max(yc - h, 0), xc, yc
            sx1, sy1 = w - (x2 - x1), h - (y2 - y1)
        elif index == 1:
            x1, y1, x2, y2 = xc, max(yc - h, 0), min(xc + w, 2 * size), yc
            sx1, sy1 = 0, h - (y2 - y1)
        elif index == 2:
            x1, y1, x2, y2 = max(xc - w, 0), yc, xc, min(yc + h, 2 * size)
            sx1, sy1 = w - (x2 - x1), 0
        else:
            x1, y1, x2, y2 = xc, yc, min(xc + w, 2 * size), min(yc + h, 2 * size)
            sx1, sy1 = 0, 0
        canvas[y1:y2, x1:x2] = image[sy1: sy1 + (y2 - y1), sx1: sx1 + (x2 - x1)]
        shift = np.array([x1 - sx1, y1 - sy1, x1 - sx1, y1 - sy1], dtype=np.float64)
        moved = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale + shift
        # Clip to this image's visible rectangle on the canvas.
        moved[:, [0, 2]] = moved[:, [0, 2]].clip(x1, x2)
        moved[:, [1, 3]] = moved[:, [1, 3]].clip(y1, y2)
        all_boxes.append(moved)
        all_classes.append(np.asarray(classes, dtype=np.int64).reshape(-1))
    return canvas, np.concatenate(all_boxes, axis=0), np.concatenate(all_classes, axis=0)


def mixup(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    other_image: np.ndarray,
    other_boxes: np.ndarray,
    other_classes: np.ndarray,
    rng: np.random.Generator,
    *,
    scale_range: Sequence[float] = (0.5, 1.5),
    flip_prob: float = 0.5,
    min_size: float = 1.0,
    min_visible: float = 0.1,
    pad_value: int = PAD_VALUE,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """YOLOX-style mixup: the other image is resized (long side = output side, times a jitter from
    ``scale_range``), maybe flipped, randomly cropped/padded to the output size, and blended 50/50.
    Labels of both images are kept (the other's clipped and filtered)."""
    out_h, out_w = image.shape[:2]
    height, width = other_image.shape[:2]
    scale = min(out_h / height, out_w / width) * rng.uniform(scale_range[0], scale_range[1])
    w, h = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
    resized = cv2.resize(other_image, (w, h), interpolation=INTERPOLATION)
    moved = np.asarray(other_boxes, dtype=np.float64).reshape(-1, 4) * scale
    if rng.uniform() < flip_prob:
        resized, moved = horizontal_flip(resized, moved)
    canvas = np.full((max(h, out_h), max(w, out_w), 3), pad_value, dtype=np.uint8)
    canvas[:h, :w] = resized
    offset_x = int(rng.integers(0, canvas.shape[1] - out_w + 1))
    offset_y = int(rng.integers(0, canvas.shape[0] - out_h + 1))
    crop = canvas[offset_y: offset_y + out_h, offset_x: offset_x + out_w]
    moved -= np.array([offset_x, offset_y, offset_x, offset_y], dtype=np.float64)
    clipped = clip_boxes(moved, out_w, out_h)
    kept_boxes, kept_classes = filter_boxes(clipped, other_classes, min_size, _area(moved), min_visible)
    blended = cv2.addWeighted(image, 0.5, crop, 0.5, 0.0)
    return (
        blended,
        np.concatenate([np.asarray(boxes, dtype=np.float64).reshape(-1, 4), kept_boxes], axis=0),
        np.concatenate([np.asarray(classes, dtype=np.int64).reshape(-1), kept_classes.astype(np.int64)], axis=0),
    )
