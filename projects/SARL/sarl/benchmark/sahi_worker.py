"""SAHI's side of the sliced-prediction benchmark (``tools/benchmark_sliced.py``): this project's detector wrapped
as a SAHI detection model and run through ``sahi.predict.get_sliced_prediction``.

Imported only by :mod:`sarl.benchmark.sliced_worker` in the SAHI environment (SAHI is not a project dependency:
:func:`sarl.benchmark.peer_env.ensure_peer_env` installs it beside the project's torch, numpy and ``sarl``).

How SAHI is configured to do what :class:`sarl.inference.SlicedPredictor` does:

- slices: ``slice_height = slice_width = S``, overlap ratios ``o``: SAHI's grid (stride ``S - int(o * S)``, the
  last slice shifted back flush with the border) is this project's ``tile_grid`` (stride ``round(S * (1 - o))``)
  whenever ``o * S`` is a whole number; the benchmark compares the two grids;
- model: every slice goes to the same ``YOLODetector`` at native resolution, ``batch`` slices per call
  (``perform_batch_inference`` is overridden, as SAHI's own Ultralytics model does), through the input of
  :meth:`sarl.inference.Predictor.predict_instances` (letterbox scale 1: the predictor's size is the slice size);
  ``perform_standard_pred=False`` (no extra whole-image pass; this project has none);
- cut boxes: SAHI has no rule for boxes cut by an inner slice edge. With ``cut_rule="ours"`` (the default) the
  wrapper applies this project's (:func:`sarl.inference.tiling.drop_cut_boxes`) to each slice's detections, so
  both merges see the same boxes; ``cut_rule="none"`` is stock SAHI, which leaves the cut copies to NMS;
- merge: ``postprocess_type="NMS"``, ``postprocess_match_metric="IOU"``, ``postprocess_match_threshold`` = the
  project's ``MODEL.YOLO.NMS_THRESH_TEST``, class-wise (as :class:`~sarl.inference.Predictor` merges). What still
  differs: SAHI suppresses at IoU >= threshold in float64 (numpy backend on a CPU), torchvision's ``batched_nms``
  at IoU > threshold in float32; SAHI keeps every merged detection, this project the best ``max_detections``
  (the benchmark sets that cap beyond reach).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import sahi
import torch
from sahi.models.base import DetectionModel
from sahi.postprocess.backends import resolve_backend
from sahi.predict import get_sliced_prediction
from sahi.prediction import ObjectPrediction, PredictionResult
from sahi.slicing import get_slice_bboxes
from sahi.utils.compatibility import fix_full_shape_list, fix_shift_amount_list

from ..inference import Predictor, drop_cut_boxes
from .sliced_agreement import Detections
from .sliced_speed import CUT_RULES

__all__ = ["SarlSahiModel", "SahiSlicedPrediction"]


class SarlSahiModel(DetectionModel):
    """A :class:`sarl.inference.Predictor` as a SAHI detection model: whole-slice prediction (no inner slicing),
    detections above ``confidence_threshold`` as SAHI ``ObjectPrediction`` objects, shifted by SAHI.

    Args:
        predictor: the predictor, its ``img_size`` the slice size (slices are letterboxed at scale 1).
        confidence_threshold: the model's score threshold (``MODEL.YOLO.SCORE_THRESH_TEST``).
        cut_overlap_px: apply this project's cut-box rule with this overlap (px); None: stock SAHI.
    """

    def __init__(self, predictor: Predictor, confidence_threshold: float, cut_overlap_px: Optional[float]):
        self.cut_overlap_px = cut_overlap_px
        self._slice_shapes: List[tuple] = []
        names = predictor.class_names
        super().__init__(model=predictor, device="cpu", confidence_threshold=confidence_threshold,
                         category_mapping={str(i): n for i, n in enumerate(names)} or None, load_at_init=True)

    def set_model(self, model: Any, **kwargs: Any) -> None:
        self.model = model

    def load_model(self) -> None:
        raise TypeError("SarlSahiModel is built around a Predictor (model=...)")

    def _slice_instances(self, images: List[np.ndarray]) -> List[Any]:
        predictor: Predictor = self.model
        full, other = [], []
        for index, image in enumerate(images):
            (full if max(image.shape[:2]) == predictor.img_size else other).append(index)
        out: List[Any] = [None] * len(images)
        if full:
            # Predictor.predict_instances' input at letterbox scale 1, for a batch of slices in one model call.
            inputs = []
            for index in full:
                image = images[index][:, :, ::-1] if predictor.rgb else images[index]
                inputs.append({"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                               "height": image.shape[0], "width": image.shape[1], "letterbox": (1.0, 0.0, 0.0)})
            with torch.no_grad():
                for index, output in zip(full, predictor.model(inputs)):
                    out[index] = output["instances"].to("cpu")
        for index in other:  # a slice of another size (an image smaller than the slice): the predictor itself
            out[index] = predictor.predict_instances(images[index], slice_size=0)
        return out

    def perform_inference(self, image: np.ndarray) -> None:
        self.perform_batch_inference([image])

    def perform_batch_inference(self, images: List[np.ndarray]) -> None:
        self._batch_images = None  # inference happens here: convert_original_predictions takes its direct path
        self._slice_shapes = [image.shape[:2] for image in images]
        self._original_predictions = self._slice_instances(images)

    def _create_object_prediction_list_from_original_predictions(self, shift_amount_list: Optional[list] = None,
                                                                 full_shape_list: Optional[list] = None) -> None:
        shifts = fix_shift_amount_list(shift_amount_list)
        full_shapes = fix_full_shape_list(full_shape_list)
        per_image = []
        for index, instances in enumerate(self._original_predictions):
            shift = shifts[index] if index < len(shifts) else [0, 0]
            full_shape = full_shapes[index] if full_shapes else None
            boxes, scores = instances.pred_boxes.tensor, instances.scores
            keep = scores > self.confidence_threshold
            if self.cut_overlap_px is not None and full_shape is not None:
                h, w = self._slice_shapes[index]
                x0, y0 = int(shift[0]), int(shift[1])
                keep &= drop_cut_boxes(boxes, (x0, y0, x0 + w, y0 + h), (int(full_shape[0]), int(full_shape[1])),
                                       self.cut_overlap_px)
            classes = instances.pred_classes[keep].tolist()
            names = self.category_mapping or {}
            per_image.append([
                ObjectPrediction(bbox=box, category_id=cls, category_name=names.get(str(cls), str(cls)),
                                 score=score, shift_amount=list(shift), full_shape=full_shape)
                for box, score, cls in zip(boxes[keep].tolist(), scores[keep].tolist(), classes)])
        self._object_prediction_list_per_image = per_image


class SahiSlicedPrediction:
    """SAHI's side for :mod:`sarl.benchmark.sliced_worker`: ``get_sliced_prediction`` of one image with the
    benchmark's settings (the timed call); :meth:`detections` turns its result into arrays (outside it)."""

    def __init__(self, predictor: Predictor, slice_size: int, overlap: float, batch_size: int,
                 score_thresh: float, cut_rule: str = "ours"):
        if cut_rule not in CUT_RULES:
            raise ValueError(f"cut_rule must be one of {CUT_RULES}, got {cut_rule!r}")
        self.slice_size, self.overlap, self.batch_size = int(slice_size), float(overlap), int(batch_size)
        self.nms_thresh = float(predictor.nms_thresh)
        self.class_agnostic = False  # Predictor's merge of the tiles is class-wise
        self.model = SarlSahiModel(predictor, score_thresh,
                                   self.slice_size * self.overlap if cut_rule == "ours" else None)
        self.durations: List[Dict[str, float]] = []

    def __call__(self, image: np.ndarray) -> PredictionResult:
        result = get_sliced_prediction(
            image, self.model, slice_height=self.slice_size, slice_width=self.slice_size,
            overlap_height_ratio=self.overlap, overlap_width_ratio=self.overlap, perform_standard_pred=False,
            postprocess_type="NMS", postprocess_match_metric="IOU", postprocess_match_threshold=self.nms_thresh,
            postprocess_class_agnostic=self.class_agnostic, verbose=0, batch_size=self.batch_size,
            force_postprocess_type=True, auto_slice_resolution=False)
        self.durations.append({k: float(v) for k, v in result.durations_in_seconds.items()})
        return result

    @staticmethod
    def detections(result: PredictionResult) -> Detections:
        predictions = result.object_prediction_list
        return Detections(boxes=[p.bbox.to_xyxy() for p in predictions], scores=[p.score.value for p in predictions],
                          classes=[p.category.id for p in predictions])

    def tiles(self, height: int, width: int) -> List[List[int]]:
        """SAHI's slices ``[x0, y0, x1, y1]`` of a ``height`` x ``width`` image."""
        return get_slice_bboxes(height, width, self.slice_size, self.slice_size, False, self.overlap, self.overlap)

    def info(self) -> Dict[str, Any]:
        """What the result JSON records of this side: SAHI's version, settings and its own timings of the last
        call (slicing, prediction, postprocess)."""
        return {"sahi": sahi.__version__, "sahi_settings": self.settings(),
                "sahi_durations_s": self.durations[-1] if self.durations else None}

    def settings(self) -> Dict[str, Any]:
        return {"postprocess_type": "NMS", "postprocess_match_metric": "IOU",
                "postprocess_match_threshold": self.nms_thresh, "postprocess_class_agnostic": self.class_agnostic,
                "perform_standard_pred": False, "batch_size": self.batch_size,
                "postprocess_backend": resolve_backend(),
                "cut_rule": "ours" if self.model.cut_overlap_px is not None else "none"}
