"""Speed of the AI-TOD evaluation (``tools/benchmark_eval.py``): this project's C++ engine and faster-coco-eval vs
pycocotools on generated AI-TOD-like ground truth and detections.

Ground truth: 8 classes, object sides log-normal around 12 px, 800x800 images; detections: noisy copies of the
ground truth plus false positives, up to ``dets`` per image. Every engine gets the same inputs and parameters
(area ranges vt/t/s/m, maxDets 100/300/1500); the precision/recall arrays and every reported metric are checked
against pycocotools (max abs difference reported) with the time ratios. The timed part is evaluate() +
accumulate() (the engine ratio); building the inputs is timed separately, and ``evaluate_detections`` end to end
for the two fast engines.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Tuple

import numpy as np

from .common import format_table

__all__ = ["AITOD_CLASSES", "make_eval_case", "run_eval_benchmark"]

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
    """Time every engine on one generated case and check its arrays against pycocotools; prints a table and returns
    the figures. ``args``: ``images``, ``dets``, ``seed``, ``repeats``, ``eval_workers``, ``skip_pycocotools``."""
    from sarl.evaluation import build_eval_arrays, evaluate_detections, run_engine, summarize_aitod
    from sarl.evaluation.arrays import coco_dicts_from_arrays
    from sarl.evaluation.engines import gc_paused, native_engine_available

    gt_dicts, predictions = make_eval_case(args.images, args.dets, seed=args.seed)
    t0 = time.perf_counter()
    arrays, _ = build_eval_arrays(gt_dicts, predictions, len(AITOD_CLASSES))
    arrays_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with gc_paused():  # as evaluate_detections does
        gt, dt = coco_dicts_from_arrays(arrays)
    dicts_s = time.perf_counter() - t0
    runners = {}
    if native_engine_available():
        runners["sarl"] = lambda: run_engine(arrays, engine="sarl")
    # The oracles get the COCO dicts built above: the timed part is their evaluate() + accumulate().
    runners["faster_coco_eval"] = lambda: run_engine(arrays, engine="faster_coco_eval", coco_dicts=(gt, dt))
    if args.eval_workers > 1:
        # Category groups in forked processes: same arrays (checked below), more cores.
        runners[f"faster_coco_eval x{args.eval_workers} procs"] = lambda: run_engine(
            arrays, engine="faster_coco_eval", workers=args.eval_workers, coco_dicts=(gt, dt))
    if not args.skip_pycocotools:
        runners["pycocotools"] = lambda: run_engine(arrays, engine="pycocotools", coco_dicts=(gt, dt))
    times, outputs = {}, {}
    for engine, run in runners.items():
        runs = []
        for _ in range(1 if engine == "pycocotools" else args.repeats):
            start = time.perf_counter()
            with gc_paused():  # every engine alike
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
                  + f"; max |diff| precision {d['precision']:.1e}, recall {d['recall']:.1e}, "
                    f"metrics {d['metrics']:.1e}")
    return result
