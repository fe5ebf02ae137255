"""The peer's worker of ``tools/benchmark_real.py``, run by the peer environment's python
(``python -m sarl.benchmark.peer_worker --data ... --result ...``): trains Ultralytics YOLOv8n from scratch for a
wall-clock budget, predicts the validation frames and writes the raw boxes, its timings and Ultralytics' own
metrics to ``--result``. Only :func:`run_worker` imports ultralytics (and torch); the module's top level needs the
standard library only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

from .peer_results import ultralytics_result_to_raw

PEER_MODEL = "yolov8n.yaml"  # from scratch: the architecture only, no weights
PEER_IMGSZ = 640
PEER_BATCH = 8
PEER_CONF = 0.001
# NMS IoU at prediction: 0.65, the NMS threshold of this project's recipes (MODEL.YOLO.NMS_THRESH_TEST), rather
# than Ultralytics' val default 0.7, so both sides' detections go through the same NMS before scoring.
PEER_IOU = 0.65
PEER_MAX_DET = 3000
# Images predicted in the validation folder (the worker does not import sarl.inference: no detectron2 there).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _median(values: Sequence[float]) -> Optional[float]:
    values = sorted(values)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def run_worker(args: argparse.Namespace) -> Dict[str, Any]:
    import torch
    import ultralytics
    from ultralytics import YOLO, settings
    from ultralytics.utils import torch_utils

    settings.update({"sync": False})
    # select_device() sets torch's threads to ultralytics.utils.NUM_THREADS = min(8, cores - 1): give the peer
    # the same threads as this project's side instead.
    torch_utils.NUM_THREADS = args.threads
    torch.set_num_threads(args.threads)

    stamps: Dict[str, Any] = {"batch_end": [], "epoch_start": [], "threads": None, "train_start": None}

    def on_train_start(trainer):
        stamps["train_start"] = time.perf_counter()
        stamps["threads"] = torch.get_num_threads()

    def on_train_epoch_start(trainer):
        stamps["epoch_start"].append(time.perf_counter())
        stamps["batch_end"].append([])

    def on_train_batch_end(trainer):
        stamps["batch_end"][-1].append(time.perf_counter())

    model = YOLO(PEER_MODEL)
    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_train_epoch_start", on_train_epoch_start)
    model.add_callback("on_train_batch_end", on_train_batch_end)
    start = time.perf_counter()
    model.train(data=args.data, time=args.budget_min / 60.0, imgsz=PEER_IMGSZ, batch=PEER_BATCH, device="cpu",
                workers=0, nbs=PEER_BATCH, optimizer="auto", amp=False, plots=False, val=False, seed=args.seed,
                deterministic=True, pretrained=False, project=args.project, name="train", exist_ok=True,
                verbose=True)
    process_train_s = time.perf_counter() - start
    trainer = model.trainer
    # Step times: between consecutive batch ends of an epoch, plus the first batch from its epoch start (each
    # includes loading the batch, as detectron2's iteration time does).
    # The last batch of an epoch is short (20 images = 8 + 8 + 4): rates are per step, images / seconds.
    images = len(trainer.train_loader.dataset)
    batch = int(trainer.batch_size)
    steps, sizes = [], []
    for epoch_start, ends in zip(stamps["epoch_start"], stamps["batch_end"]):
        previous = epoch_start
        for index, end in enumerate(ends):
            steps.append(end - previous)
            sizes.append(max(1, min(batch, images - index * batch)))
            previous = end
    rate = _median([n / t for n, t in zip(sizes, steps) if t > 0])
    all_ends = [t for ends in stamps["batch_end"] for t in ends]
    train_loop_s = (all_ends[-1] - stamps["train_start"]) if all_ends and stamps["train_start"] else None
    step_median = _median(steps)
    native = {k: float(v) for k, v in (getattr(trainer, "metrics", None) or {}).items()
              if isinstance(v, (int, float))}

    weights = str(trainer.last)
    predict_start = time.perf_counter()
    predictor = YOLO(weights)
    images = sorted(os.path.join(args.val_images, f) for f in os.listdir(args.val_images)
                    if f.lower().endswith(IMAGE_EXTENSIONS))
    raw = []
    for result in predictor.predict(source=images, imgsz=PEER_IMGSZ, conf=PEER_CONF, iou=PEER_IOU,
                                    max_det=PEER_MAX_DET, device="cpu", stream=True, verbose=False, save=False):
        raw.append(ultralytics_result_to_raw(result))
    return {
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "torch_threads": stamps["threads"],
        "weights": weights,
        "epochs_done": len(stamps["epoch_start"]),
        "iterations_done": len(steps),
        "train_images_seen": sum(sizes),
        "images_per_iteration": batch,
        "step_time_median_s": step_median,
        "train_images_per_s": rate,
        "train_loop_s": train_loop_s,
        "train_call_s": process_train_s,
        "predict_s": time.perf_counter() - predict_start,
        "native_val_metrics": native,
        "predict_settings": {"imgsz": PEER_IMGSZ, "conf": PEER_CONF, "iou": PEER_IOU, "max_det": PEER_MAX_DET,
                             "rect": True},
        "raw": raw,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="peer worker of tools/benchmark_real.py (peer environment only)")
    parser.add_argument("--data", required=True, help="data.yaml of the YOLO layout")
    parser.add_argument("--val-images", required=True, help="folder of the validation images to predict")
    parser.add_argument("--project", required=True, help="Ultralytics' runs folder")
    parser.add_argument("--result", required=True, help="JSON to write")
    parser.add_argument("--budget-min", type=float, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run_worker(args)
    with open(args.result, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
