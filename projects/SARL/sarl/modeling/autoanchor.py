"""AutoAnchor: fit YOLOv5's anchors to a training set's box sizes (``utils/autoanchor.py`` of
ultralytics/yolov5, rewritten without scipy).

The default anchors (10x13 ... 373x326 px) were fitted to COCO; AI-TOD's objects (mean 12.8 px,
many of 2-8 px) are far smaller, and a box smaller than ``anchor / ANCHOR_T`` can match no anchor
at all (:mod:`sarl.modeling.assigners.anchor_match`), so it never trains. The measure is the
**best possible recall** (BPR): the share of boxes that fit at least one anchor within the shape
ratio ``thr = 1 / ANCHOR_T``,
    ratio(box, anchor) = min over (w, h) of min(r, 1/r),   r = box_side / anchor_side
    BPR = mean over boxes of [ max over anchors of ratio > thr ]
:func:`check_anchors` computes it for the head's anchors on the letterbox-scaled training boxes
and, when it is below ``MODEL.YOLOV5.AUTOANCHOR_BPR_THRESH`` (0.98), fits new anchors with
:func:`fit_anchors` (k-means on whitened (w, h), then genetic evolution of YOLOv5's fitness
``mean(best * (best > thr))``) and keeps them if their BPR is higher. Anchors are sorted by area,
small to large over the levels (finest level first). All randomness comes from a seeded
generator, so the same data give the same anchors.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["anchor_ratio_metric", "best_possible_recall", "kmeans_wh", "fit_anchors",
           "letterbox_box_sizes", "check_anchors"]

logger = logging.getLogger(__name__)


def anchor_ratio_metric(wh: Tensor, anchors: Tensor) -> Tensor:
    """[N, K] shape fit of every box with every anchor: ``min`` over sides of ``min(r, 1/r)`` (in (0, 1]).

    Args:
        wh: [N, 2] box (w, h); anchors: [K, 2] anchor (w, h) (same units, positive).
    """
    ratio = wh[:, None] / anchors[None]
    return torch.minimum(ratio, 1.0 / ratio).amin(2)


def best_possible_recall(wh: Tensor, anchors: Tensor, anchor_t: float = 4.0) -> Tuple[float, float]:
    """(BPR, anchors above threshold per box) of ``anchors`` [K, 2] for boxes ``wh`` [N, 2].

    BPR is the share of boxes with at least one anchor within the shape ratio ``1/anchor_t``;
    an empty box set has BPR 1 (nothing to miss) and 0 anchors per box.
    """
    wh = torch.as_tensor(wh, dtype=torch.float32).reshape(-1, 2)
    anchors = torch.as_tensor(anchors, dtype=torch.float32).reshape(-1, 2)
    if wh.shape[0] == 0:
        return 1.0, 0.0
    fit = anchor_ratio_metric(wh, anchors)
    thr = 1.0 / anchor_t
    bpr = (fit.amax(1) > thr).float().mean().item()
    anchors_above = (fit > thr).float().sum(1).mean().item()
    return bpr, anchors_above


def _anchor_fitness(wh: np.ndarray, anchors: np.ndarray, thr: float) -> float:
    """YOLOv5's evolution fitness: mean best ratio, counting only boxes above the threshold.

    numpy on purpose: called once per generation on small arrays, where torch's intra-op
    threads cost more than they bring on a busy machine."""
    ratio = wh[:, None] / np.asarray(anchors, dtype=np.float32)[None]
    best = np.minimum(ratio, 1.0 / ratio).min(2).max(1)
    return float((best * (best > thr)).mean())


def kmeans_wh(points: np.ndarray, n: int, *, iters: int = 30, restarts: int = 5,
              rng: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, float]:
    """Lloyd k-means of ``points`` [N, D] into ``n`` centres (k-means++ seeding, best of ``restarts``).

    Returns (centres [n, D], mean distance of the points to their centre). Requires ``N >= n``.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or len(points) < n or n < 1:
        raise ValueError(f"kmeans_wh needs [N >= n, D] points, got shape {points.shape} for n = {n}")
    rng = rng if rng is not None else np.random.default_rng(0)
    best_centres, best_distortion = None, np.inf
    for _ in range(restarts):
        # k-means++: each next centre drawn with probability proportional to squared distance.
        centres = [points[rng.integers(len(points))]]
        d2 = ((points - centres[0]) ** 2).sum(1)
        for _ in range(1, n):
            total = d2.sum()
            index = rng.choice(len(points), p=d2 / total) if total > 0 else rng.integers(len(points))
            centres.append(points[index])
            d2 = np.minimum(d2, ((points - points[index]) ** 2).sum(1))
        centres = np.stack(centres)
        for _ in range(iters):
            dist = ((points[:, None] - centres[None]) ** 2).sum(2)  # [N, n]
            label = dist.argmin(1)
            new_centres = centres.copy()
            for k in range(n):
                members = points[label == k]
                if len(members):  # an empty cluster keeps its centre
                    new_centres[k] = members.mean(0)
            if np.allclose(new_centres, centres):
                centres = new_centres
                break
            centres = new_centres
        distortion = np.sqrt(((points[:, None] - centres[None]) ** 2).sum(2).min(1)).mean()
        if distortion < best_distortion:
            best_centres, best_distortion = centres, distortion
    return best_centres, float(best_distortion)


