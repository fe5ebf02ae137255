"""The CUDA build of sarl._C loads and registers its kernels (no GPU needed).

``scripts/check_cuda_build.sh`` (run by ``make test`` before pytest) compiles every ``.cu`` into
``build-cuda/``; these tests load that library in a fresh process after ``import torch``, as a GPU
machine's ``import sarl`` would, and check the dispatcher's CUDA kernels. A library that links but
does not load (an undefined symbol, like ``data_ptr<long long>``) fails here.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, REQUIRE_EXTENSION

CHECK = REPO_ROOT / "scripts" / "check_cuda_library.py"


def _cuda_library() -> str:
    found = sorted(glob.glob(str(REPO_ROOT / "build-cuda" / "lib" / "sarl" / "_C*.so")))
    if not found:
        message = "build-cuda/lib/sarl/_C*.so is absent (run scripts/check_cuda_build.sh)"
        if REQUIRE_EXTENSION:
            pytest.fail(message + " and SARL_REQUIRE_EXTENSION=1")
        pytest.skip(message)
    return found[0]


def _run_check(library: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), library], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ""})


def test_cuda_library_loads_and_registers_every_op():
    proc = _run_check(_cuda_library())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "loaded after `import torch`" in proc.stdout
    for op in ("sal_loss", "sal_weights", "relay_pool", "relay_pool_backward", "relay_gate", "relay_gate_backward"):
        assert op in proc.stdout, (op, proc.stdout)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_check_rejects_a_library_with_an_undefined_symbol(tmp_path: Path):
    """The failure the load check exists for: a shared library links with an undefined symbol and
    fails only when loaded."""
    source = tmp_path / "bad.c"
    source.write_text("extern void sarl_symbol_that_no_library_defines(void);\n"
                      "void call_it(void) { sarl_symbol_that_no_library_defines(); }\n")
    library = tmp_path / "bad.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    proc = _run_check(str(library))
    assert proc.returncode == 1
    assert "does not load" in proc.stdout and "undefined symbol" in proc.stdout, proc.stdout
