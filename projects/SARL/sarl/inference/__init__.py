"""Inference: prediction on images (:class:`Predictor`), sliced (tiled) prediction for large aerial images, the
tiling they share with DOTA patch splitting, pictures of detections, and exports with the decoding inside."""
from .image_files import IMAGE_EXTENSIONS, expand_inputs
from .predictor import Prediction, Predictor, build_inference_model, read_image
from .sliced import SlicedDetector, SlicedPredictor
from .tiling import drop_cut_boxes, merge_detections, tile_grid, tile_starts
from .visualize import draw, draw_dataset_predictions, draw_ground_truth

__all__ = [
    "IMAGE_EXTENSIONS",
    "Prediction",
    "Predictor",
    "SlicedDetector",
    "SlicedPredictor",
    "build_inference_model",
    "draw",
    "draw_dataset_predictions",
    "draw_ground_truth",
    "drop_cut_boxes",
    "expand_inputs",
    "merge_detections",
    "read_image",
    "tile_grid",
    "tile_starts",
]
