"""Detections of either side of ``tools/benchmark_real.py`` -> this project's prediction format
(``{"image_id", "boxes" [N, 4] XYXY, "scores" [N], "classes" [N]}``), which ``sarl.evaluation.evaluate_detections``
scores: Ultralytics ``Results`` (the peer), ``tools/predict.py``'s COCO results (ours), and their class-agnostic
copies. The top level needs the standard library only (the peer's worker imports it)."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple

from .kit_split import frame_name


def _as_list(values: Any) -> list:
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    if hasattr(values, "tolist"):
        return values.tolist()
    return list(values)


def ultralytics_result_to_raw(result: Any) -> Dict[str, Any]:
    """One Ultralytics ``Results`` (``path``, ``boxes.xyxy`` in the original image's pixels, ``boxes.conf``,
    ``boxes.cls``) -> ``{"frame", "boxes" [[x1, y1, x2, y2], ...], "scores", "classes"}`` (plain lists, JSON)."""
    boxes = result.boxes
    xyxy = [[float(v) for v in box] for box in _as_list(boxes.xyxy)]
    return {
        "frame": frame_name(str(result.path)),
        "boxes": xyxy,
        "scores": [float(s) for s in _as_list(boxes.conf)],
        "classes": [int(round(float(c))) for c in _as_list(boxes.cls)],
    }


def raw_to_predictions(raw: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]]
                       ) -> List[Dict[str, Any]]:
    """Raw per-frame detections (:func:`ultralytics_result_to_raw`, or :func:`coco_results_to_raw`) -> one
    ``{"image_id", "boxes" [N, 4] XYXY, "scores" [N], "classes" [N]}`` per record (empty where a frame has no
    detection). A frame that is not among the records is an error."""
    import numpy as np

    by_frame = {frame_name(r["file_name"]): r["image_id"] for r in records}
    merged: Dict[str, Dict[str, list]] = {}
    for item in raw:
        if item["frame"] not in by_frame:
            raise ValueError(f"detections for frame {item['frame']!r}, which is not in the ground truth")
        entry = merged.setdefault(item["frame"], {"boxes": [], "scores": [], "classes": []})
        for key in entry:
            entry[key].extend(item[key])
    predictions = []
    for frame, image_id in by_frame.items():
        entry = merged.get(frame, {"boxes": [], "scores": [], "classes": []})
        predictions.append({
            "image_id": image_id,
            "boxes": np.asarray(entry["boxes"], dtype=np.float64).reshape(-1, 4),
            "scores": np.asarray(entry["scores"], dtype=np.float64).reshape(-1),
            "classes": np.asarray(entry["classes"], dtype=np.int64).reshape(-1),
        })
    return predictions


def coco_results_to_raw(results: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """COCO detection results of ``tools/predict.py`` (``image_id`` = file name, ``bbox`` XYWH, contiguous
    ``category_id``) -> raw per-frame detections."""
    raw: Dict[str, Dict[str, Any]] = {}
    for det in results:
        frame = frame_name(str(det["image_id"]))
        entry = raw.setdefault(frame, {"frame": frame, "boxes": [], "scores": [], "classes": []})
        x, y, w, h = (float(v) for v in det["bbox"])
        entry["boxes"].append([x, y, x + w, y + h])
        entry["scores"].append(float(det["score"]))
        entry["classes"].append(int(det["category_id"]))
    return list(raw.values())


def class_agnostic(records: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]]
                   ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Copies of the ground truth and the predictions with every class folded into one ("object")."""
    gt = [dict(r, annotations=[dict(a, category_id=0) for a in r.get("annotations", [])]) for r in records]
    dt = [dict(p, classes=p["classes"] * 0) for p in predictions]
    return gt, dt
