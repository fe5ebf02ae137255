"""A prediction run over files (the library of ``tools/predict.py``): images and videos in, pictures, an annotated
video per video, ``results.json`` (COCO detection results) and a summary out.

Outputs under ``out_dir``:

- ``vis/<stem>.jpg``: each image with its detections above ``vis_score`` (class name and score);
- ``results.json``: COCO detection results of the images. With a :class:`~sarl.inference.coco_ids.CocoJsonIds`
  (``--coco-json``) ``image_id`` / ``category_id`` are that json's ids, so pycocotools scores the file against it
  as it is (images it does not list are left out, with a warning); without one, ``image_id`` is the file name and
  ``category_id`` the model's 0-based class id. Every result also carries ``category_name``;
- ``vis/<stem>.mp4`` and ``videos/<stem>.json``: the annotated video and its per-frame detections
  (:mod:`sarl.inference.video`).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import cv2

from .coco_ids import CocoJsonIds
from .image_files import is_video
from .predictor import Predictor, read_image
from .progress import Progress
from .video import VideoResult, predict_video
from .visualize import draw

logger = logging.getLogger("sarl.predict")

__all__ = ["RunSummary", "predict_files"]


@dataclass
class RunSummary:
    """What a run did: images predicted (``tiled`` of them in tiles), ``unreadable`` files skipped, videos,
    ``truncated`` images/frames cut by the per-image cap, images ``not_in_json`` (left out of results.json)."""

    images: int = 0
    tiled: int = 0
    detections: int = 0
    truncated: int = 0
    not_in_json: int = 0
    unreadable: List[str] = field(default_factory=list)
    videos: List[VideoResult] = field(default_factory=list)
    results_path: str = ""
    vis_dir: str = ""

    @property
    def predicted(self) -> int:
        """Images and videos that were predicted."""
        return self.images + len(self.videos)

    def lines(self) -> List[str]:
        lines = [f"{self.images} images predicted ({self.tiled} tiled, {self.images - self.tiled} whole), "
                 f"{len(self.unreadable)} unreadable skipped, {self.detections} detections; results: "
                 f"{self.results_path}, pictures: {self.vis_dir}"]
        for video in self.videos:
            lines.append(f"{video.path}: {video.frames} frames, {video.detections} detections; json: {video.json_out}"
                         + (f", video: {video.video_out}" if video.video_out else ""))
        if self.truncated:
            lines.append(f"{self.truncated} images/frames had more detections than TEST.DETECTIONS_PER_IMAGE "
                         f"(the best were kept; see the warnings)")
        if self.not_in_json:
            lines.append(f"{self.not_in_json} images are not in --coco-json: left out of results.json")
        return lines


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def predict_files(predictor: Predictor, files: Sequence[str], out_dir: str, vis_score: float = 0.3,
                  write_vis: bool = True, coco_ids: Optional[CocoJsonIds] = None,
                  interactive_progress: Optional[bool] = None) -> RunSummary:
    """Predict ``files`` (images and videos, e.g. from :func:`~sarl.inference.expand_inputs`) into ``out_dir``
    (module docstring). Unreadable files are skipped with a warning naming them and listed in the summary."""
    images = [f for f in files if not is_video(f)]
    videos = [f for f in files if is_video(f)]
    summary = RunSummary(results_path=os.path.join(out_dir, "results.json"), vis_dir=os.path.join(out_dir, "vis"))
    os.makedirs(summary.vis_dir, exist_ok=True)
    if images:
        logger.info(f"tiling: {predictor.policy.describe()}")
    with open(summary.results_path, "w") as results, \
            Progress(len(images), unit="image", interactive=interactive_progress) as progress:
        results.write("[")
        written = 0
        for path in images:
            progress.start(os.path.basename(path))
            image = read_image(path)
            if image is None:
                logger.warning(f"cannot read image {path}: skipped")
                summary.unreadable.append(path)
                progress.advance()
                continue
            prediction = predictor.predict(image, progress=progress.tiles, name=path)
            height, width = image.shape[:2]
            if predictor.policy.explicit and not prediction.tiles:
                logger.info(f"{path} ({width}x{height}) is not larger than the slice size "
                            f"{predictor.policy.slice_size} px: predicted whole, letterboxed to "
                            f"{predictor.img_size} px")
            summary.images += 1
            summary.tiled += int(prediction.tiles > 0)
            summary.detections += len(prediction)
            summary.truncated += int(prediction.truncated)
            entries = _results_of(prediction, path, coco_ids, summary)
            if entries:
                results.write((",\n" if written else "\n") + ",\n".join(json.dumps(e) for e in entries))
                written += len(entries)
            if write_vis:
                out_path = os.path.join(summary.vis_dir, _stem(path) + ".jpg")
                cv2.imwrite(out_path, draw(image, prediction.above(vis_score).instances, predictor.metadata))
            progress.advance()
        results.write("\n]\n")
    if videos:
        os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
    for path in videos:
        video = predict_video(predictor, path, os.path.join(out_dir, "videos", _stem(path) + ".json"),
                              os.path.join(summary.vis_dir, _stem(path) + ".mp4") if write_vis else "", vis_score,
                              interactive_progress)
        if video is None:
            logger.warning(f"cannot read video {path} (or it has no frame): skipped")
            summary.unreadable.append(path)
            continue
        summary.videos.append(video)
        summary.truncated += video.truncated_frames
    return summary


def _results_of(prediction, path: str, coco_ids: Optional[CocoJsonIds], summary: RunSummary) -> List[dict]:
    if coco_ids is None:
        return prediction.to_coco_results(os.path.basename(path))
    image_id = coco_ids.image_id(path)
    if image_id is None:
        logger.warning(f"{path} is not in --coco-json {coco_ids.path}: its detections are left out of results.json")
        summary.not_in_json += 1
        return []
    return prediction.to_coco_results(image_id, coco_ids.category_ids)
