"""``YOLOMapper``: dataset dict -> model input, with YOLOX-style augmentation that keeps tiny objects.

Training pipeline (each step switchable by config, INPUT.YOLO.*):
    NATIVE_CROP:            each image larger than IMG_SIZE (the main one and mosaic/mixup partners) is first
                            cut to an IMG_SIZE window at native resolution, placed on a random object with prob
                            CROP_OBJECT_PROB (aerial frames: objects keep their pixel size instead of shrinking
                            with a letterbox of the whole frame); smaller images pass unchanged
    with prob MOSAIC_PROB:  mosaic of 4 images (3 partners drawn from ``dataset_dicts``)
                            -> random affine (DEGREES, TRANSLATE, MOSAIC_SCALE, SHEAR) to IMG_SIZE
                            -> with prob MIXUP_PROB: mixup with one more letterboxed image (MIXUP_SCALE)
    otherwise:              letterbox to IMG_SIZE
    then:                   HSV jitter (HSV_PROB, HSV_GAIN), horizontal flip (FLIP_PROB)
    boxes:                  clipped to the image; kept when both sides >= MIN_BOX_SIZE (default 1 px) and at least
                            MIN_VISIBLE_FRACTION of the box is inside the image. No cap on the number of labels.
Test pipeline: letterbox only; with ``native_test`` (``TEST.SLICED.ENABLED``) images larger than IMG_SIZE are
passed whole at native resolution, marked ``"sliced": True``, for the sliced predictor
(``sarl.inference.SlicedDetector``) to tile; smaller ones are letterboxed as in training.

``augment=False`` (the YOLOX "no-aug" last epochs) builds a training mapper without mosaic, mixup and the random
affine; HSV and flip stay on, as in YOLOX. The trainer enters that phase by replacing its training loader with one
built around such a mapper (``YOLOTrainer.build_train_loader(..., augment=False)``), continuing the same data stream.

Randomness: a record carrying ``"sample_seed"`` (the trainer's loader adds it: ``sarl.data.samplers``) is augmented
from a generator seeded with it alone, so the same sample of the stream gets the same augmentation whatever the
number of workers and after a resume. Records without it draw from one stream per process (``INPUT.YOLO.SEED``, or
the torch seed of the process/worker).

Unreadable images: a warning names the file, ``num_unreadable`` counts it (shared by all worker processes), and
another sample is drawn (train). At test time an unreadable image is an error naming the file, unless the mapper
is built with ``skip_unreadable=True`` (the evaluation loader): it then returns a grey placeholder marked
``"unreadable": True``, which the evaluator leaves out of the scores and counts in its summary.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch

from detectron2.data.common import DatasetFromList
from detectron2.structures import Boxes, Instances

from . import transforms as T
from .annotations import annotation_arrays, ignore_regions

logger = logging.getLogger(__name__)

_MAX_CONSECUTIVE_UNREADABLE = 20


def limit_opencv_threads_in_loader_worker() -> None:
    """In a DataLoader worker process, keep OpenCV to one thread (its default is one per core). The worker exists to
    prepare the next batch while the training step runs; a cv2 thread pool of its own would take cores from the
    step's torch threads. OpenCV computes every output pixel the same way whatever its thread count.

    Done through ``OPENCV_FOR_THREADS_NUM``, which OpenCV reads when a process first builds its pool, never through
    ``cv2.setNumThreads``: in a forked worker whose parent had already used its pool, ``setNumThreads`` waits
    forever for the parent's pool threads, which do not exist in the child (such a worker runs OpenCV serially
    anyway). Must run before the worker's first OpenCV call: the mapper calls it first thing. A parent that set or read
    OpenCV's thread count without ever running its pool passes that count on (the variable is then not read). No-op
    outside workers (``num_workers 0``: the mapper runs between steps, where all cores are free)."""
    if torch.utils.data.get_worker_info() is not None:
        os.environ["OPENCV_FOR_THREADS_NUM"] = "1"


class YOLOMapper:
    """Callable mapping a detectron2 dataset dict to ``{"image", "instances", "height", "width", "file_name",
    "image_id", "letterbox"}`` (see the module docstring).

    Output:
        image: uint8 tensor [3, IMG_SIZE, IMG_SIZE] in ``cfg.INPUT.FORMAT`` ("BGR" or "RGB").
        instances: ``Instances((IMG_SIZE, IMG_SIZE), gt_boxes=Boxes [N, 4] XYXY float32, gt_classes [N] int64)``
            (at test time only when the dict has annotations).
        height, width: size of the ORIGINAL image (detectron2's ``detector_postprocess`` maps outputs back to it).
        letterbox: ``(scale, pad_x, pad_y)``: an original point (x, y) is at (x * scale + pad_x, y * scale + pad_y)
            in ``image``; ``(1.0, 0.0, 0.0)`` for mosaic samples, whose frame is not that of one original image.

    ``augment=False`` leaves mosaic, mixup and the random affine out of training (the no-aug phase).
    ``skip_unreadable=True`` (test): an unreadable image gives a placeholder output marked ``"unreadable": True``
    (grey image, no instances) instead of an ``OSError``.
    """

    def __init__(self, cfg, is_train: bool, dataset_dicts: Optional[List[Dict[str, Any]]] = None,
                 native_test: Optional[bool] = None, augment: bool = True, skip_unreadable: bool = False):
        yolo = cfg.INPUT.YOLO
        self.is_train = is_train
        self.skip_unreadable = bool(skip_unreadable)
        self.img_size = int(yolo.IMG_SIZE)
        self.image_format = cfg.INPUT.FORMAT
        if self.image_format not in ("BGR", "RGB"):
            raise ValueError(f"cfg.INPUT.FORMAT must be 'BGR' or 'RGB' for the YOLO mapper, got {self.image_format!r}")
        self.mosaic_prob = float(yolo.MOSAIC_PROB)
        self.mosaic_scale = tuple(yolo.MOSAIC_SCALE)
        self.mixup_prob = float(yolo.MIXUP_PROB)
        self.mixup_scale = tuple(yolo.MIXUP_SCALE)
        self.hsv_prob = float(yolo.HSV_PROB)
        self.hsv_gain = tuple(yolo.HSV_GAIN)
        self.flip_prob = float(yolo.FLIP_PROB)
        self.degrees = float(yolo.DEGREES)
        self.translate = float(yolo.TRANSLATE)
        self.shear = float(yolo.SHEAR)
        self.min_box_size = float(yolo.MIN_BOX_SIZE)
        self.min_visible = float(yolo.MIN_VISIBLE_FRACTION)
        self.mask_ignore_regions = bool(yolo.MASK_IGNORE_REGIONS)
        self.native_crop = bool(yolo.NATIVE_CROP)
        self.crop_object_prob = float(yolo.CROP_OBJECT_PROB)
        if not 0.0 <= self.crop_object_prob <= 1.0:
            raise ValueError(f"cfg.INPUT.YOLO.CROP_OBJECT_PROB must be in [0, 1], got {self.crop_object_prob}")
        self.native_test = bool(cfg.TEST.SLICED.ENABLED) if native_test is None else bool(native_test)
        seed = int(yolo.SEED)
        self.seed: Optional[int] = None if seed < 0 else seed
        if self.img_size <= 0 or self.img_size % 2:
            raise ValueError(f"cfg.INPUT.YOLO.IMG_SIZE must be a positive even number, got {self.img_size}")
        if self.min_box_size < 0:
            raise ValueError(f"cfg.INPUT.YOLO.MIN_BOX_SIZE must be >= 0, got {self.min_box_size}")
        needs_partners = is_train and (self.mosaic_prob > 0 or self.mixup_prob > 0)
        if needs_partners and not dataset_dicts:
            raise ValueError("YOLOMapper(is_train=True) with mosaic or mixup needs dataset_dicts to draw partners from")
        # Serialized (one byte buffer, as detectron2's loaders do): forked workers share it without
        # copy-on-access growth, and each draw returns a fresh dict.
        self.dataset_dicts = DatasetFromList(list(dataset_dicts), copy=False, serialize=True) if dataset_dicts else []
        # Mosaic, mixup and the random affine (training); False for the no-aug phase.
        self.augment = bool(augment)
        # Unreadable images skipped, counted over the main process and all its workers.
        self._unreadable = multiprocessing.Value("i", 0)
        self._rng: Optional[np.random.Generator] = None
        self._rng_owner: Optional[Tuple[int, int]] = None

    # ------------------------------------------------------------------------------------------------------------
    # Counters
    # ------------------------------------------------------------------------------------------------------------
    @property
    def num_unreadable(self) -> int:
        """Images skipped because they could not be decoded (all processes sharing this mapper)."""
        return int(self._unreadable.value)

    # ------------------------------------------------------------------------------------------------------------
    # RNG: one stream per process, deterministic from (seed or torch.initial_seed(), worker id)
    # ------------------------------------------------------------------------------------------------------------
    @property
    def rng(self) -> np.random.Generator:
        worker = torch.utils.data.get_worker_info()
        owner = (os.getpid(), worker.id if worker is not None else -1)
        if self._rng is None or self._rng_owner != owner:
            # In a worker, torch.initial_seed() is already base_seed + worker_id (seeded by the loader).
            base = self.seed if self.seed is not None else torch.initial_seed() % 2**63
            self._rng = np.random.default_rng([base, owner[1] + 1])
            self._rng_owner = owner
        return self._rng

    def sample_rng(self, dataset_dict: Dict[str, Any]) -> np.random.Generator:
        """The generator for one training sample: seeded by its ``sample_seed`` when it has one."""
        sample_seed = dataset_dict.get("sample_seed")
        if sample_seed is None:
            return self.rng
        return np.random.default_rng([int(v) for v in sample_seed])

    def reseed(self, seed: int) -> None:
        """Restart the stream of this process from ``seed`` (tests, visual checks)."""
        self.seed = int(seed)
        self._rng = None

    # ------------------------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------------------------
    def _read(self, record: Dict[str, Any]) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """BGR image and its targets; ``None`` (with a warning and a count) when the file cannot be decoded."""
        file_name = record["file_name"]
        image = cv2.imread(file_name, cv2.IMREAD_COLOR)
        if image is None:
            with self._unreadable.get_lock():
                self._unreadable.value += 1
            instead = "another sample is used" if self.is_train else "not scored"
            logger.warning(f"YOLOMapper: cannot read image {file_name}; skipped, {instead} "
                           f"({self.num_unreadable} unreadable so far)")
            return None
        # Targets: the object instances; crowd / ``ignore`` boxes are left out (a YOLO head has no ignore label).
        targets = annotation_arrays(record).without_crowd()
        boxes, classes = targets.boxes_xyxy, targets.classes
        regions = ignore_regions(record) if self.is_train and self.mask_ignore_regions else np.zeros((0, 4))
        if len(regions):
            image = image.copy()
            height, width = image.shape[:2]
            for x1, y1, x2, y2 in regions:
                # Clamped to the image: a negative end must not become a Python "from the end" index.
                c1, r1 = int(np.clip(np.floor(x1), 0, width)), int(np.clip(np.floor(y1), 0, height))
                c2, r2 = int(np.clip(np.ceil(x2), 0, width)), int(np.clip(np.ceil(y2), 0, height))
                image[r1:r2, c1:c2] = T.PAD_VALUE
        height, width = image.shape[:2]
        boxes = T.clip_boxes(boxes, width, height)
        return image, boxes, classes

    def _read_random(
        self, rng: np.random.Generator
    ) -> Tuple[Dict[str, Any], Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """A random readable record from ``dataset_dicts`` and its loaded image and targets."""
        for _ in range(_MAX_CONSECUTIVE_UNREADABLE):
            record = self.dataset_dicts[int(rng.integers(len(self.dataset_dicts)))]
            loaded = self._read(record)
            if loaded is not None:
                return record, loaded
        raise RuntimeError(f"YOLOMapper: {_MAX_CONSECUTIVE_UNREADABLE} unreadable images in a row; see the warnings")

    # ------------------------------------------------------------------------------------------------------------
    # Mapping
    # ------------------------------------------------------------------------------------------------------------
    def __call__(self, dataset_dict: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        limit_opencv_threads_in_loader_worker()
        loaded = self._read(dataset_dict)
        if not self.is_train:
            if loaded is None:
                if self.skip_unreadable:
                    return self._unreadable_placeholder(dataset_dict)
                raise OSError(f"YOLOMapper: cannot read image {dataset_dict['file_name']}")
            return self._map_test(dataset_dict, loaded)
        rng = self.sample_rng(dataset_dict)
        if loaded is None:
            if not self.dataset_dicts:
                return None  # detectron2's MapDataset retries with another index
            # The output then describes the substitute (its file_name, image_id), not the unreadable file.
            return self._map_train(*self._read_random(rng), rng)
        return self._map_train(dataset_dict, loaded, rng)

    def _map_test(self, dataset_dict: Dict[str, Any], loaded: Tuple[np.ndarray, np.ndarray, np.ndarray]):
        image, boxes, classes = loaded
        with_targets = "annotations" in dataset_dict
        if self.native_test and max(image.shape[:2]) > self.img_size:
            out = self._output(dataset_dict, image, boxes if with_targets else None, classes, (1.0, 0.0, 0.0))
            out["sliced"] = True
            return out
        out_image, scale, pad_x, pad_y = T.letterbox(image, self.img_size)
        boxes = T.letterbox_boxes(boxes, scale, pad_x, pad_y)
        return self._output(dataset_dict, out_image, boxes if with_targets else None, classes, (scale, pad_x, pad_y))

    def _unreadable_placeholder(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        """A grey IMG_SIZE image standing for an unreadable test image (the model runs on it; the evaluator
        skips it), with the letterbox of the recorded size so mapping outputs back stays valid."""
        size = self.img_size
        height, width = int(dataset_dict.get("height", size)), int(dataset_dict.get("width", size))
        scale, pad_x, pad_y = T.letterbox_params(height, width, size)[:3]
        image = np.full((size, size, 3), T.PAD_VALUE, dtype=np.uint8)
        out = self._output(dict(dataset_dict, height=height, width=width), image, None, np.zeros(0, np.int64),
                           (scale, pad_x, pad_y))
        out["unreadable"] = True
        return out

    def _crop(self, loaded: Tuple[np.ndarray, np.ndarray, np.ndarray], rng: np.random.Generator
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``NATIVE_CROP``: an IMG_SIZE window of a larger image at native resolution (else unchanged)."""
        if not self.native_crop:
            return loaded
        return T.native_crop(*loaded, self.img_size, rng, object_prob=self.crop_object_prob,
                             min_size=self.min_box_size, min_visible=self.min_visible)

    def _map_train(self, dataset_dict: Dict[str, Any], loaded: Tuple[np.ndarray, np.ndarray, np.ndarray],
                   rng: np.random.Generator):
        image, boxes, classes = self._crop(loaded, rng)
        size = self.img_size
        strong = self.augment
        if strong and rng.uniform() < self.mosaic_prob:
            partners = [self._crop(self._read_random(rng)[1], rng) for _ in range(3)]
            images = [image] + [p[0] for p in partners]
            canvas, boxes, classes = T.mosaic(images, [boxes] + [p[1] for p in partners],
                                              [classes] + [p[2] for p in partners], size, rng)
            image, boxes, classes = T.random_affine(
                canvas, boxes, classes, size, rng, degrees=self.degrees, translate=self.translate,
                scale_range=self.mosaic_scale, shear=self.shear, min_size=self.min_box_size,
                min_visible=self.min_visible)
            letterbox_params = (1.0, 0.0, 0.0)
            if rng.uniform() < self.mixup_prob:
                other_image, other_boxes, other_classes = self._crop(self._read_random(rng)[1], rng)
                image, boxes, classes = T.mixup(
                    image, boxes, classes, other_image, other_boxes, other_classes, rng,
                    scale_range=self.mixup_scale, min_size=self.min_box_size, min_visible=self.min_visible)
        else:
            image, scale, pad_x, pad_y = T.letterbox(image, size)
            boxes = T.letterbox_boxes(boxes, scale, pad_x, pad_y)
            boxes, classes = T.filter_boxes(T.clip_boxes(boxes, size, size), classes, self.min_box_size)
            letterbox_params = (scale, pad_x, pad_y)
        if rng.uniform() < self.hsv_prob:
            image = T.augment_hsv(image, self.hsv_gain, rng)
        if rng.uniform() < self.flip_prob:
            image, boxes = T.horizontal_flip(image, boxes)
        return self._output(dataset_dict, image, boxes, classes, letterbox_params)

    def _output(self, dataset_dict: Dict[str, Any], image: np.ndarray, boxes: Optional[np.ndarray],
                classes: np.ndarray, letterbox_params: Tuple[float, float, float]) -> Dict[str, Any]:
        if self.image_format == "RGB":
            image = image[:, :, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        out = {
            "image": tensor,
            "height": int(dataset_dict.get("height", image.shape[0])),
            "width": int(dataset_dict.get("width", image.shape[1])),
            "file_name": dataset_dict["file_name"],
            "image_id": dataset_dict.get("image_id"),
            "letterbox": tuple(float(v) for v in letterbox_params),
        }
        if boxes is not None:
            instances = Instances(tuple(image.shape[:2]))
            instances.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            instances.gt_classes = torch.as_tensor(classes, dtype=torch.int64).reshape(-1)
            out["instances"] = instances
        return out
