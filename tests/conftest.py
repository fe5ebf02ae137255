"""Shared pytest fixtures and markers.

- ``shared_data_dir``: ``../shared/data`` beside the repository (real aerial images with labels);
  tests that need it skip with a reason when it is absent. Override with ``SARL_SHARED_DATA``.
- ``requires_cuda``: skip marker with a reason when no GPU is present.
- ``needs_extension(what, available)``: a test of compiled kernels. When they are missing it skips
  with a reason, or fails when ``SARL_REQUIRE_EXTENSION=1`` (set by ``make test``, so a broken or
  missing ``sarl._C`` fails the suite instead of quietly skipping the kernel tests).
- ``needs_cuda_kernels``: the same for CUDA kernels: skips without a GPU; with a GPU and no CUDA
  kernels in the build it skips, or fails under ``SARL_REQUIRE_EXTENSION=1``.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SARL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
REQUIRE_EXTENSION = os.environ.get("SARL_REQUIRE_EXTENSION", "0") == "1"


def needs_extension(what: str, available: bool) -> pytest.MarkDecorator:
    """Mark for tests of compiled kernels: ``what`` names them, ``available`` says they loaded."""
    return pytest.mark.needs_extension(what, bool(available))


def _cuda_kernels_ready() -> bool:
    import sarl.ops

    return sarl.ops.cuda_kernels_available()


needs_cuda_kernels = [
    requires_cuda,
    pytest.mark.needs_extension("sarl._C with CUDA kernels (build with FORCE_CUDA=1 on this GPU machine)",
                                torch.cuda.is_available() and _cuda_kernels_ready()),
]


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_extension(what, available): test of compiled sarl._C kernels")


@pytest.fixture(autouse=True)
def _required_extension(request):
    marker = request.node.get_closest_marker("needs_extension")
    if marker is None or marker.args[1]:
        return
    what = marker.args[0]
    if REQUIRE_EXTENSION:
        import sarl.ops

        pytest.fail(f"{what} is not available and SARL_REQUIRE_EXTENSION=1: {sarl.ops.extension_info()}")
    pytest.skip(f"{what} is not built (run scripts/build_ext.sh; SARL_REQUIRE_EXTENSION=1 makes this a failure)")


@pytest.fixture(autouse=True)
def _fixed_seeds():
    """Every test starts from the same seeds, so results repeat."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


_PRISTINE_LOGGERS = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate, logging.getLogger(n).level)
                     for n in ("sarl", "detectron2", "fvcore", "d2")}


@pytest.fixture(autouse=True)
def _isolated_loggers():
    """Tests that run tools in-process call detectron2's ``setup_logger``, which gives the "sarl",
    "detectron2" and "fvcore" loggers handlers bound to that test's captured stdout and stops their
    propagation. Restore them after each test, so later tests' ``caplog`` sees their records and no
    handler writes to a closed stream."""
    yield
    # Back to the state before any test ran, not the one before this test: a module-scoped fixture that runs a
    # tool would otherwise leave its setting in place for the rest of the session.
    for name, (handlers, propagate, level) in _PRISTINE_LOGGERS.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.setLevel(level)


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


@pytest.fixture
def one_thread():
    """Run a test with one intra-op thread: the models and tensors in these tests are tiny, where a
    second OpenMP thread gains nothing and, on a busy 2-core machine, makes kernels up to 10x slower.
    Use per file as ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_datasets(tmp_path_factory):
    """``synthetic_tiny_{train,val}`` re-pointed to a small generated copy (8 + 2 images of 96 px), also for child
    processes (through ``DETECTRON2_DATASETS``); the default registration is restored afterwards."""
    from sarl.data import generate_synthetic_dataset, register_all_aerial

    root = tmp_path_factory.mktemp("datasets")
    generate_synthetic_dataset(str(root / "synthetic_tiny"), num_train=8, num_val=2, image_size=96,
                               min_objects=2, max_objects=6)
    old_env = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(root)
    register_all_aerial(str(root))
    yield root
    if old_env is None:
        os.environ.pop("DETECTRON2_DATASETS", None)
    else:
        os.environ["DETECTRON2_DATASETS"] = old_env
    register_all_aerial()
