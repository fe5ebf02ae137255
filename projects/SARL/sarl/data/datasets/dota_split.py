"""Split DOTA images into patches with horizontal-box COCO labels (the work of ``tools/prepare_dota.py``).

Choices (documented in ``tools/prepare_dota.py --help`` and the README):
- Patch grid (``sarl.inference.tiling``, shared with sliced inference): origins every ``patch_size - overlap`` px;
  the last row/column is *shifted back* inside the image (its origin is ``size - patch_size``), so every patch is
  full of image content. Images (or scaled images) smaller than a patch give one patch padded with black at the
  right/bottom to ``patch_size``.
- A box cut by a patch border is kept, clipped to the patch, when at least ``min_visible`` (default 0.7) of its
  area lies inside the patch; otherwise that patch does not carry it. With 200 px overlap every object up to
  ~200 px appears whole in some patch; objects kept in no patch at all are counted and logged (warning).
- ``difficult`` is kept per box; four-point labels become min/max horizontal boxes.
- Each patch image record carries ``source_file`` (absolute path of the whole image), ``source_image`` (its stem),
  ``patch_x0``/``patch_y0`` (origin in the *scaled* image), ``scale``, ``source_width``/``source_height``; a patch
  box maps back to the whole image as ``(box + [x0, y0, x0, y0]) / scale`` (``sarl.evaluation.dota_merge``).
- ``full_images.json`` has the whole images and their horizontal boxes, the ground truth for merged evaluation.
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ...inference.tiling import axis_starts, grid_origins
from .common import MAX_NAMED_DROPPED, ClipStats, DatasetFormatError, clip_xyxy, list_images
from .dota import DOTA_VERSIONS, parse_dota_labels

logger = logging.getLogger(__name__)


def patch_stride(patch_size: int, overlap: int) -> int:
    """Stride of patches of ``patch_size`` px overlapping by ``overlap`` px (in [0, patch_size))."""
    if not 0 <= overlap < patch_size:
        raise ValueError(f"overlap must be in [0, patch_size), got overlap={overlap}, patch_size={patch_size}")
    return patch_size - overlap


def patch_origins(length: int, patch_size: int, overlap: int) -> List[int]:
    """Patch origins along one axis: a stride of ``patch_size - overlap``, the last one shifted back inside."""
    return axis_starts(length, patch_size, patch_stride(patch_size, overlap))


def boxes_in_patch(
    boxes_xyxy: np.ndarray, x0: int, y0: int, patch_width: int, patch_height: int, min_visible: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Boxes [N, 4] (scaled-image coords) seen by one patch window.

    Returns (indices of the kept boxes, their boxes in patch coordinates, clipped to the window): a box is kept
    when ``intersection area / box area >= min_visible`` and the intersection has positive area.
    """
    if boxes_xyxy.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, 4))
    window = np.array([x0, y0, x0 + patch_width, y0 + patch_height], np.float64)
    inter = np.concatenate([np.maximum(boxes_xyxy[:, :2], window[:2]), np.minimum(boxes_xyxy[:, 2:], window[2:])], 1)
    inter_wh = np.clip(inter[:, 2:] - inter[:, :2], 0, None)
    inter_area = inter_wh[:, 0] * inter_wh[:, 1]
    box_area = np.prod(boxes_xyxy[:, 2:] - boxes_xyxy[:, :2], axis=1)
    keep = (inter_area > 0) & (inter_area >= min_visible * np.maximum(box_area, 1e-12))
    indices = np.nonzero(keep)[0]
    return indices, inter[indices] - np.array([x0, y0, x0, y0], np.float64)


@dataclass
class SplitOptions:
    patch_size: int = 1024
    overlap: int = 200
    scales: Sequence[float] = (1.0,)
    min_visible: float = 0.7
    keep_empty: bool = False
    image_ext: str = "png"


