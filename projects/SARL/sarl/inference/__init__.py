"""Inference helpers: sliced (tiled) prediction for large aerial images."""
from .sliced import SlicedDetector, SlicedPredictor, drop_cut_boxes, merge_detections, tile_grid, tile_starts

__all__ = ["SlicedDetector", "SlicedPredictor", "drop_cut_boxes", "merge_detections", "tile_grid", "tile_starts"]
