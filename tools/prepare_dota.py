#!/usr/bin/env python
"""Split DOTA (v1.0 / v1.5 / v2.0) images into patches with horizontal-box COCO labels.

The logic lives in ``sarl.data.datasets.dota_split``; this is its command line.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

DESCRIPTION = """\
Split DOTA images into square patches and write COCO json with horizontal boxes.

Input (--src): a DOTA split folder with images/ (*.png) and labelTxt/ (*.txt, rows
'x1 y1 x2 y2 x3 y3 x4 y4 category difficult'; 'imagesource:' / 'gsd:' header lines are skipped).
Use --labels when the labels are elsewhere (e.g. DOTA-v2.0's labelTxt-v2.0/DOTA-v2.0_train). A split
without labels (test) gives patches without annotations (all patches are written).

Output (--dst; default: the folder the registered names read, <root>/DOTA-v<x>/<split>_<patch-size>):
  images/<image>__<scale>__<x0>___<y0>.png   the patches (patch_size x patch_size)
  annotations.json                           COCO json of the patches; each image record carries source_file,
                                             source_image, patch_x0, patch_y0 (in the scaled image), scale,
                                             source_width, source_height, so detections map back as
                                             (box + [x0, y0, x0, y0]) / scale
  full_images.json                           the whole images and their boxes (ground truth for merged scoring)

Rules:
  * patch origins every (patch-size - overlap) px; the last row/column is shifted back inside the image so
    that every patch is full of image content; an image smaller than a patch is padded (black) right/bottom;
  * horizontal box = min/max of the four corners; the difficult flag is kept;
  * a box cut by a patch border is kept (clipped) when >= --min-visible (default 0.7) of its area is inside;
    objects kept in no patch are counted in a warning;
  * patches without objects are skipped for train (--keep-empty keeps them) and kept for val/test
    (merged evaluation needs every part of the image).
Registered names read the default --dst: dota_v2_train_1024, dota_v2_val_1024, dota_v2_val_1024_full (and v1,
v1_5), under $DETECTRON2_DATASETS (default ./datasets).

Example:
  python tools/prepare_dota.py --src datasets/DOTA-v2.0/train --version v2.0 --split train \\
      --patch-size 1024 --overlap 200 --scales 1.0 0.5
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="prepare_dota.py", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--src", required=True, help="DOTA split folder holding images/ and labelTxt/")
    parser.add_argument("--dst", default=None,
                        help="output folder (default: $DETECTRON2_DATASETS/DOTA-v<x>/<split>_<patch-size>)")
    parser.add_argument("--labels", default=None, help="label folder (default: <src>/labelTxt; absent = unlabelled)")
    parser.add_argument("--version", default="v2.0", choices=["v1.0", "v1.5", "v2.0"],
                        help="DOTA version: fixes the class list (15/16/18 classes); default v2.0")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"], help="default train")
    parser.add_argument("--patch-size", type=int, default=1024, help="square patch side in px (default 1024)")
    parser.add_argument("--overlap", type=int, default=200, help="overlap of neighbour patches in px (default 200)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0],
                        help="image scales to split at, e.g. 1.0 0.5 (default 1.0)")
    parser.add_argument("--min-visible", type=float, default=0.7,
                        help="keep a box cut by a patch border when this fraction of its area is inside (default 0.7)")
    parser.add_argument("--keep-empty", action="store_true",
                        help="also write patches without objects (always on for val and test)")
    parser.add_argument("--ext", default="png", choices=["png", "jpg"], help="patch image format (default png)")
    parser.add_argument("--workers", type=int, default=1, help="processes splitting images in parallel (default 1)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from sarl.data.datasets.dota import prepared_dota_dir
    from sarl.data.datasets.dota_split import SplitOptions, prepare_dota

    if not 0 < args.min_visible <= 1:
        raise SystemExit(f"--min-visible must be in (0, 1], got {args.min_visible}")
    image_dir = os.path.join(args.src, "images")
    if not os.path.isdir(image_dir):
        raise SystemExit(f"{image_dir} does not exist: --src must be a DOTA split folder with images/ and labelTxt/")
    label_dir = args.labels or os.path.join(args.src, "labelTxt")
    if not os.path.isdir(label_dir):
        if args.labels or args.split != "test":
            raise SystemExit(f"label folder {label_dir} does not exist (use --labels DIR; only test may be unlabelled)")
        label_dir = None
    dst = args.dst or prepared_dota_dir(
        os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), args.version, args.split, args.patch_size
    )
    options = SplitOptions(
        patch_size=args.patch_size, overlap=args.overlap, scales=tuple(args.scales), min_visible=args.min_visible,
        keep_empty=args.keep_empty or args.split != "train", image_ext=args.ext,
    )
    summary = prepare_dota(image_dir, label_dir, dst, args.version, options, workers=args.workers)
    print(json.dumps({"dst": dst, **{k: v for k, v in summary.items()}}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