def _split_one_image(
    image_path: str, label_path: Optional[str], class_names: Tuple[str, ...], out_dir: str, options: SplitOptions
) -> Dict[str, Any]:
    """Split one image at every scale; writes the patches and returns their records (ids assigned later)."""
    image = cv2.imread(image_path, cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetFormatError(f"{image_path}: cannot read the image (missing, corrupt or not an image)")
    height, width = image.shape[:2]
    objects = parse_dota_labels(label_path, class_names) if label_path else []
    boxes = np.array([o.horizontal_box() for o in objects], np.float64).reshape(-1, 4)
    categories = [class_names.index(o.category) + 1 for o in objects]
    difficult = [o.difficult for o in objects]
    stem = os.path.splitext(os.path.basename(image_path))[0]
    source_file = os.path.abspath(image_path)

    full_stats = ClipStats(label_path or image_path)
    full_annotations = []
    for obj, box, category, hard in zip(objects, boxes, categories, difficult):
        clipped = clip_xyxy(box, width, height)
        full_stats.add(box, clipped, f"{label_path}:{obj.line_number}")
        if clipped is not None:
            full_annotations.append((clipped, category, hard))

    patches: List[Dict[str, Any]] = []
    unplaced: Dict[float, int] = {}
    empty_skipped = 0
    P = options.patch_size
    for scale in options.scales:
        scaled = image if scale == 1.0 else cv2.resize(
            image, (max(1, round(width * scale)), max(1, round(height * scale))),
            interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
        )
        scaled_h, scaled_w = scaled.shape[:2]
        scaled_boxes = boxes * scale
        placed = np.zeros(len(boxes), bool)
        for x0, y0 in grid_origins(scaled_h, scaled_w, P, patch_stride(P, options.overlap)):  # row by row
            indices, patch_boxes = boxes_in_patch(scaled_boxes, x0, y0, P, P, options.min_visible)
            placed[indices] = True
            if len(indices) == 0 and not options.keep_empty:
                empty_skipped += 1
                continue
            crop = scaled[y0:y0 + P, x0:x0 + P]
            if crop.shape[:2] != (P, P):  # image smaller than a patch: pad right/bottom
                crop = cv2.copyMakeBorder(crop, 0, P - crop.shape[0], 0, P - crop.shape[1], cv2.BORDER_CONSTANT, value=0)
            file_name = f"{stem}__{scale:g}__{x0}___{y0}.{options.image_ext}"
            if not cv2.imwrite(os.path.join(out_dir, file_name), crop):
                raise OSError(f"cannot write {os.path.join(out_dir, file_name)}")
            patches.append({
                "image": {
                    "file_name": file_name, "width": P, "height": P, "source_image": stem,
                    "source_file": source_file, "patch_x0": int(x0), "patch_y0": int(y0), "scale": float(scale),
                    "source_width": int(width), "source_height": int(height),
                },
                "annotations": [
                    {"bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                     "category_id": categories[i], "difficult": difficult[i]}
                    for i, b in zip(indices.tolist(), patch_boxes)
                ],
            })
        # Boxes of zero area are not objects (counted by full_stats), not "unplaced".
        has_area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) > 0 if len(boxes) else np.zeros(0, bool)
        unplaced[scale] = int((~placed & has_area).sum())
    return {
        "full": {"file_name": source_file, "width": int(width), "height": int(height), "source_image": stem},
        "full_annotations": full_annotations,
        "patches": patches,
        "unplaced": unplaced,
        "empty_skipped": empty_skipped,
        "zero_area": full_stats.dropped,
        "zero_area_at": full_stats.dropped_at,
        "num_objects": len(objects),
    }


def _pair_images_and_labels(image_dir: str, label_dir: Optional[str]) -> List[Tuple[str, Optional[str]]]:
    names = list_images(image_dir)
    if label_dir is None:
        return [(os.path.join(image_dir, n), None) for n in names]
    stems = {os.path.splitext(n)[0] for n in names}
    for txt in sorted(os.listdir(label_dir)):
        if txt.endswith(".txt") and os.path.splitext(txt)[0] not in stems:
            raise DatasetFormatError(f"{os.path.join(label_dir, txt)}: no image with this name in {image_dir}")
    pairs = []
    for name in names:
        label = os.path.join(label_dir, os.path.splitext(name)[0] + ".txt")
        if not os.path.isfile(label):
            raise DatasetFormatError(f"{os.path.join(image_dir, name)}: no label file {label}")
        pairs.append((os.path.join(image_dir, name), label))
    return pairs


def _iterate(pairs, class_names, out_dir, options, workers) -> Iterator[Dict[str, Any]]:
    if workers <= 1:
        for image_path, label_path in pairs:
            yield _split_one_image(image_path, label_path, class_names, out_dir, options)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_split_one_image, i, l, class_names, out_dir, options) for i, l in pairs]
        for future in futures:  # in submission order: ids are deterministic
            yield future.result()


