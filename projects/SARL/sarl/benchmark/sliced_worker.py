"""One side of one round of the sliced-prediction benchmark (``tools/benchmark_sliced.py``), in its own process:

    python -m sarl.benchmark.sliced_worker --side ours|sahi --config C --weights W --image I --slice S ...

Builds the detector (:class:`sarl.inference.Predictor`, CPU, ``--threads`` torch threads), reads the image,
predicts a warm-up crop (the top-left ``2 x slice`` px: every lazy import and allocation of the path), then the
whole image once, timed: this project's ``Predictor.predict(image, slice_size=S)`` (``--side ours``) or SAHI's
``get_sliced_prediction`` with the same detector (``--side sahi``, :mod:`sarl.benchmark.sahi_worker`; run by the
SAHI environment's python). Writes ``--result`` (JSON: wall time, time inside the model, tiles, memory) and
``--detections`` (npz of the boxes, scores and classes).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..inference import Prediction, Predictor, read_image, tile_grid
from .sliced_agreement import Detections

__all__ = ["ModelClock", "OursSide", "build_predictor", "run_side"]

# The merge keeps every detection, as SAHI does (the benchmark compares the full sets).
UNCAPPED = 10 ** 9


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class ModelClock:
    """Seconds spent inside ``model``'s forward (hooks: nothing of the call path changes)."""

    def __init__(self, model: torch.nn.Module):
        self.seconds, self.calls, self._start = 0.0, 0, 0.0
        model.register_forward_pre_hook(self._enter)
        model.register_forward_hook(self._leave)

    def _enter(self, *_) -> None:
        self._start = time.perf_counter()

    def _leave(self, *_) -> None:
        self.seconds += time.perf_counter() - self._start
        self.calls += 1

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


def build_predictor(config: str, weights: str, score_thresh: float, slice_size: int, overlap: float,
                    batch_size: int, keep_batchnorm: bool = False) -> Predictor:
    """The benchmark's predictor: CPU, ``score_thresh``, no cap on the merged detections, whole-image size = the
    slice size (an image no larger than a slice is predicted at scale 1, as SAHI's wrapper predicts slices);
    BatchNorm folded into the convolutions unless ``keep_batchnorm`` (``TEST.FUSE_CONV_BN``)."""
    opts = ["MODEL.YOLO.SCORE_THRESH_TEST", str(score_thresh), "TEST.FUSE_CONV_BN", str(not keep_batchnorm)]
    predictor = Predictor.from_config(config, weights, opts=opts, device="cpu", overlap=overlap, batch_size=batch_size)
    predictor.max_detections = UNCAPPED
    predictor.img_size = int(slice_size)
    return predictor


class OursSide:
    """This project's side: ``Predictor.predict(image, slice_size=S)`` (the timed call)."""

    def __init__(self, predictor: Predictor, slice_size: int, overlap: float):
        self.predictor, self.slice_size, self.overlap = predictor, int(slice_size), float(overlap)
        self.last: Optional[Prediction] = None

    def __call__(self, image: np.ndarray) -> Prediction:
        self.last = self.predictor.predict(image, slice_size=self.slice_size)
        return self.last

    @staticmethod
    def detections(prediction: Prediction) -> Detections:
        return Detections(prediction.boxes, prediction.scores, prediction.class_ids)

    def tiles(self, height: int, width: int) -> List[List[int]]:
        return [list(t) for t in tile_grid(height, width, self.slice_size, self.overlap)]

    def info(self) -> Dict[str, Any]:
        # A tile with more detections than the model's per-image cap (TEST.DETECTIONS_PER_IMAGE) lost some.
        return {"cut_by_the_cap": getattr(self.last, "truncated", None)}


def run_side(args: argparse.Namespace) -> Dict[str, Any]:
    """Set up, warm up, predict the whole image once (timed); the result JSON's fields. Writes the detections."""
    torch.set_num_threads(args.threads)
    image = read_image(args.image)
    if image is None:
        raise SystemExit(f"error: cannot read --image {args.image}")
    height, width = image.shape[:2]
    predictor = build_predictor(args.config, args.weights, args.score_thresh, args.slice, args.overlap, args.batch,
                                args.keep_batchnorm)
    clock = ModelClock(predictor.model)
    if args.side == "ours":
        side: Any = OursSide(predictor, args.slice, args.overlap)
    else:
        from .sahi_worker import SahiSlicedPrediction

        side = SahiSlicedPrediction(predictor, args.slice, args.overlap, args.batch, args.score_thresh, args.cut_rule)
    setup_rss = peak_rss_mib()
    warm = min(2 * args.slice, height), min(2 * args.slice, width)
    side(np.ascontiguousarray(image[:warm[0], :warm[1]]))
    warm_rss = peak_rss_mib()
    clock.reset()
    start = time.perf_counter()
    output = side(image)
    wall = time.perf_counter() - start
    detections = side.detections(output)
    detections.save_npz(args.detections)
    return {"side": args.side, "wall_s": wall, "model_s": clock.seconds, "model_calls": clock.calls,
            "tile_grid": side.tiles(height, width), "tiles": len(side.tiles(height, width)),
            "detections": len(detections), "image_hw": [height, width], "warmup_hw": list(warm),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "numpy": np.__version__,
            "rss_after_setup_mib": setup_rss, "rss_after_warmup_mib": warm_rss, "peak_rss_mib_self": peak_rss_mib(),
            **side.info()}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="a side of tools/benchmark_sliced.py (one process per round)")
    parser.add_argument("--side", choices=("ours", "sahi"), required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--score-thresh", type=float, required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--slice", type=int, required=True)
    parser.add_argument("--overlap", type=float, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--cut-rule", default="ours", help="SAHI side: 'ours' or 'none' (sarl.benchmark.sahi_worker)")
    parser.add_argument("--keep-batchnorm", action="store_true", help="TEST.FUSE_CONV_BN False (both sides)")
    parser.add_argument("--result", required=True, help="JSON to write")
    parser.add_argument("--detections", required=True, help="npz to write")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    result = run_side(args)
    with open(args.result, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
