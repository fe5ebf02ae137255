"""Loading of the compiled extension ``sarl._C`` and the fallback policy.

Importing ``sarl._C`` registers the ``torch.ops.sarl.*`` kernels. When it is missing (not
built, or built for another torch), every op falls back to its pure-PyTorch reference and
warns once per op, so code keeps working, only slower.
"""
from __future__ import annotations

import os
import warnings
from typing import Dict, Optional

import torch

_LOAD_ERROR: Optional[str] = None
_LOADED = False
_WARNED: set = set()

try:
    from sarl import _C as _C  # noqa: F401  (registers torch.ops.sarl.*)

    _LOADED = True
except ImportError as e:  # pragma: no cover - depends on the build
    _LOAD_ERROR = f"{type(e).__name__}: {e}"


def extension_available() -> bool:
    """True when ``sarl._C`` loaded (its CPU kernels are then registered)."""
    return _LOADED and os.environ.get("SARL_DISABLE_EXTENSION", "0") != "1"


def cuda_kernels_available() -> bool:
    """True when the loaded extension carries CUDA kernels."""
    return extension_available() and bool(torch.ops.sarl._compiled_with_cuda())


def extension_info() -> Dict[str, object]:
    """Where the extension came from and what it carries (for logs and bug reports)."""
    info: Dict[str, object] = {"loaded": _LOADED, "error": _LOAD_ERROR}
    if _LOADED:
        info["path"] = getattr(_C, "__file__", None)
        info["cuda"] = bool(torch.ops.sarl._compiled_with_cuda())
    return info


def use_extension(op_name: str, *tensors: torch.Tensor) -> bool:
    """Decide whether ``op_name`` runs the compiled kernel for these inputs.

    Falls back (with a one-time warning per op) when the extension is missing, or when the
    inputs live on CUDA but the build has no CUDA kernels.
    """
    if not extension_available():
        _warn_once(op_name, f"sarl._C is not available ({_LOAD_ERROR or 'disabled'}); "
                   f"{op_name} runs its pure-PyTorch reference (slower). "
                   "Build it with `make build` or `pip install --no-build-isolation -e .`.")
        return False
    if any(t is not None and t.is_cuda for t in tensors) and not cuda_kernels_available():
        _warn_once(op_name + ":cuda", f"sarl._C was built without CUDA kernels; {op_name} on "
                   "CUDA tensors runs its pure-PyTorch reference. Rebuild with FORCE_CUDA=1.")
        return False
    return True


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
