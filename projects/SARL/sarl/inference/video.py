"""Prediction on video files: every frame through the :class:`~sarl.inference.Predictor` (tiled by the same rule as
images), an annotated copy of the video and the detections of every frame as json.

The json (``<stem>.json``)::

    {"video": "in.mp4", "fps": 25.0, "width": 1920, "height": 1080, "class_names": ["car", ...],
     "frames": [{"frame": 0, "time_s": 0.0, "detections": [{"bbox": [x, y, w, h], "score": 0.91,
                 "category_id": 0, "category_name": "car"}, ...]}, ...],
     "num_frames": 250}

``bbox`` is XYWH in frame pixels and ``category_id`` the model's contiguous class id. Frames are streamed: neither
the video nor its detections are held in memory.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Optional

import cv2

from .predictor import Prediction, Predictor
from .progress import Progress
from .visualize import draw_boxes

logger = logging.getLogger(__name__)

__all__ = ["VideoResult", "predict_video"]

DEFAULT_FPS = 25.0  # when the container does not say


@dataclass
class VideoResult:
    """One predicted video: ``frames`` read, ``detections`` in all, ``truncated_frames`` cut by the per-image cap,
    the annotated video (``video_out``, "" when not written) and the per-frame json (``json_out``)."""

    path: str
    frames: int
    detections: int
    truncated_frames: int
    video_out: str
    json_out: str


def _frame_record(index: int, fps: float, prediction: Prediction) -> dict:
    detections = [{"bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                   "score": round(score, 5), "category_id": int(cls), "category_name": name}
                  for (x0, y0, x1, y1), score, cls, name in zip(prediction.boxes.tolist(), prediction.scores.tolist(),
                                                                prediction.class_ids.tolist(), prediction.class_names)]
    return {"frame": index, "time_s": round(index / fps, 4), "detections": detections}


def predict_video(predictor: Predictor, path: str, json_out: str, video_out: str = "", vis_score: float = 0.3,
                  interactive_progress: Optional[bool] = None) -> Optional[VideoResult]:
    """Predict every frame of the video ``path``; write the per-frame json to ``json_out`` and, when ``video_out``
    is given, the frames with the detections above ``vis_score`` drawn (mp4v codec). None when the video cannot
    be opened or has no frame (nothing is left behind then)."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        return None
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and math.isfinite(fps) and fps > 0 else DEFAULT_FPS
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) or None
    name = os.path.basename(path)
    writer = None
    frames = detections = truncated = 0
    try:
        with open(json_out, "w") as out, Progress(total, unit="frame", desc=name,
                                                  interactive=interactive_progress) as progress:
            out.write(json.dumps({"video": path, "fps": fps, "width": int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                                  "height": int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                                  "class_names": predictor.class_names})[:-1] + ', "frames": [\n')
            while True:
                ok, frame = capture.read()
                if not ok or frame is None:
                    break
                progress.start(f"frame {frames}")
                prediction = predictor.predict(frame, progress=progress.tiles, name=f"{name} frame {frames}")
                out.write((",\n" if frames else "") + json.dumps(_frame_record(frames, fps, prediction)))
                if video_out:
                    if writer is None:
                        writer = cv2.VideoWriter(video_out, cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                                 (frame.shape[1], frame.shape[0]))
                        if not writer.isOpened():
                            raise OSError(f"cannot write the video {video_out} (OpenCV without an mp4v encoder?)")
                    shown = prediction.above(vis_score)
                    writer.write(draw_boxes(frame, shown.boxes, shown.scores, shown.class_ids, predictor.class_names))
                frames += 1
                detections += len(prediction)
                truncated += int(prediction.truncated)
                progress.advance()
            out.write(f'\n], "num_frames": {frames}}}\n')
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if frames == 0:
        for leftover in (json_out, video_out):
            if leftover and os.path.exists(leftover):
                os.remove(leftover)
        return None
    return VideoResult(path, frames, detections, truncated, video_out if writer is not None else "", json_out)
