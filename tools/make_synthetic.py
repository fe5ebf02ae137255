#!/usr/bin/env python
"""Generate the synthetic tiny-object aerial dataset (``sarl.data.synthetic``) used by the demo.

The registered names ``synthetic_tiny_train`` / ``synthetic_tiny_val`` generate the default set on first use under
$DETECTRON2_DATASETS/synthetic_tiny; this command makes it explicitly, or a bigger one.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys

PRESETS = {
    # name: (num_train, num_val, image_size)
    "default": (200, 50, 320),  # CPU demo: generated in a few seconds
    "large": (2000, 500, 640),  # closer to a real benchmark; ~10x the demo's training time per epoch
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Generate the synthetic tiny-object aerial dataset (images + COCO json). Deterministic: the "
        "same arguments give the same files. Layout: <root>/images/{train,val}/*.jpg, "
        "<root>/annotations/instances_{train,val}.json, <root>/generation.json.",
    )
    default_root = os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "synthetic_tiny")
    parser.add_argument("--root", default=default_root, help=f"output folder (default {default_root})")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="sizes: default = 200 train + 50 val of 320 px; large = 2000 + 500 of 640 px")
    parser.add_argument("--num-train", type=int, default=None, help="overrides the preset")
    parser.add_argument("--num-val", type=int, default=None, help="overrides the preset")
    parser.add_argument("--image-size", type=int, default=None, help="square image side in px; overrides the preset")
    parser.add_argument("--min-objects", type=int, default=8, help="objects per image: lower bound (default 8)")
    parser.add_argument("--max-objects", type=int, default=32, help="objects per image: upper bound (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=["jpg", "png"], default="jpg", help="image format (default jpg, q95)")
    parser.add_argument("--force", action="store_true", help="delete --root first if it exists")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from sarl.data.synthetic import dataset_statistics, generate_synthetic_dataset

    num_train, num_val, image_size = PRESETS[args.preset]
    num_train = num_train if args.num_train is None else args.num_train
    num_val = num_val if args.num_val is None else args.num_val
    image_size = image_size if args.image_size is None else args.image_size
    if os.path.exists(args.root) and os.listdir(args.root):
        if not args.force:
            raise SystemExit(f"{args.root} is not empty: use --force to replace it")
        shutil.rmtree(args.root)
    paths = generate_synthetic_dataset(
        args.root, num_train, num_val, image_size, args.seed, args.format, args.min_objects, args.max_objects
    )
    print(json.dumps({split: dataset_statistics(path) for split, path in paths.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
