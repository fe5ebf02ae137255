#!/usr/bin/env python
"""Run a trained SARL detector on images: draw boxes (class, score) and write COCO-json results.

    python tools/predict.py --config-file configs/sarl_yolox_aitod.yaml --input img.png folder/ "tiles/*.tif" \
        --output output/predict MODEL.WEIGHTS output/model_final.pth
    # large aerial images: 800 px tiles with 20% overlap, 4 tiles per batch, merged by class-wise NMS
    python tools/predict.py ... --slice 800 --overlap 0.2 --batch 4

Images larger than ``--slice`` (when given) go through :class:`sarl.inference.SlicedPredictor` at native
resolution; others are letterboxed to ``INPUT.YOLO.IMG_SIZE`` as in evaluation. An unreadable image is skipped
with a warning naming it, and counted in the summary. Outputs: ``<output>/vis/<name>.jpg`` and
``<output>/results.json`` (COCO detection format; ``image_id`` is the file's name).
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "SARL"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.structures import Instances  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from detectron2.utils.visualizer import Visualizer  # noqa: E402

logger = logging.getLogger("sarl.predict")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def expand_inputs(inputs: Sequence[str]) -> List[str]:
    """Files from image paths, folders (their images, sorted) and glob patterns; missing ones are errors."""
    files: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            files += sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS))
        elif any(c in item for c in "*?["):
            matched = sorted(glob.glob(item, recursive=True))
            if not matched:
                raise FileNotFoundError(f"--input {item!r} matches no file")
            files += matched
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"--input {item!r} does not exist")
    return files


class ImagePredictor:
    """Whole-image or sliced prediction with a built model (eval mode, weights loaded).

    Args:
        model: a ``YOLODetector``.
        img_size: letterbox size for whole images (``INPUT.YOLO.IMG_SIZE``).
        input_format: ``INPUT.FORMAT`` ("BGR" or "RGB"); images are read as BGR.
        slice_size: tile images larger than this (0: never tile).
    """

    def __init__(self, model: torch.nn.Module, img_size: int, input_format: str = "BGR", slice_size: int = 0,
                 overlap: float = 0.2, batch_size: int = 4, max_detections: int = 3000, nms_thresh: float = 0.65):
        from sarl.inference import SlicedPredictor

        self.model = model
        self.img_size = int(img_size)
        self.rgb = input_format == "RGB"
        self.slice_size = int(slice_size)
        self.sliced = (SlicedPredictor(model, slice_size, overlap, batch_size, nms_thresh=nms_thresh,
                                       max_detections=max_detections) if slice_size > 0 else None)

    def _to_model_format(self, image_bgr: np.ndarray) -> np.ndarray:
        return image_bgr[:, :, ::-1] if self.rgb else image_bgr

    @torch.no_grad()
    def __call__(self, image_bgr: np.ndarray) -> Instances:
        image = self._to_model_format(image_bgr)
        height, width = image.shape[:2]
        if self.sliced is not None and max(height, width) > self.slice_size:
            return self.sliced(image)
        scale = self.img_size / max(height, width)
        resized = cv2.resize(np.ascontiguousarray(image), (max(1, round(width * scale)), max(1, round(height * scale))),
                             interpolation=cv2.INTER_LINEAR) if scale != 1 else image
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        # letterbox (scale, pad_x, pad_y): the model maps its boxes back to the original pixels.
        inputs = [{"image": tensor, "height": height, "width": width, "letterbox": (scale, 0.0, 0.0)}]
        return self.model(inputs)[0]["instances"].to("cpu")


def to_coco_results(image_id: str, instances: Instances, contiguous_to_dataset_id: Optional[Dict[int, int]]) -> List[Dict]:
    boxes = instances.pred_boxes.tensor.numpy()
    out = []
    for box, score, cls in zip(boxes, instances.scores.tolist(), instances.pred_classes.tolist()):
        category = contiguous_to_dataset_id.get(cls, cls) if contiguous_to_dataset_id else cls
        out.append({"image_id": image_id, "category_id": int(category),
                    "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                    "score": float(score)})
    return out


def draw(image_bgr: np.ndarray, instances: Instances, metadata) -> np.ndarray:
    """Boxes with class and score: detectron2's Visualizer, or plain OpenCV rectangles for huge images
    (the Visualizer's matplotlib canvas would need several GB for a 10000 px image)."""
    if max(image_bgr.shape[:2]) <= 4096:
        return Visualizer(image_bgr[:, :, ::-1], metadata, scale=1.0).draw_instance_predictions(instances) \
            .get_image()[:, :, ::-1]
    canvas = image_bgr.copy()
    names = getattr(metadata, "thing_classes", None)
    for box, score, cls in zip(instances.pred_boxes.tensor.tolist(), instances.scores.tolist(),
                               instances.pred_classes.tolist()):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), (0, 255, 0), 2)
        label = f"{names[cls] if names and cls < len(names) else cls} {score:.2f}"
        cv2.putText(canvas, label, (x0, max(y0 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
    return canvas


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
    from train_net import UserError, load_config  # noqa: E402  (tools/ is on sys.path as the script's folder)

    from sarl.engine import YOLOTrainer, load_inference_weights

    try:
        cfg = load_config(args.config_file, args.opts)
        files = expand_inputs(args.input)
    except (UserError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty: predicting with an untrained model")
    model = YOLOTrainer.build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_inference_weights(model, cfg.MODEL.WEIGHTS)
    model.eval()
    predictor = ImagePredictor(model, cfg.INPUT.YOLO.IMG_SIZE, cfg.INPUT.FORMAT, args.slice, args.overlap,
                               args.batch, cfg.TEST.DETECTIONS_PER_IMAGE, cfg.MODEL.YOLO.NMS_THRESH_TEST)
    meta_name = args.metadata or (cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "")
    metadata = MetadataCatalog.get(meta_name) if meta_name else MetadataCatalog.get("__sarl_predict__")
    mapping = getattr(metadata, "thing_dataset_id_to_contiguous_id", None)
    to_dataset_id = {v: k for k, v in mapping.items()} if mapping else None
    os.makedirs(os.path.join(args.output, "vis"), exist_ok=True)
    results, unreadable = [], 0
    for path in files:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            logger.warning(f"cannot read image {path}: skipped")
            unreadable += 1
            continue
        instances = predictor(image)
        name = os.path.basename(path)
        results += to_coco_results(name, instances, to_dataset_id)
        logger.info(f"{path}: {len(instances)} detections ({int((instances.scores > args.vis_score).sum())} "
                    f"above {args.vis_score})")
        if not args.no_vis:
            shown = instances[instances.scores > args.vis_score]
            out_path = os.path.join(args.output, "vis", os.path.splitext(name)[0] + ".jpg")
            cv2.imwrite(out_path, draw(image, shown, metadata))
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(results, f)
    print(f"{len(files) - unreadable} images predicted, {unreadable} unreadable skipped; "
          f"results: {os.path.join(args.output, 'results.json')}, pictures: {os.path.join(args.output, 'vis')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