def fit_anchors(wh: np.ndarray, n: int, img_size: int, gen: int = 1000, *, anchor_t: float = 4.0,
                seed: int = 0, min_size: float = 2.0, max_boxes: int = 50_000) -> np.ndarray:
    """Anchors fitted to box sizes, as YOLOv5's ``kmean_anchors``.

    Args:
        wh: [N, 2] box (w, h) in pixels of the (letterboxed) training images.
        n: number of anchors (levels x anchors per level).
        img_size: training image size (for the random start when there are fewer boxes than anchors).
        gen: generations of the genetic evolution.
        anchor_t: the matching's shape-ratio bound (fitness threshold ``1/anchor_t``).
        seed: seed of this function's own generator.
        min_size: boxes with both sides below it are left out of the fit (YOLOv5: 2 px), and
            anchors are kept at least this large.
        max_boxes: fit on a random sample of at most this many boxes (YOLOv5 uses all: AI-TOD's
            700k boxes would cost minutes per 1000 generations; 50k give the same anchors to
            within the evolution's noise). The caller's BPR is still measured on every box.
    Returns:
        [n, 2] float32 anchors (w, h), sorted by area, small to large.
    """
    wh_all = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(wh_all).all() or (wh_all < 0).any():
        raise ValueError("fit_anchors: wh must hold finite, non-negative (w, h) pairs")
    rng = np.random.default_rng(seed)
    thr = 1.0 / anchor_t
    tiny = int((wh_all < 3.0).any(1).sum())
    if tiny:
        logger.info("AutoAnchor: %d of %d boxes are smaller than 3 px", tiny, len(wh_all))
    wh_fit = wh_all[(wh_all >= min_size).any(1)]
    if len(wh_fit) > max_boxes:
        wh_fit = wh_fit[rng.choice(len(wh_fit), max_boxes, replace=False)]

    if len(wh_fit) >= n:
        spread = wh_fit.std(0)
        spread[spread == 0] = 1.0  # identical sizes: whitening would divide by zero
        centres, _ = kmeans_wh(wh_fit / spread, n, rng=rng)
        anchors = centres * spread
    else:  # too few boxes for k-means: random start, as YOLOv5
        anchors = np.sort(rng.random(n * 2)).reshape(n, 2) * img_size
    anchors = np.clip(anchors, min_size, None)

    wh_fit32 = wh_fit.astype(np.float32)
    if len(wh_fit):
        # Genetic evolution: mutate each anchor side with probability 0.9 by a random factor
        # (spread 0.1 scaled by a per-generation uniform draw), keep the child when fitter.
        fitness = _anchor_fitness(wh_fit32, anchors, thr)
        mutation_prob, sigma = 0.9, 0.1
        for _ in range(gen):
            factor = np.ones_like(anchors)
            while (factor == 1).all():  # mutate until something changes
                factor = ((rng.random(anchors.shape) < mutation_prob) * rng.random()
                          * rng.standard_normal(anchors.shape) * sigma + 1).clip(0.3, 3.0)
            child = (anchors * factor).clip(min=min_size)
            child_fitness = _anchor_fitness(wh_fit32, child, thr)
            if child_fitness > fitness:
                anchors, fitness = child, child_fitness
    anchors = anchors[np.argsort(anchors.prod(1))]
    return anchors.astype(np.float32)


