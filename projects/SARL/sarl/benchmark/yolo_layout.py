"""The YOLO layout Ultralytics trains on, written from this project's dataset dicts (so both sides of
``tools/benchmark_real.py`` learn the same boxes): ``images/{split}`` as links to the frames, ``labels/{split}``
with one ``class cx cy w h`` txt per image, and ``data.yaml``."""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, List, Mapping, Sequence

from .kit_split import frame_name


def _xywh_abs(annotation: Mapping[str, Any]) -> List[float]:
    x, y, a, b = (float(v) for v in annotation["bbox"])
    mode = annotation.get("bbox_mode", 1)
    mode = getattr(mode, "value", mode)
    if mode == 1:  # XYWH_ABS
        return [x, y, a, b]
    if mode == 0:  # XYXY_ABS
        return [x, y, a - x, b - y]
    raise ValueError(f"annotation bbox_mode {annotation.get('bbox_mode')!r}: only XYXY_ABS / XYWH_ABS are exported")


def yolo_label_lines(record: Mapping[str, Any]) -> List[str]:
    """``class cx cy w h`` lines (normalised by the record's width/height) of a record's annotations."""
    width, height = float(record["width"]), float(record["height"])
    lines = []
    for annotation in record.get("annotations", []):
        if annotation.get("iscrowd", 0) or annotation.get("ignore", 0):
            continue  # not a box to learn (YOLO txt has no crowd flag)
        x, y, w, h = _xywh_abs(annotation)
        if w <= 0 or h <= 0:
            continue
        lines.append(f"{int(annotation['category_id'])} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} "
                     f"{w / width:.6f} {h / height:.6f}")
    return lines


def export_yolo_layout(splits: Mapping[str, Sequence[Mapping[str, Any]]], class_names: Sequence[str],
                       out_dir: str) -> str:
    """Write ``out_dir/images/<split>/`` (symbolic links to the records' images), ``out_dir/labels/<split>/``
    (one txt per image, :func:`yolo_label_lines`; an image without boxes gets an empty file) and
    ``out_dir/data.yaml``; returns the yaml's path. Folders of an earlier export are replaced (and Ultralytics'
    ``*.cache`` label caches removed)."""
    out_dir = os.path.abspath(out_dir)
    for split, records in splits.items():
        image_dir = os.path.join(out_dir, "images", split)
        label_dir = os.path.join(out_dir, "labels", split)
        for folder in (image_dir, label_dir):
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
        cache = os.path.join(out_dir, "labels", f"{split}.cache")
        if os.path.exists(cache):
            os.remove(cache)
        seen = set()
        for record in records:
            base = os.path.basename(record["file_name"])
            if base in seen:
                raise ValueError(f"two images named {base} in split {split!r}")
            seen.add(base)
            os.symlink(os.path.abspath(record["file_name"]), os.path.join(image_dir, base))
            with open(os.path.join(label_dir, frame_name(base) + ".txt"), "w") as f:
                f.writelines(line + "\n" for line in yolo_label_lines(record))
    yaml_path = os.path.join(out_dir, "data.yaml")
    with open(yaml_path, "w") as f:
        f.write(f"path: {json.dumps(out_dir)}\n")
        for split in splits:
            f.write(f"{split}: images/{split}\n")
        f.write("names:\n")
        for index, name in enumerate(class_names):
            f.write(f"  {index}: {json.dumps(str(name))}\n")
    return yaml_path
