"""The KIT AIS sequence split: kit_ais_cars_val = MOS155, MOS157, ..., MOS179; kit_ais_cars_train = the rest."""
from __future__ import annotations

import os
import shutil

import pytest
from detectron2.data import DatasetCatalog

from sarl.data.datasets import register_all_aerial
from sarl.data.datasets.common import DatasetFormatError
from sarl.data.datasets.kit_ais import KIT_AIS_VAL_FRAMES


def _stems(records):
    return {os.path.splitext(os.path.basename(r["file_name"]))[0] for r in records}


def test_split_by_sequence(kit_ais_dir):
    register_all_aerial(str(kit_ais_dir.parent))
    try:
        everything = _stems(DatasetCatalog.get("kit_ais_cars"))
        train = _stems(DatasetCatalog.get("kit_ais_cars_train"))
        val = _stems(DatasetCatalog.get("kit_ais_cars_val"))
    finally:
        register_all_aerial()
    assert val == {f"MOS{n}" for n in range(155, 180, 2)} and len(val) == 13
    assert not train & val and train | val == everything
    assert len(train) == len(everything) - 13


def test_a_missing_split_frame_is_an_error(kit_ais_dir, tmp_path):
    folder = tmp_path / "kit_ais_cars"
    folder.mkdir()
    for stem in ("MOS155", "MOS74", "MOS76"):  # MOS157 ... MOS179 are missing
        shutil.copy(kit_ais_dir / f"{stem}.png", folder)
        shutil.copy(kit_ais_dir / f"{stem}.txt", folder)
    register_all_aerial(str(tmp_path))
    try:
        assert _stems(DatasetCatalog.get("kit_ais_cars")) == {"MOS155", "MOS74", "MOS76"}
        with pytest.raises(DatasetFormatError, match="MOS157"):
            DatasetCatalog.get("kit_ais_cars_val")
    finally:
        register_all_aerial()
    assert KIT_AIS_VAL_FRAMES[0] == "MOS155" and KIT_AIS_VAL_FRAMES[-1] == "MOS179"
