#!/usr/bin/env python
"""Run a trained SARL detector on images: draw boxes (class, score) and write COCO-json results.

    python tools/predict.py --config-file configs/aitod/sarl_yolox_aitod.yaml --input img.png folder/ "tiles/*.tif" \
        --output output/predict MODEL.WEIGHTS output/model_final.pth
    # large aerial images: 800 px tiles with 20% overlap, 4 tiles per batch, merged by class-wise NMS
    python tools/predict.py ... --slice 800 --overlap 0.2 --batch 4

Images larger than ``--slice`` (when given) go through :class:`sarl.inference.SlicedPredictor` at native
resolution; others are letterboxed to ``INPUT.YOLO.IMG_SIZE`` as in evaluation. An unreadable image is skipped
with a warning naming it, and counted in the summary. Outputs: ``<output>/vis/<name>.jpg`` and
``<output>/results.json`` (COCO detection format; ``image_id`` is the file's name). The Python API is
:class:`sarl.inference.Predictor`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import cv2
from detectron2.utils.logger import setup_logger

from sarl.config import UserError, load_config
from sarl.inference import Predictor, draw, expand_inputs, read_image

logger = logging.getLogger("sarl.predict")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="images, folders or glob patterns")
    parser.add_argument("--output", default="output/predict", help="folder for vis/ and results.json")
    parser.add_argument("--slice", type=int, default=0, help="tile images larger than this many px (0: never)")
    parser.add_argument("--overlap", type=float, default=0.2, help="tile overlap, fraction of --slice")
    parser.add_argument("--batch", type=int, default=4, help="tiles per model call")
    parser.add_argument("--vis-score", type=float, default=0.3, help="draw detections above this score")
    parser.add_argument("--no-vis", action="store_true", help="write results.json only")
    parser.add_argument("--metadata", default="", help="dataset name for class names (default DATASETS.TEST[0])")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="sarl")
    setup_logger(name="detectron2")
    try:
        cfg = load_config(args.config_file, args.opts)
        files = expand_inputs(args.input)
    except (UserError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    predictor = Predictor.from_cfg(cfg, slice_size=args.slice, overlap=args.overlap, batch_size=args.batch,
                                   metadata_name=args.metadata or None)
    mapping = getattr(predictor.metadata, "thing_dataset_id_to_contiguous_id", None)
    to_dataset_id = {v: k for k, v in mapping.items()} if mapping else None
    os.makedirs(os.path.join(args.output, "vis"), exist_ok=True)
    results, unreadable = [], 0
    for path in files:
        image = read_image(path)
        if image is None:
            logger.warning(f"cannot read image {path}: skipped")
            unreadable += 1
            continue
        prediction = predictor.predict(image)
        name = os.path.basename(path)
        results += prediction.to_coco_results(name, to_dataset_id)
        shown = prediction.above(args.vis_score)
        logger.info(f"{path}: {len(prediction)} detections ({len(shown)} above {args.vis_score})")
        if not args.no_vis:
            out_path = os.path.join(args.output, "vis", os.path.splitext(name)[0] + ".jpg")
            cv2.imwrite(out_path, draw(image, shown.instances, predictor.metadata))
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(results, f)
    print(f"{len(files) - unreadable} images predicted, {unreadable} unreadable skipped; "
          f"results: {os.path.join(args.output, 'results.json')}, pictures: {os.path.join(args.output, 'vis')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
