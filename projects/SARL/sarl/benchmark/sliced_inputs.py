"""The image and the detector of the sliced-prediction benchmark (``tools/benchmark_sliced.py``).

- Image: ``--image``, or a seeded aerial-like mosaic of synthetic scenes (:func:`synthetic_mosaic`: blocks of
  :func:`sarl.data.synthetic_scene.render_scene`, tiny objects on textured ground, roads and water), written once
  as a PNG that both sides read.
- Detector: ``--weights``; else the checkpoint of ``make demo`` (``output/demo/model_final.pth``) when present;
  else a seeded untrained model (:func:`untrained_checkpoint`). An untrained YOLOX scores every anchor at its
  prior (objectness 0.01 x class 0.01 = 1e-4): its BatchNorm layers get the statistics of a few tiles of the image (a
  forward pass, no gradient, no weight changed) so that scores vary with the image, and the score threshold is
  lowered to :data:`UNTRAINED_SCORE_THRESH`. Both sides load the same checkpoint file.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np

__all__ = ["TRAINED_SCORE_THRESH", "UNTRAINED_SCORE_THRESH", "resolve_detector", "synthetic_mosaic",
           "write_synthetic_image"]

# Score threshold of a trained detector: a deployment threshold (SAHI's default confidence threshold), not the
# 0.001 of AP evaluation, which on a 6000 x 6000 image gives ~100k boxes and an [N, N] NMS matrix in SAHI.
TRAINED_SCORE_THRESH = 0.3
# Untrained model after the BatchNorm statistics, on the 6000 px synthetic mosaic (seed 0, 640 px tiles): ~4500
# detections after the merge, about the mosaic's ~3200 objects; each tile stays far below the per-tile cap
# (TEST.DETECTIONS_PER_IMAGE), which 0.003 reached (17k detections).
UNTRAINED_SCORE_THRESH = 0.01
_MOSAIC_BLOCK = 1000
_CALIBRATION_TILES = 8


def synthetic_mosaic(size: int, seed: int, block: int = _MOSAIC_BLOCK) -> np.ndarray:
    """A ``size`` x ``size`` x 3 uint8 BGR aerial-like image: synthetic scenes of ``block`` px side by side
    (60 to 120 objects each, seeded per block)."""
    from sarl.data.synthetic_scene import render_scene

    image = np.empty((size, size, 3), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for y in range(0, size, block):
        for x in range(0, size, block):
            scene, _ = render_scene(rng, block, 60, 120)
            h, w = min(block, size - y), min(block, size - x)
            image[y:y + h, x:x + w] = scene[:h, :w]
    return image


def write_synthetic_image(folder: str, size: int, seed: int) -> str:
    """Path of the mosaic of ``size`` and ``seed`` in ``folder`` (drawn and written on first use)."""
    import cv2

    path = os.path.join(folder, f"synthetic_mosaic_{size}px_seed{seed}.png")
    if not os.path.isfile(path):
        os.makedirs(folder, exist_ok=True)
        partial = path + ".partial.png"
        if not cv2.imwrite(partial, synthetic_mosaic(size, seed), [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise RuntimeError(f"could not write {partial}")
        os.replace(partial, path)
    return path


def _calibration_tiles(image: np.ndarray, slice_size: int, overlap: float) -> List[Dict]:
    import torch

    from sarl.inference import tile_grid

    tiles = tile_grid(image.shape[0], image.shape[1], slice_size, overlap)
    picked = [tiles[i] for i in np.linspace(0, len(tiles) - 1, min(_CALIBRATION_TILES, len(tiles))).astype(int)]
    return [{"image": torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1].transpose(2, 0, 1))),
             "height": y1 - y0, "width": x1 - x0} for x0, y0, x1, y1 in picked]


def untrained_checkpoint(config_file: str, image_path: str, slice_size: int, overlap: float, seed: int,
                         out_path: str) -> str:
    """Write ``{"model": state_dict, "class_names": [...]}`` of the config's model initialised with ``seed``, its
    BatchNorm running statistics those of a few tiles of the image (one forward pass in inference mode, BatchNorm
    layers accumulating): nothing else of the initialisation changes. Returns ``out_path``."""
    import torch

    import sarl.data  # noqa: F401  (registers the datasets, whose metadata names the classes)
    from sarl.checkpoint import training_class_names
    from sarl.config import load_config
    from sarl.inference import build_inference_model, read_image

    image = read_image(image_path)
    if image is None:
        raise RuntimeError(f"cannot read {image_path}")
    torch.manual_seed(seed)
    # Unfused: the BatchNorm statistics are calibrated below and saved.
    cfg = load_config(config_file, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "TEST.FUSE_CONV_BN", "False"])
    model = build_inference_model(cfg)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: the statistics of exactly these tiles
        norm.train()
    with torch.no_grad():
        model(_calibration_tiles(image, slice_size, overlap))  # momentum is not saved: the file is unaffected
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    torch.save({"model": model.state_dict(), "class_names": training_class_names(cfg)}, out_path)
    return out_path


def resolve_detector(config_file: str, weights: Optional[str], demo_weights: str, image_path: str,
                     slice_size: int, overlap: float, seed: int, score_thresh: Optional[float],
                     output: str) -> Dict[str, object]:
    """The detector both sides load: ``config``, ``weights`` (a checkpoint file), ``score_thresh``, ``kind``
    ("weights", "make demo checkpoint" or "untrained") and a ``note`` for the report."""
    if weights:
        kind, note = "weights", f"trained weights {weights}"
    elif os.path.isfile(demo_weights):
        weights, kind, note = demo_weights, "make demo checkpoint", f"the checkpoint of `make demo` ({demo_weights})"
    else:
        name = f"untrained_seed{seed}_{os.path.splitext(os.path.basename(image_path))[0]}_{slice_size}px.pth"
        weights = untrained_checkpoint(config_file, image_path, slice_size, overlap, seed,
                                       os.path.join(output, name))
        kind = "untrained"
        note = (f"UNTRAINED model (seed {seed}; no --weights and no {demo_weights}): BatchNorm statistics from "
                f"{_CALIBRATION_TILES} tiles of the image, score threshold lowered so that there are detections "
                f"to compare; the detections mean nothing, only their agreement and the speed do")
    if score_thresh is None:
        score_thresh = UNTRAINED_SCORE_THRESH if kind == "untrained" else TRAINED_SCORE_THRESH
    return {"config": config_file, "weights": weights, "score_thresh": float(score_thresh), "kind": kind,
            "note": note}
