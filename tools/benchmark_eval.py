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
images/s after a warm-up. The library is ``sarl.benchmark.eval_speed`` and ``sarl.benchmark.mapper_speed``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict

from sarl.benchmark.common import machine_description, write_json
from sarl.benchmark.eval_speed import run_eval_benchmark
from sarl.benchmark.mapper_speed import run_mapper_benchmark


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
