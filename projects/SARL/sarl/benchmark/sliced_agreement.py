"""How far two detection sets of the same image agree (``tools/benchmark_sliced.py``: this project's sliced
predictor against SAHI running the same detector).

Matching: one-to-one, within each class, greedy by score as COCO matches detections to ground truth: the
detections of set ``a`` best first, each taking the unmatched detection of set ``b`` (same class) it overlaps
most, when that IoU is at least ``iou_threshold``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torchvision.ops import box_iou

from ..ops.box_iou import paired_box_iou

__all__ = ["Detections", "match_detections"]

# Boxes of set ``a`` per IoU block (neighbours along x): bounds the IoU matrix of a block.
_ROWS_PER_BLOCK = 256


@dataclass
class Detections:
    """Detections of one image: boxes [N, 4] XYXY in image pixels, scores [N], classes [N] (integer ids)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.classes):
            raise ValueError(f"boxes, scores and classes differ in length: {len(self.boxes)}, {len(self.scores)}, "
                             f"{len(self.classes)}")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def from_npz(cls, path: str) -> "Detections":
        with np.load(path) as data:
            return cls(data["boxes"], data["scores"], data["classes"])

    def save_npz(self, path: str) -> None:
        np.savez(path, boxes=self.boxes.astype(np.float32), scores=self.scores.astype(np.float32),
                 classes=self.classes)


def _overlapping_pairs(a: np.ndarray, b: np.ndarray, iou_threshold: float) -> Tuple[np.ndarray, ...]:
    """Pairs ``(i, j, iou)`` of boxes a [N, 4] and b [M, 4] with IoU >= ``iou_threshold`` (> 0). Boxes of a are
    taken in blocks of neighbours along x, each against the boxes of b within its x range only, so large sets
    never build the [N, M] IoU matrix."""
    order_a, order_b = np.argsort(a[:, 0], kind="stable"), np.argsort(b[:, 0], kind="stable")
    b_x1 = b[order_b, 0]
    found: List[Tuple[np.ndarray, ...]] = []
    for start in range(0, len(order_a), _ROWS_PER_BLOCK):
        rows = order_a[start:start + _ROWS_PER_BLOCK]
        cols = order_b[:np.searchsorted(b_x1, a[rows, 2].max(), side="right")]
        cols = cols[b[cols, 2] >= a[rows, 0].min()]
        if len(cols) == 0:
            continue
        ious = box_iou(torch.from_numpy(a[rows]), torch.from_numpy(b[cols])).numpy()
        r, c = np.nonzero(ious >= iou_threshold)
        found.append((rows[r], cols[c], ious[r, c]))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return tuple(np.concatenate(parts) for parts in zip(*found))


def _match_class(a: Detections, b: Detections, iou_threshold: float) -> np.ndarray:
    """[len(a)] index into ``b`` of each detection's match, -1 where none (all of one class)."""
    match = np.full(len(a), -1, dtype=np.int64)
    if len(a) == 0 or len(b) == 0:
        return match
    ia, jb, iou = _overlapping_pairs(a.boxes, b.boxes, iou_threshold)
    rank = np.empty(len(a), np.int64)
    rank[np.argsort(-a.scores, kind="stable")] = np.arange(len(a))
    # Detections of a best first; each one's candidates by IoU, best first (ties: the lower index of b).
    order = np.lexsort((jb, -iou, rank[ia]))
    matched_b = np.zeros(len(b), dtype=bool)
    for i, j in zip(ia[order].tolist(), jb[order].tolist()):
        if match[i] < 0 and not matched_b[j]:
            match[i] = j
            matched_b[j] = True
    return match


def match_detections(a: Detections, b: Detections, iou_threshold: float = 0.5) -> Dict[str, Any]:
    """Agreement of detection sets ``a`` and ``b`` of one image.

    Returns:
        ``count_a``, ``count_b``; ``matched`` (pairs); ``matched_fraction_a`` / ``_b`` (matched / count, None
        for an empty set); over the matched pairs: ``mean_iou``, ``mean_abs_score_diff``,
        ``max_abs_score_diff``, ``max_box_diff_px`` (largest coordinate difference); None without pairs.
    """
    if not iou_threshold > 0:
        raise ValueError(f"iou_threshold must be > 0, got {iou_threshold}")
    pairs_a, pairs_b = [], []
    for cls in np.union1d(a.classes, b.classes):
        in_a, in_b = np.flatnonzero(a.classes == cls), np.flatnonzero(b.classes == cls)
        sub_a = Detections(a.boxes[in_a], a.scores[in_a], a.classes[in_a])
        sub_b = Detections(b.boxes[in_b], b.scores[in_b], b.classes[in_b])
        match = _match_class(sub_a, sub_b, iou_threshold)
        found = match >= 0
        pairs_a.append(in_a[found])
        pairs_b.append(in_b[match[found]])
    ia = np.concatenate(pairs_a) if pairs_a else np.zeros(0, np.int64)
    ib = np.concatenate(pairs_b) if pairs_b else np.zeros(0, np.int64)

    def fraction(count: int) -> Optional[float]:
        return len(ia) / count if count else None

    out: Dict[str, Any] = {"iou_threshold": iou_threshold, "count_a": len(a), "count_b": len(b),
                           "matched": int(len(ia)), "matched_fraction_a": fraction(len(a)),
                           "matched_fraction_b": fraction(len(b)), "mean_iou": None, "mean_abs_score_diff": None,
                           "max_abs_score_diff": None, "max_box_diff_px": None}
    if len(ia):
        ious = paired_box_iou(torch.from_numpy(a.boxes[ia]), torch.from_numpy(b.boxes[ib]), eps=0.0).numpy()
        score_diff = np.abs(a.scores[ia] - b.scores[ib])
        out.update({"mean_iou": float(ious.mean()), "mean_abs_score_diff": float(score_diff.mean()),
                    "max_abs_score_diff": float(score_diff.max()),
                    "max_box_diff_px": float(np.abs(a.boxes[ia] - b.boxes[ib]).max())})
    return out