def prepare_dota(
    image_dir: str,
    label_dir: Optional[str],
    dst: str,
    version: str = "v2.0",
    options: Optional[SplitOptions] = None,
    workers: int = 1,
) -> Dict[str, Any]:
    """Split every image of ``image_dir`` (labels from ``label_dir``; ``None`` = unlabelled, e.g. test) into
    ``dst/images/*`` and write ``dst/annotations.json`` (patches) and ``dst/full_images.json`` (whole images).

    Returns a summary: images, patches, objects, boxes kept in patches, unplaced objects per scale.
    """
    options = options or SplitOptions()
    if version not in DOTA_VERSIONS:
        raise ValueError(f"version must be one of {list(DOTA_VERSIONS)}, got {version!r}")
    if any(s <= 0 for s in options.scales):
        raise ValueError(f"scales must be positive, got {list(options.scales)}")
    class_names = DOTA_VERSIONS[version][0]
    out_dir = os.path.join(dst, "images")
    os.makedirs(out_dir, exist_ok=True)
    pairs = _pair_images_and_labels(image_dir, label_dir)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    patch_images, patch_annotations, full_images, full_annotations = [], [], [], []
    unplaced = {float(s): 0 for s in options.scales}
    summary = {"images": len(pairs), "objects": 0, "empty_patches_skipped": 0, "zero_area_boxes": 0}
    zero_area_at: List[str] = []  # where the first zero-area labels are, for the warning
    for result in _iterate(pairs, class_names, out_dir, options, workers):
        full_id = len(full_images) + 1
        full_images.append({"id": full_id, **result["full"]})
        for box, category, hard in result["full_annotations"]:
            bbox = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            full_annotations.append({"id": len(full_annotations) + 1, "image_id": full_id, "category_id": category,
                                     "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0, "difficult": hard})
        for patch in result["patches"]:
            patch_id = len(patch_images) + 1
            patch_images.append({"id": patch_id, "source_image_id": full_id, **patch["image"]})
            for annotation in patch["annotations"]:
                bbox = annotation["bbox"]
                patch_annotations.append({"id": len(patch_annotations) + 1, "image_id": patch_id,
                                          "area": bbox[2] * bbox[3], "iscrowd": 0, **annotation})
        for scale, count in result["unplaced"].items():
            unplaced[scale] += count
        summary["objects"] += result["num_objects"]
        summary["empty_patches_skipped"] += result["empty_skipped"]
        summary["zero_area_boxes"] += result["zero_area"]
        zero_area_at.extend(result["zero_area_at"][:MAX_NAMED_DROPPED - len(zero_area_at)])
    with open(os.path.join(dst, "annotations.json"), "w") as f:
        json.dump({"images": patch_images, "annotations": patch_annotations, "categories": categories,
                   "info": {"dota_version": version, "patch_size": options.patch_size, "overlap": options.overlap,
                            "scales": list(options.scales), "min_visible": options.min_visible}}, f)
    with open(os.path.join(dst, "full_images.json"), "w") as f:
        json.dump({"images": full_images, "annotations": full_annotations, "categories": categories}, f)
    summary.update(patches=len(patch_images), patch_boxes=len(patch_annotations), unplaced_objects=unplaced)
    if summary["empty_patches_skipped"]:
        logger.info(f"{summary['empty_patches_skipped']} patches without objects were not written (--keep-empty keeps them)")
    if summary["zero_area_boxes"]:
        more = ", ..." if summary["zero_area_boxes"] > len(zero_area_at) else ""
        logger.warning(f"{summary['zero_area_boxes']} labels have zero area after clipping to their image: dropped "
                       f"({', '.join(zero_area_at)}{more})")
    for scale, count in unplaced.items():
        if count:
            logger.warning(
                f"scale {scale:g}: {count} of {summary['objects']} objects are in no patch with >= "
                f"{options.min_visible:.0%} of their area (larger than the overlap): raise --overlap or add a smaller scale"
            )
    return summary
