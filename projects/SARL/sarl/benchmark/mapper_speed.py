"""Speed of the YOLO training mapper (``tools/benchmark_eval.py --mapper``): generated 800x800 aerial-like PNGs
(smooth texture, tiny objects) on disk, detectron2's train loader with ``YOLOMapper`` (mosaic 1.0, mixup 1.0, all
default augmentation) and worker processes; images/s in process and through the loader, after a warm-up.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Dict, List

import numpy as np

from .common import format_table

__all__ = ["run_mapper_benchmark"]


def _write_mapper_images(folder: str, count: int, size: int, seed: int) -> List[Dict[str, Any]]:
    """Aerial-like PNGs: smooth texture (so PNG decoding costs what real imagery costs) with tiny objects."""
    import cv2

    rng = np.random.default_rng(seed)
    dicts = []
    for index in range(count):
        low = rng.integers(60, 200, (size // 16, size // 16, 3)).astype(np.uint8)
        image = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
        image = cv2.add(image, rng.integers(0, 12, image.shape, dtype=np.uint8))
        annotations = []
        for _ in range(60):
            w, h = np.clip(np.exp(rng.normal(np.log(11.0), 0.5, 2)), 2, 60)
            x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            cv2.rectangle(image, (int(x), int(y)), (int(x + w), int(y + h)), (int(rng.integers(0, 255)),) * 3, -1)
            annotations.append({"bbox": [x, y, w, h], "bbox_mode": 1, "category_id": int(rng.integers(0, 8)),
                                "iscrowd": 0})
        path = os.path.join(folder, f"bench_{index}.png")
        cv2.imwrite(path, image)
        dicts.append({"file_name": path, "image_id": index, "height": size, "width": size,
                      "annotations": annotations})
    return dicts


def run_mapper_benchmark(args) -> Dict[str, Any]:
    """Images/s of ``YOLOMapper`` in process and through the train loader; prints a table and returns the figures.
    ``args``: ``img_size``, ``seed``, ``mapper_workers``, ``mapper_samples``."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.data import build_detection_train_loader
    from detectron2.data.samplers import TrainingSampler

    from sarl.config import add_sarl_config
    from sarl.data.mapper import YOLOMapper

    cfg = add_sarl_config(get_cfg())
    cfg.INPUT.YOLO.IMG_SIZE = args.img_size
    cfg.INPUT.YOLO.SEED = args.seed
    torch.manual_seed(args.seed)
    result: Dict[str, Any] = {"img_size": args.img_size, "workers": args.mapper_workers,
                              "source_image_size": 800, "mosaic_prob": cfg.INPUT.YOLO.MOSAIC_PROB,
                              "mixup_prob": cfg.INPUT.YOLO.MIXUP_PROB}
    with tempfile.TemporaryDirectory() as folder:
        dicts = _write_mapper_images(folder, 16, 800, args.seed)
        mapper = YOLOMapper(cfg, True, dicts)
        # In-process figure: the cost of one sample without loader overhead.
        for record in dicts[:2]:
            mapper(dict(record))
        start = time.perf_counter()
        for i in range(args.mapper_samples // 4):
            mapper(dict(dicts[i % len(dicts)]))
        per_sample = (time.perf_counter() - start) / (args.mapper_samples // 4)
        result["in_process_images_per_s"] = 1.0 / per_sample

        batch = 8
        loader = build_detection_train_loader(dicts, mapper=mapper, sampler=TrainingSampler(len(dicts), seed=args.seed),
                                              total_batch_size=batch, aspect_ratio_grouping=False,
                                              num_workers=args.mapper_workers)
        iterator = iter(loader)
        for _ in range(2):  # warm-up: worker start and the first prefetched batches
            next(iterator)
        batches = max(args.mapper_samples // batch, 1)
        start = time.perf_counter()
        boxes = 0
        for _ in range(batches):
            boxes += sum(len(sample["instances"]) for sample in next(iterator))
        elapsed = time.perf_counter() - start
        del iterator
    result["loader_images_per_s"] = batches * batch / elapsed
    result["mean_boxes_per_sample"] = boxes / (batches * batch)
    print(format_table([{"setting": "in-process (1 core)", "images/s": result["in_process_images_per_s"]},
                        {"setting": f"loader, {args.mapper_workers} workers",
                         "images/s": result["loader_images_per_s"]}],
                       ["setting", "images/s"],
                       title=f"YOLOMapper, mosaic + mixup + affine + HSV + flip at {args.img_size}, 800x800 sources"))
    return result
