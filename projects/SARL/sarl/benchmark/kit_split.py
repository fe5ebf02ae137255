"""The KIT AIS split of the real-data benchmark (``tools/benchmark_real.py``): validation = the 13 frames MOS155,
MOS157, ..., MOS179 (one sequence); training = the other 20 (MOS74..92 and MunichStreet02-MOS74..92). Consecutive
frames overlap, so the split is by sequence. The top level needs the standard library only (the peer's worker
imports it)."""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

KIT_AIS_CLASSES = ("car", "truck", "bus", "minibus", "cyclist")
KIT_AIS_VAL_FRAMES = tuple(f"MOS{n}" for n in range(155, 180, 2))  # MOS155 ... MOS179: 13 frames


def frame_name(file_name: str) -> str:
    """``/x/y/MOS155.png`` -> ``MOS155``."""
    return os.path.splitext(os.path.basename(file_name))[0]


def is_val_frame(file_name: str) -> bool:
    return frame_name(file_name) in KIT_AIS_VAL_FRAMES


def split_records(records: Sequence[Mapping[str, Any]]) -> Tuple[List[Mapping[str, Any]], List[Mapping[str, Any]]]:
    """(train, val) dataset dicts of the KIT AIS frames, by :data:`KIT_AIS_VAL_FRAMES`."""
    train = [r for r in records if not is_val_frame(r["file_name"])]
    val = [r for r in records if is_val_frame(r["file_name"])]
    return train, val


def check_split(records: Sequence[Mapping[str, Any]], split: str, expected_val: Iterable[str] = KIT_AIS_VAL_FRAMES
                ) -> None:
    """``records`` of a registered ``kit_ais_cars_<split>`` must follow the split above (else ValueError)."""
    names = sorted(frame_name(r["file_name"]) for r in records)
    in_val = [n for n in names if n in set(expected_val)]
    if split == "val" and (len(in_val) != len(names) or set(names) != set(expected_val)):
        raise ValueError(f"kit_ais_cars_val holds {names}, not the frames {sorted(expected_val)}")
    if split == "train" and in_val:
        raise ValueError(f"kit_ais_cars_train holds validation frames {in_val}")


def load_kit_ais_split(datasets_root: str, split: str) -> Tuple[List[Dict[str, Any]], List[str], str]:
    """Dataset dicts of ``split`` ("train" or "val"), the class names and where they came from.

    Reads ``kit_ais_cars_<split>`` when the project registers it (checked against the split above), else
    ``kit_ais_cars`` filtered by :func:`split_records`. ``datasets_root`` holds ``kit_ais_cars/``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from sarl.data.datasets.kit_ais import register_kit_ais

    register_kit_ais(datasets_root)  # (re-)points the kit_ais_cars* names only
    name = f"kit_ais_cars_{split}"
    if name in DatasetCatalog.list():
        records = [dict(r) for r in DatasetCatalog.get(name)]
        check_split(records, split)
        source = name
    else:
        name = "kit_ais_cars"
        train, val = split_records(DatasetCatalog.get(name))
        records = [dict(r) for r in (train if split == "train" else val)]
        source = f"kit_ais_cars filtered by frame ({split})"
    class_names = list(MetadataCatalog.get(name).get("thing_classes", KIT_AIS_CLASSES))
    return records, class_names, source
