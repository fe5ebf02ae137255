"""Train / test data loaders for the YOLO detectors (detectron2 loaders around :class:`YOLOMapper`)."""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

import torch.utils.data as torchdata

from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.samplers import TrainingSampler

from .catalog import explain_empty_datasets
from .mapper import YOLOMapper
from .samplers import StreamRecords

logger = logging.getLogger(__name__)


def build_yolo_train_loader(
    cfg,
    mapper: Optional[YOLOMapper] = None,
    *,
    dataset: Optional[List[Dict[str, Any]]] = None,
    sampler: Optional[torchdata.Sampler] = None,
) -> torchdata.DataLoader:
    """Infinite training loader over ``cfg.DATASETS.TRAIN``.

    Args:
        mapper: default ``YOLOMapper(cfg, True, dataset)``.
        dataset: dataset dicts; default detectron2's ``get_detection_dataset_dicts(cfg.DATASETS.TRAIN)``
            (``cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS`` applies).
        sampler: default detectron2's ``TrainingSampler`` (infinite shuffled stream, seeded with ``cfg.SEED`` when
            >= 0, sharded by rank under DDP); the trainer passes its resumable one. A sampler with
            ``with_positions`` set (``sarl.data.samplers``) yields stream keys: the records are then wrapped in
            :class:`~sarl.data.samplers.StreamRecords` and every sample's augmentation is seeded by its position.
    Batches: lists of ``cfg.SOLVER.IMS_PER_BATCH / world_size`` mapped dicts. The mapper is kept as
    ``loader.yolo_mapper`` (its settings and ``num_unreadable`` count can be read from the loader).
    """
    if dataset is None:
        with explain_empty_datasets("DATASETS.TRAIN", cfg.DATASETS.TRAIN):
            dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN,
                                                  filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    if mapper is None:
        mapper = YOLOMapper(cfg, is_train=True, dataset_dicts=dataset)
    if sampler is None:
        sampler = TrainingSampler(len(dataset), shuffle=True, seed=cfg.SEED if cfg.SEED >= 0 else None)
    records = StreamRecords(dataset, sampler.seed) if getattr(sampler, "with_positions", False) else dataset
    loader = build_detection_train_loader(
        records,
        mapper=mapper,
        sampler=sampler,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        # Every output is IMG_SIZE x IMG_SIZE: grouping by the original aspect ratio would only delay batches.
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    loader.yolo_mapper = mapper
    return loader


def build_yolo_test_loader(cfg, dataset_name: str, batch_size: int = 1) -> torchdata.DataLoader:
    """Inference loader over one registered dataset, letterboxing each image to ``cfg.INPUT.YOLO.IMG_SIZE``.

    An unreadable image does not stop the evaluation: a warning names it and the loader yields a placeholder
    marked ``"unreadable": True`` (``YOLOMapper(skip_unreadable=True)``), which the evaluator leaves out and counts.
    """
    with explain_empty_datasets("DATASETS.TEST", [dataset_name]):
        dataset_dicts = get_detection_dataset_dicts([dataset_name], filter_empty=False)
    return build_detection_test_loader(
        dataset_dicts,
        mapper=YOLOMapper(cfg, is_train=False, skip_unreadable=True),
        batch_size=batch_size,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
