#!/usr/bin/env python
"""Speed of the AI-TOD evaluation (this project's C++ engine and faster-coco-eval vs pycocotools) and of the YOLO
training mapper.

    python tools/benchmark_eval.py                      # 100 images x 1500 detections, every engine
    python tools/benchmark_eval.py --images 20 --json output/bench/eval.json
    python tools/benchmark_eval.py --mapper             # + mapper images/s, mosaic at 640, 2 workers
    python tools/benchmark_eval.py --mapper --no-eval --mapper-workers 2 --img-size 640

Evaluation: generated AI-TOD-like ground truth (8 classes, object sides log-normal around 12 px, 800x800 images)
and detections (noisy copies of the ground truth plus false positives) up to ``--dets`` per image. Every engine
gets the same inputs and parameters (area ranges vt/t/s/m, maxDets 100/300/1500); the script checks that the
precision/recall arrays and every reported metric agree with pycocotools (max abs difference printed) and prints
the time ratios. The timed part is evaluate() + accumulate() (the engine ratio); building the inputs is timed
separately (columns: shared; COCO dicts: for faster-coco-eval and pycocotools), and ``evaluate_detections`` end to
end is timed for the two fast engines.

Mapper: generated 800x800 aerial-like PNGs (smooth texture, tiny objects) on disk, detectron2's train loader with
YOLOMapper (mosaic 1.0, mixup 1.0, all default augmentation), ``--mapper-workers`` worker processes; prints
images/s after a warm-up.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

import numpy as np

# Imported as ``benchmarks.common`` from this folder: a ``tools`` package in site-packages (shipped by some
# detectron2 wheels) shadows ``tools.benchmarks``.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmarks.common import format_table, machine_description, write_json  # noqa: E402

AITOD_CLASSES = ["airplane", "bridge", "storage-tank", "ship", "swimming-pool", "vehicle", "person", "wind-mill"]


def make_eval_case(num_images: int, dets_per_image: int, seed: int = 0,
                   gt_per_image: int = 50, size: int = 800) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """AI-TOD-like ground truth and ``dets_per_image`` detections per image."""
    rng = np.random.default_rng(seed)
    gt_dicts, predictions = [], []
    for index in range(num_images):
        n = gt_per_image
        wh = np.clip(np.exp(rng.normal(np.log(11.0), 0.6, (n, 2))), 2.0, 120.0)
        xy = rng.uniform(0, size - wh)
        classes = rng.integers(0, len(AITOD_CLASSES), n)
        gt_dicts.append({
            "image_id": index, "file_name": f"{index}.png", "height": size, "width": size,
            "annotations": [{"bbox": [*xy[j], *wh[j]], "bbox_mode": 1, "category_id": int(classes[j]), "iscrowd": 0}
                            for j in range(n)],
        })
        copies = 4  # several jittered copies of each object: duplicates, as a detector before good NMS
        gt_xyxy = np.repeat(np.concatenate([xy, xy + wh], 1), copies, axis=0)
        jitter = rng.normal(0, 0.1, gt_xyxy.shape) * np.repeat(np.concatenate([wh, wh], 1), copies, axis=0)
        tp = gt_xyxy + jitter
        fp_count = max(dets_per_image - len(tp), 0)
        fp_wh = np.clip(np.exp(rng.normal(np.log(11.0), 0.7, (fp_count, 2))), 1.0, 150.0)
        fp_xy = rng.uniform(0, size - fp_wh)
        boxes = np.concatenate([tp, np.concatenate([fp_xy, fp_xy + fp_wh], 1)])[:dets_per_image]
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)
        det_classes = np.concatenate([np.repeat(classes, copies), rng.integers(0, len(AITOD_CLASSES), fp_count)])
        scores = np.concatenate([rng.uniform(0.2, 1.0, len(tp)), rng.uniform(0.0, 0.7, fp_count)])
        predictions.append({"image_id": index, "boxes": boxes, "scores": scores[:dets_per_image],
                            "classes": det_classes[:dets_per_image]})
    return gt_dicts, predictions


def run_eval_benchmark(args) -> Dict[str, Any]:
    from sarl.evaluation.aitod_evaluator import (
        _gc_paused,
        build_eval_arrays,
        coco_dicts_from_arrays,
        evaluate_detections,
        native_engine_available,
        run_coco_engine,
        run_coco_engine_parallel,
        run_native_engine,
        summarize_aitod,
    )

    gt_dicts, predictions = make_eval_case(args.images, args.dets, seed=args.seed)
    t0 = time.perf_counter()
    arrays, _ = build_eval_arrays(gt_dicts, predictions, len(AITOD_CLASSES))
    arrays_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with _gc_paused():  # as evaluate_detections does
        gt, dt = coco_dicts_from_arrays(arrays)
    dicts_s = time.perf_counter() - t0
    runners = {}
    if native_engine_available():
        runners["sarl"] = lambda: run_native_engine(arrays)
    runners["faster_coco_eval"] = lambda: run_coco_engine(gt, dt, engine="faster_coco_eval")
    if args.eval_workers > 1:
        # Category groups in forked processes: same arrays (checked below), more cores.
        runners[f"faster_coco_eval x{args.eval_workers} procs"] = lambda: run_coco_engine_parallel(
            gt, dt, workers=args.eval_workers)
    if not args.skip_pycocotools:
        runners["pycocotools"] = lambda: run_coco_engine(gt, dt, engine="pycocotools")
    times, outputs = {}, {}
    for engine, run in runners.items():
        runs = []
        for _ in range(1 if engine == "pycocotools" else args.repeats):
            start = time.perf_counter()
            with _gc_paused():  # every engine alike
                outputs[engine] = run()
            runs.append(time.perf_counter() - start)
        times[engine] = float(np.median(runs))
        print(f"[eval] {engine}: {times[engine]:.3f} s ({len(runs)} run(s), median)", flush=True)
    metrics = {e: summarize_aitod(o, AITOD_CLASSES) for e, o in outputs.items()}
    # What a user waits for: evaluate_detections() from dataset dicts and per-image arrays, end to end.
    end_to_end = {}
    for engine in [e for e in ("sarl", "faster_coco_eval") if e in runners]:
        start = time.perf_counter()
        evaluate_detections(gt_dicts, predictions, AITOD_CLASSES, engine=engine)
        end_to_end[engine] = time.perf_counter() - start
        print(f"[eval] evaluate_detections end to end ({engine}): {end_to_end[engine]:.3f} s", flush=True)
    result: Dict[str, Any] = {
        "images": args.images, "dets_per_image": args.dets, "gt_per_image": 50,
        "detections_total": int(len(arrays.dt_image)), "build_arrays_s": arrays_s, "build_coco_dicts_s": dicts_s,
        "evaluate_detections_end_to_end_s": end_to_end, "time_s": times,
        "metrics": {e: dict(m) for e, m in metrics.items()},
    }
    if "pycocotools" in outputs:
        reference = outputs["pycocotools"]
        # pycocotools end to end: the same arrays, its COCO dicts, its evaluate + accumulate.
        pycocotools_end_to_end = times["pycocotools"] + arrays_s + dicts_s
        result["pycocotools_end_to_end_s"] = pycocotools_end_to_end
        result["pycocotools_s_per_image"] = times["pycocotools"] / args.images
        for engine in outputs:
            if engine == "pycocotools":
                continue
            diffs = {k: float(np.max(np.abs(outputs[engine][k] - reference[k]))) for k in ("precision", "recall")}
            diffs["metrics"] = float(max(abs(metrics[engine][k] - metrics["pycocotools"][k])
                                         for k in metrics["pycocotools"] if np.isfinite(metrics["pycocotools"][k])))
            result[f"max_abs_diff[{engine}]"] = diffs
            result[f"speedup[{engine}]"] = times["pycocotools"] / times[engine]
            if engine in end_to_end:
                result[f"speedup_end_to_end[{engine}]"] = pycocotools_end_to_end / end_to_end[engine]
    rows = [{"engine": e, "seconds": times[e], "s/image": times[e] / args.images,
             "vs pycocotools": result.get(f"speedup[{e}]", 1.0 if e == "pycocotools" else float("nan")),
             "end to end s": end_to_end.get(e, float("nan")),
             "AP": metrics[e]["AP"], "AP_vt": metrics[e]["AP_vt"]} for e in runners]
    print(format_table(rows, ["engine", "seconds", "s/image", "vs pycocotools", "end to end s", "AP", "AP_vt"],
                       title=f"AI-TOD eval, {args.images} images x {args.dets} detections (evaluate + accumulate)"))
    for engine in outputs:
        if f"max_abs_diff[{engine}]" in result:
            d = result[f"max_abs_diff[{engine}]"]
            end = result.get(f"speedup_end_to_end[{engine}]")
            print(f"{engine}: {result[f'speedup[{engine}]']:.1f}x pycocotools"
                  + (f" ({end:.1f}x end to end)" if end else "")
                  + f"; max |diff| precision {d['precision']:.1e}, recall {d['recall']:.1e}, metrics {d['metrics']:.1e}")
    return result


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100, help="images in the evaluation case")
    parser.add_argument("--dets", type=int, default=1500, help="detections per image")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of faster_coco_eval (median)")
    parser.add_argument("--skip-pycocotools", action="store_true", help="time faster_coco_eval only")
    parser.add_argument("--eval-workers", type=int, default=1,
                        help="also time faster_coco_eval split by category over this many processes")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation benchmark")
    parser.add_argument("--mapper", action="store_true", help="also measure the mapper's images/s")
    parser.add_argument("--mapper-workers", type=int, default=2)
    parser.add_argument("--mapper-samples", type=int, default=64)
    parser.add_argument("--img-size", type=int, default=640)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write all figures to this path")
    args = parser.parse_args(argv)

    payload: Dict[str, Any] = {"machine": machine_description("cpu"), "results": {}}
    if not args.no_eval:
        payload["results"]["eval"] = run_eval_benchmark(args)
    if args.mapper:
        payload["results"]["mapper"] = run_mapper_benchmark(args)
    if args.json:
        write_json(args.json, payload)
        print(f"[benchmark] wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
