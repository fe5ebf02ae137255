"""Shared pytest fixtures and markers.

- ``shared_data_dir``: ``../shared/data`` beside the repository (real aerial images with labels);
  tests that need it skip with a reason when it is absent. Override with ``SARL_SHARED_DATA``.
- ``requires_cuda``: skip marker with a reason when no GPU is present.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SARL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture(autouse=True)
def _fixed_seeds():
    """Every test starts from the same seeds, so results repeat."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def kit_ais_dir(shared_data_dir: Path) -> Path:
    path = shared_data_dir / "kit_ais_cars"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path
