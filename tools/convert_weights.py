#!/usr/bin/env python
"""Convert an official YOLOX or YOLOv5 COCO checkpoint to this project's module names, for the model of a config.

    python tools/convert_weights.py --config-file configs/coco/yolox_s.yaml --weights yolox_s.pth \
        --output output/weights/yolox_s.pth
    python tools/convert_weights.py --config-file configs/coco/yolov5s.yaml --weights yolov5s.pt \
        --output output/weights/yolov5s_8cls.pth MODEL.YOLO.NUM_CLASSES 8

``MODEL.WEIGHTS`` accepts the official files as they are (they are converted on every load); a converted file
skips that step and loads anywhere a checkpoint of this project does. The model of the config (and the trailing
``KEY VALUE`` overrides) decides the class count (class layers re-initialised when it differs from the file's) and
whether the SARL relay, absent from official weights, is part of it. YOLOv5 ``.pt`` files are read without
YOLOv5's code (an allow-list unpickler). Exit status 2 with one line when the file is missing, is not an official
checkpoint, or does not fit the model (the names that differ are listed); ``SARL_DEBUG=1`` shows tracebacks.
"""
from __future__ import annotations

import argparse
import sys
import warnings

# fvcore scripts a loss with torch.jit at import, which recent torch flags as deprecated: noise before every line.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from detectron2.utils.logger import setup_logger  # noqa: E402

from sarl.checkpoint_convert.write import convert_checkpoint_file  # noqa: E402
from sarl.config import load_config, run_reporting_user_errors  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config of the model to convert for")
    parser.add_argument("--weights", required=True, metavar="FILE", help="official YOLOX .pth or YOLOv5 .pt file")
    parser.add_argument("--output", required=True, metavar="FILE", help="converted checkpoint to write")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def run(args) -> int:
    from sarl.engine import YOLOTrainer

    cfg = load_config(args.config_file, list(args.opts) + ["MODEL.DEVICE", "cpu"])
    model = YOLOTrainer.build_model(cfg)
    checkpoint = convert_checkpoint_file(args.weights, model.state_dict(), args.output)
    names = f", {len(checkpoint['class_names'])} class names" if "class_names" in checkpoint else ""
    print(f"{args.output}: {len(checkpoint['model'])} tensors{names} from {args.weights}; use it as MODEL.WEIGHTS "
          f"with {args.config_file}", flush=True)
    return 0


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="sarl")
    return run_reporting_user_errors(run, args)


if __name__ == "__main__":
    sys.exit(main())