def letterbox_box_sizes(dataset_dicts: Sequence[dict], img_size: int, *,
                        scale_jitter: Tuple[float, float] = (0.9, 1.1), seed: int = 0) -> np.ndarray:
    """[N, 2] (w, h) of every box of ``dataset_dicts`` after the letterbox resize to ``img_size``
    (longest side = img_size), times a per-image random scale in ``scale_jitter`` (YOLOv5's
    augmentation allowance; ``(1, 1)`` switches it off). Crowd boxes (``iscrowd`` / ``ignore``: not training
    targets, :mod:`sarl.data.annotations`) are skipped; ``difficult`` ones count.

    Raises ValueError naming the record when an image size or a box is missing or invalid.
    """
    from sarl.data.annotations import annotation_arrays  # sarl.data (detectron2) only needed here

    rng = np.random.default_rng(seed)
    sizes: List[np.ndarray] = []
    for index, record in enumerate(dataset_dicts):
        name = record.get("file_name", f"record {index}")
        height, width = record.get("height"), record.get("width")
        if not height or not width or height <= 0 or width <= 0:
            raise ValueError(f"dataset_dicts[{index}] ({name}): 'height' and 'width' must be positive, "
                             f"got {height} x {width}")
        scale = img_size / max(height, width) * rng.uniform(*scale_jitter)
        boxes = annotation_arrays(record, where=f"dataset_dicts[{index}] ({name})", require_category=False)
        record_sizes = boxes.without_crowd().boxes_xywh[:, 2:]
        if len(record_sizes):
            sizes.append(record_sizes * scale)
    return np.concatenate(sizes) if sizes else np.zeros((0, 2))


def check_anchors(head, dataset_dicts: Sequence[dict], img_size: int, *, gen: int = 1000,
                  bpr_thresh: Optional[float] = None, anchor_t: Optional[float] = None,
                  seed: int = 0) -> Dict[str, object]:
    """Check the head's anchors against the training boxes; refit them when they recall too few.

    Args:
        head: a module with an ``anchors`` buffer [nl, na, 2] (input pixels), e.g. ``YOLOv5Head``;
            its ``anchor_t`` and ``autoanchor_bpr_thresh`` attributes are the defaults of the options.
        dataset_dicts: Detectron2 dataset dicts of the training set.
        img_size: training image size (letterbox target, ``INPUT.YOLO.IMG_SIZE``).
        gen: evolution generations (``MODEL.YOLOV5.AUTOANCHOR_GENERATIONS``).
    Returns:
        dict with ``bpr_before``, ``bpr_after``, ``anchors_per_box_before``/``after``, ``replaced``
        (bool) and ``anchors`` (the anchors in use, [nl, na, 2] list).
    """
    anchor_t = float(anchor_t if anchor_t is not None else getattr(head, "anchor_t", 4.0))
    bpr_thresh = float(bpr_thresh if bpr_thresh is not None else getattr(head, "autoanchor_bpr_thresh", 0.98))
    anchors_buffer: Tensor = head.anchors
    wh = letterbox_box_sizes(dataset_dicts, img_size, seed=seed)
    current = anchors_buffer.detach().cpu().float().reshape(-1, 2)
    bpr, per_box = best_possible_recall(torch.as_tensor(wh), current, anchor_t)
    result: Dict[str, object] = {"bpr_before": bpr, "anchors_per_box_before": per_box, "bpr_after": bpr,
                                 "anchors_per_box_after": per_box, "replaced": False}
    logger.info("AutoAnchor: %.2f anchors/box, best possible recall %.4f on %d boxes (threshold %.2f)",
                per_box, bpr, len(wh), bpr_thresh)
    if bpr >= bpr_thresh or len(wh) == 0:
        logger.info("AutoAnchor: current anchors fit the data; kept")
    else:
        logger.info("AutoAnchor: anchors fit the data poorly; fitting %d anchors (k-means + %d generations)",
                    current.shape[0], gen)
        fitted = torch.as_tensor(fit_anchors(wh, current.shape[0], img_size, gen, anchor_t=anchor_t, seed=seed))
        new_bpr, new_per_box = best_possible_recall(torch.as_tensor(wh), fitted, anchor_t)
        if new_bpr > bpr:
            with torch.no_grad():
                anchors_buffer.copy_(fitted.view_as(anchors_buffer).to(anchors_buffer))
            result.update(bpr_after=new_bpr, anchors_per_box_after=new_per_box, replaced=True)
            logger.info("AutoAnchor: new anchors %s: %.2f anchors/box, best possible recall %.4f",
                        [[round(v, 1) for v in pair] for pair in fitted.tolist()], new_per_box, new_bpr)
        else:
            logger.info("AutoAnchor: fitted anchors recall no more (%.4f <= %.4f); kept the current ones",
                        new_bpr, bpr)
    result["anchors"] = anchors_buffer.detach().cpu().tolist()
    return result
