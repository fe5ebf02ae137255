"""Inference: prediction on images and videos (:class:`Predictor`, :func:`predict_files`), sliced (tiled)
prediction for large aerial images and the rule of when to tile, the tiling shared with DOTA patch splitting,
pictures of detections, COCO ids for scoreable results, progress, and exports with the decoding inside."""
from .class_names import parse_class_names, resolve_class_names
from .coco_ids import CocoJsonIds
from .image_files import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, expand_inputs, is_video
from .predict_run import RunSummary, predict_files
from .predictor import Prediction, Predictor, build_inference_model, load_inference_model, read_image
from .progress import Progress
from .slice_policy import AUTO_SLICE_RATIO, SlicePolicy, SliceSettingError
from .sliced import SlicedDetector, SlicedPredictor, SliceReport
from .tiling import drop_cut_boxes, merge_detections, tile_grid, tile_starts
from .video import VideoResult, predict_video
from .visualize import draw, draw_boxes, draw_dataset_predictions, draw_ground_truth

__all__ = [
    "AUTO_SLICE_RATIO",
    "CocoJsonIds",
    "IMAGE_EXTENSIONS",
    "Prediction",
    "Predictor",
    "Progress",
    "RunSummary",
    "SlicePolicy",
    "SliceReport",
    "SliceSettingError",
    "SlicedDetector",
    "SlicedPredictor",
    "VIDEO_EXTENSIONS",
    "VideoResult",
    "build_inference_model",
    "draw",
    "draw_boxes",
    "draw_dataset_predictions",
    "draw_ground_truth",
    "drop_cut_boxes",
    "expand_inputs",
    "is_video",
    "load_inference_model",
    "merge_detections",
    "parse_class_names",
    "predict_files",
    "predict_video",
    "read_image",
    "resolve_class_names",
    "tile_grid",
    "tile_starts",
]
