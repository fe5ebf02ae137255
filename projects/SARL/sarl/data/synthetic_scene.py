"""Drawing of the synthetic aerial scenes (the demo dataset of ``sarl.data.synthetic``).

:func:`render_scene` draws, from a random generator, an aerial-looking scene (textured ground from multi-octave
noise, roads with lane marks, water bodies, a common sun direction for shadows, blur and sensor noise) with objects
of four classes of distinct shape and colour:

    vehicle       small box (aspect ~2), saturated or white/grey paint, dark windscreen; often on roads, in rows
    ship          pointed hull (aspect ~3), white/light, on water when the scene has water
    storage-tank  light disc with a dark rim and a centre mark
    airplane      cross-shaped (fuselage, wings, tail), light grey

Object sizes (square root of the box area) follow a log-normal close to AI-TOD's: most between 2 and 32 px, mean
near 12.8 px (``tests/test_synthetic.py`` checks it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import cv2
import numpy as np

__all__ = ["SYNTHETIC_CLASSES", "render_scene"]

SYNTHETIC_CLASSES = ("vehicle", "ship", "storage-tank", "airplane")
_CLASS_FREQUENCY = np.array([0.55, 0.17, 0.15, 0.13])
_CLASS_CUMULATIVE = np.cumsum(_CLASS_FREQUENCY)[:-1]
# Median object size (sqrt of box area, px) per class; one log-normal spread. Tuned so that the mean size over all
# objects is ~12.8 px and ~97% lie in [2, 32] px, like AI-TOD.
_CLASS_MEDIAN_SIZE = np.array([7.8, 10.8, 10.4, 14.6])
_SIZE_SIGMA = 0.45
_SIZE_RANGE = (2.0, 48.0)

# BGR colours.
_GROUND_PALETTES = {
    "grass": ((60, 110, 70), (40, 90, 95)),
    "soil": ((80, 115, 140), (60, 95, 120)),
    "urban": ((120, 125, 130), (95, 100, 105)),
    "desert": ((130, 170, 195), (110, 150, 175)),
}
_VEHICLE_COLOURS = ((235, 235, 235), (40, 40, 200), (200, 80, 30), (30, 200, 230), (180, 180, 185), (20, 20, 25))
_WATER_COLOUR = (90, 65, 35)


@dataclass
class _Object:
    class_id: int
    parts: List[Tuple[np.ndarray, Tuple[int, int, int]]]  # polygons [K, 2] (float px) with their colours
    outline: np.ndarray  # [K, 2] the silhouette (box and shadow)
    disc: Tuple[float, float, float] | None = None  # storage tanks: (cx, cy, radius)

    def box_xyxy(self) -> np.ndarray:
        return np.concatenate([self.outline.min(axis=0), self.outline.max(axis=0)])


# ----------------------------------------------------------------------------------------------- scene layers


def _noise(rng: np.random.Generator, size: int, cells: Tuple[int, ...], weights: Tuple[float, ...]) -> np.ndarray:
    """Smooth multi-octave value noise in [0, 1], [size, size] float32."""
    field = np.zeros((size, size), np.float32)
    for count, weight in zip(cells, weights):
        grid = rng.random((count + 1, count + 1), dtype=np.float32)
        field += weight * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


def _ground(rng: np.random.Generator, size: int) -> np.ndarray:
    names = list(_GROUND_PALETTES)
    colour_a, colour_b = (np.array(c, np.float32) for c in _GROUND_PALETTES[names[rng.integers(len(names))]])
    mix = _noise(rng, size, (3, 7, 15), (0.6, 0.3, 0.1))[..., None]
    texture = _noise(rng, size, (size // 8, size // 3), (0.5, 0.5))[..., None]
    image = colour_a + (colour_b - colour_a) * mix + (texture - 0.5) * np.float32(28.0)
    # Field patches: a few flat-coloured quadrilaterals, as in farmland / parking areas.
    for _ in range(rng.integers(0, 4)):
        centre = rng.uniform(0, size, 2)
        half = rng.uniform(size * 0.08, size * 0.25, 2)
        angle = rng.uniform(0, math.pi)
        corners = _rotate(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float32) * half, angle) + centre
        tint = (rng.uniform(-14, 14) + rng.uniform(-5, 5, 3)).astype(np.float32)
        x1, y1 = np.clip(np.floor(corners.min(axis=0)), 0, size).astype(int)
        x2, y2 = np.clip(np.ceil(corners.max(axis=0)) + 1, 0, size).astype(int)
        if x2 <= x1 or y2 <= y1:
            continue
        mask = np.zeros((y2 - y1, x2 - x1), np.uint8)
        cv2.fillPoly(mask, [np.round(corners - [x1, y1]).astype(np.int32)], 1)
        image[y1:y2, x1:x2][mask.astype(bool)] += tint
    return image


def _water(rng: np.random.Generator, size: int) -> np.ndarray:
    """Boolean mask of a water body (lake/river blob) covering roughly 10-35% of the image."""
    field = _noise(rng, size, (2, 4), (0.7, 0.3))
    threshold = np.quantile(field, 1.0 - rng.uniform(0.1, 0.35))
    return field >= threshold


def _roads(rng: np.random.Generator, image: np.ndarray) -> List[Tuple[np.ndarray, np.ndarray, float]]:
    """Draw 0-3 straight roads; returns (start, direction, half width) of each for vehicle placement."""
    size = image.shape[0]
    roads = []
    for _ in range(rng.integers(0, 4)):
        centre = rng.uniform(size * 0.1, size * 0.9, 2)
        angle = rng.uniform(0, math.pi)
        direction = np.array([math.cos(angle), math.sin(angle)])
        width = float(rng.uniform(7, 16))
        p0, p1 = centre - direction * size * 1.5, centre + direction * size * 1.5
        grey = float(rng.uniform(55, 95))
        cv2.line(image, tuple(np.round(p0).astype(int)), tuple(np.round(p1).astype(int)), (grey, grey, grey + 3),
                 int(round(width)), cv2.LINE_AA)
        if width > 10:  # dashed centre line
            for t in np.arange(-size * 1.5, size * 1.5, 12.0):
                a, b = centre + direction * t, centre + direction * (t + 5)
                cv2.line(image, tuple(np.round(a).astype(int)), tuple(np.round(b).astype(int)), (200, 200, 200), 1,
                         cv2.LINE_AA)
        roads.append((centre, direction, width / 2))
    return roads


# ----------------------------------------------------------------------------------------------- objects


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]], np.float32)


def _jitter_colour(rng: np.random.Generator, colour: Tuple[int, ...], amount: float = 18, grey: bool = False) -> Tuple[int, int, int]:
    """Random shade of ``colour``; ``grey`` shifts all channels alike (keeps white/grey objects neutral)."""
    shifts = np.full(3, rng.uniform(-amount, amount)) if grey else rng.uniform(-amount, amount, 3)
    return tuple(int(np.clip(v + d, 0, 255)) for v, d in zip(colour, shifts))


def _rect(length: float, width: float, offset_x: float = 0.0) -> np.ndarray:
    return np.array(
        [[-length / 2 + offset_x, -width / 2], [length / 2 + offset_x, -width / 2],
         [length / 2 + offset_x, width / 2], [-length / 2 + offset_x, width / 2]], np.float32
    )


def _make_object(rng: np.random.Generator, class_id: int, size: float, centre: np.ndarray, angle: float) -> _Object:
    """Geometry and colours of one object whose silhouette has area ~ size^2 (before rotation)."""
    name = SYNTHETIC_CLASSES[class_id]
    if name == "vehicle":
        aspect = rng.uniform(1.7, 2.4)
        length, width = size * math.sqrt(aspect), size / math.sqrt(aspect)
        body = _rect(length, width)
        colour = _jitter_colour(rng, _VEHICLE_COLOURS[rng.integers(len(_VEHICLE_COLOURS))])
        parts = [(body, colour)]
        if size >= 5:
            dark = tuple(int(v * 0.35) for v in colour)
            parts.append((_rect(length * 0.18, width * 0.8, offset_x=length * 0.18), dark))
        outline = body
    elif name == "ship":
        aspect = rng.uniform(2.6, 3.6)
        length, width = size * math.sqrt(aspect), size / math.sqrt(aspect)
        hull = np.array(
            [[-length / 2, -width / 2], [length * 0.25, -width / 2], [length / 2, 0],
             [length * 0.25, width / 2], [-length / 2, width / 2]], np.float32
        )
        colour = _jitter_colour(rng, (225, 225, 220), 25, grey=True)
        deck = _rect(length * 0.3, width * 0.45, offset_x=-length * 0.1)
        parts = [(hull, colour), (deck, tuple(int(v * 0.6) for v in colour))]
        outline = hull
    elif name == "storage-tank":
        radius = size / 2
        angles = np.linspace(0, 2 * math.pi, 16, endpoint=False)
        outline = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32) * radius
        colour = _jitter_colour(rng, (215, 215, 210), 20, grey=True)
        parts = [(outline, colour)]
        obj = _Object(class_id, [], outline + centre, disc=(float(centre[0]), float(centre[1]), radius))
        obj.parts = [(outline + centre, colour)]
        return obj
    else:  # airplane: fuselage + wings + tail; the span is about the length
        length = size * 1.25
        fuselage = _rect(length, length * 0.14)
        wings = _rect(length * 0.22, length * 0.95, offset_x=length * 0.05)
        tail = _rect(length * 0.1, length * 0.4, offset_x=-length * 0.42)
        colour = _jitter_colour(rng, (200, 200, 205), 20, grey=True)
        parts = [(fuselage, colour), (wings, colour), (tail, colour)]
        outline = np.concatenate([fuselage, wings, tail])
    rotated = [(_rotate(p, angle) + centre, c) for p, c in parts]
    return _Object(class_id, rotated, _rotate(outline, angle) + centre)


def _sample_placement(
    rng: np.random.Generator,
    class_id: int,
    image_size: int,
    water: np.ndarray | None,
    roads: List[Tuple[np.ndarray, np.ndarray, float]],
) -> Tuple[np.ndarray, float]:
    """Centre and angle: vehicles mostly along roads, ships on water, the others on land."""
    name = SYNTHETIC_CLASSES[class_id]
    if name == "vehicle" and roads and rng.random() < 0.7:
        start, direction, half_width = roads[rng.integers(len(roads))]
        lateral = np.array([-direction[1], direction[0]])
        centre = start + direction * rng.uniform(-image_size, image_size) + lateral * rng.uniform(-1, 1) * half_width * 0.6
        return centre, math.atan2(direction[1], direction[0]) + (math.pi if rng.random() < 0.5 else 0.0)
    for _ in range(20):
        centre = rng.uniform(0, image_size, 2)
        if water is None:
            break
        on_water = bool(water[int(min(centre[1], image_size - 1)), int(min(centre[0], image_size - 1))])
        if on_water == (name == "ship"):
            break
    return centre, float(rng.uniform(0, 2 * math.pi))


def _overlaps(box: np.ndarray, boxes: List[np.ndarray], margin: float = 1.0) -> bool:
    for other in boxes:
        if box[0] < other[2] + margin and other[0] < box[2] + margin and box[1] < other[3] + margin and other[1] < box[3] + margin:
            return True
    return False


def _fill(image: np.ndarray, polygon: np.ndarray, colour: Tuple[int, ...]) -> None:
    """Anti-aliased fill with 1/16 px vertex precision (tiny objects need sub-pixel geometry)."""
    cv2.fillPoly(image, [np.round(polygon * 16).astype(np.int32)], colour, cv2.LINE_AA, shift=4)


def render_scene(rng: np.random.Generator, image_size: int, min_objects: int, max_objects: int) -> Tuple[np.ndarray, List[Tuple[int, List[float]]]]:
    """One scene: (BGR uint8 image [S, S, 3], list of (class id, [x, y, w, h]))."""
    image = _ground(rng, image_size)
    water = _water(rng, image_size) if rng.random() < 0.45 else None
    if water is not None:
        ripple = _noise(rng, image_size, (image_size // 6,), (1.0,))[..., None]
        water_pixels = np.array(_WATER_COLOUR, np.float32) + (ripple - 0.5) * 16
        image = np.where(water[..., None], water_pixels, image)
    roads = _roads(rng, image)

    objects: List[_Object] = []
    boxes: List[np.ndarray] = []
    target = int(rng.integers(min_objects, max_objects + 1))
    for _ in range(target * 4):
        if len(objects) == target:
            break
        class_id = int(np.searchsorted(_CLASS_CUMULATIVE, rng.random(), side="right"))
        size = float(np.clip(rng.lognormal(math.log(_CLASS_MEDIAN_SIZE[class_id]), _SIZE_SIGMA), *_SIZE_RANGE))
        centre, angle = _sample_placement(rng, class_id, image_size, water, roads)
        obj = _make_object(rng, class_id, size, centre, angle)
        box = obj.box_xyxy()
        if box[0] < 0 or box[1] < 0 or box[2] > image_size or box[3] > image_size or _overlaps(box, boxes):
            continue
        objects.append(obj)
        boxes.append(box)

    # Shadows first (one sun direction per scene), then the objects over them.
    sun = rng.uniform(0, 2 * math.pi)
    shadow_mask = np.zeros((image_size, image_size), np.uint8)
    for obj in objects:
        extent = float(np.sqrt(np.prod(obj.box_xyxy()[2:] - obj.box_xyxy()[:2])))
        shift = np.array([math.cos(sun), math.sin(sun)], np.float32) * max(1.0, 0.3 * extent)
        _fill(shadow_mask, obj.outline + shift, (255,))
    shadow = shadow_mask.astype(np.float32)[..., None] / 255.0
    image = image * (1.0 - 0.55 * shadow)
    for obj in objects:
        for polygon, colour in obj.parts:
            _fill(image, polygon, colour)
        if obj.disc is not None and obj.disc[2] >= 3:  # tank rim and centre mark
            cx, cy, radius = obj.disc
            centre = (int(round(cx * 16)), int(round(cy * 16)))
            cv2.circle(image, centre, int(round(radius * 16)), (90, 90, 90), 1, cv2.LINE_AA, shift=4)
            cv2.circle(image, centre, int(round(radius * 4)), (150, 150, 150), -1, cv2.LINE_AA, shift=4)

    image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.3, 0.7)))
    # Sensor noise, mostly luminance (one field for the three channels: a third of the cost).
    image += rng.standard_normal((image_size, image_size, 1), dtype=np.float32) * np.float32(rng.uniform(1.5, 4.5))
    image = np.clip(image * rng.uniform(0.9, 1.1), 0, 255).astype(np.uint8)

    annotations = []
    for obj, box in zip(objects, boxes):
        x1, y1, x2, y2 = (float(v) for v in box)
        annotations.append((obj.class_id, [x1, y1, x2 - x1, y2 - y1]))
    return image, annotations
