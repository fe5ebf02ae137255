"""Read pickled model files (YOLOv5's ``{"model": DetectionModel, ...}``) without running code from them.

``torch.load(path, pickle_module=RESTRICTED_PICKLE, weights_only=False)`` unpickles through
:class:`RestrictedUnpickler`, whose ``find_class`` answers only an allow-list:

- tensors and their containers: torch's tensor/parameter rebuild functions, ``torch.Size``, torch dtypes,
  ``collections.OrderedDict``, ``set`` (torch itself resolves the storage types before the allow-list is asked);
- the module classes of a YOLOv5 v6.0+ detection model (``models.yolo.DetectionModel``/``Model``/``Detect``,
  ``models.common.Conv/C3/SPPF/Bottleneck/Concat``, also under the pip package's ``yolov5.`` prefix) and the
  ``torch.nn`` layers they hold: each becomes an inert :class:`StandIn` subclass of the same name, so the
  unpickler only fills attribute dicts and no code of the model's classes runs (nor needs to be installed);
- metadata types found beside the model in training checkpoints (numpy scalars and arrays, paths, argparse
  namespaces): :class:`InertValue` placeholders that keep their arguments and are never used.

Anything else stops the load with ``pickle.UnpicklingError`` naming the class. :func:`module_state_dict` reads a
stand-in module tree's parameters and persistent buffers as ``nn.Module.state_dict`` names them.
"""
from __future__ import annotations

import collections
import importlib
import pickle
import pickletools
import types
import zipfile
from typing import Any, Dict, List, Optional, Set, Tuple

import torch

__all__ = ["RESTRICTED_PICKLE", "InertValue", "RestrictedUnpickler", "StandIn", "module_state_dict", "yolov5_module",
           "pickled_globals"]

# The YOLOv5 classes a v6.0+ detection model pickles (module path without the pip package's "yolov5." prefix).
YOLOV5_CLASSES = {
    "models.yolo": {"DetectionModel", "Model", "Detect"},
    "models.common": {"Conv", "C3", "SPPF", "Bottleneck", "Concat"},
}
TORCH_NN_CLASSES = {
    "torch.nn.modules.conv": {"Conv2d"},
    "torch.nn.modules.batchnorm": {"BatchNorm2d"},
    "torch.nn.modules.activation": {"SiLU"},
    "torch.nn.modules.pooling": {"MaxPool2d"},
    "torch.nn.modules.upsampling": {"Upsample"},
    "torch.nn.modules.container": {"Sequential", "ModuleList"},
    "torch.nn.modules.linear": {"Identity"},
}
_TORCH_FUNCTIONS = {
    "torch._utils": {"_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter", "_rebuild_parameter_with_state"},
    "torch._tensor": {"_rebuild_from_type_v2"},
}
_TORCH_NAMES = {"Size", "float16", "float32", "float64", "bfloat16", "int64", "int32", "uint8", "bool"}
_METADATA = {
    "numpy.core.multiarray": {"scalar", "_reconstruct"},
    "numpy._core.multiarray": {"scalar", "_reconstruct"},
    "numpy": {"dtype", "ndarray"},
    "pathlib": {"PosixPath", "WindowsPath", "Path"},
    "argparse": {"Namespace"},
}


class StandIn:
    """Inert stand-in of a pickled module class: unpickling sets its ``__dict__`` (``_parameters``, ``_buffers``,
    ``_modules`` and the plain attributes) and nothing else; ``official_class`` names the class it replaces."""

    official_class = ""

    def __init__(self, *args: Any, **kwargs: Any):  # a REDUCE call passes arguments: kept out of the way
        self.__dict__["_stand_in_args"] = args


class InertValue:
    """Placeholder of a metadata value (numpy scalar, path, ...): keeps its constructor arguments and state."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


_STAND_IN_TYPES: Dict[str, type] = {}


def _stand_in(module: str, name: str) -> type:
    qualified = f"{module}.{name}"
    if qualified not in _STAND_IN_TYPES:
        _STAND_IN_TYPES[qualified] = type(name, (StandIn,), {"official_class": qualified})
    return _STAND_IN_TYPES[qualified]


def yolov5_module(module: str) -> str:
    """``yolov5.models.common`` (pip package) -> ``models.common`` (repository layout, release files)."""
    return module[len("yolov5."):] if module.startswith("yolov5.models.") else module


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` answers only the allow-list of the module docstring."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name == "set":
            return set
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if name in _TORCH_FUNCTIONS.get(module, ()):
            return getattr(importlib.import_module(module), name)
        if module == "torch" and name in _TORCH_NAMES:
            return getattr(torch, name)
        model_module = yolov5_module(module)
        if name in YOLOV5_CLASSES.get(model_module, ()) or name in TORCH_NN_CLASSES.get(module, ()):
            return _stand_in(model_module, name)
        if name in _METADATA.get(module, ()):
            return InertValue
        raise pickle.UnpicklingError(f"{module}.{name} is not among the classes an official YOLOv5 v6.0+ "
                                     "detection checkpoint holds (refused, nothing from the file was run)")


# What torch.load needs of a pickle module: Unpickler, load, and a __name__ (it checks for dill).
RESTRICTED_PICKLE = types.ModuleType("sarl_restricted_pickle")
RESTRICTED_PICKLE.Unpickler = RestrictedUnpickler
RESTRICTED_PICKLE.UnpicklingError = pickle.UnpicklingError
RESTRICTED_PICKLE.load = lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load()


def module_state_dict(module: StandIn, prefix: str = "") -> Dict[str, torch.Tensor]:
    """``state_dict()`` of a stand-in module tree: parameters and persistent buffers, depth first, dotted names."""
    attrs = module.__dict__
    state: Dict[str, torch.Tensor] = {}
    for name, param in (attrs.get("_parameters") or {}).items():
        if param is not None:
            state[prefix + name] = param.detach()
    skipped = attrs.get("_non_persistent_buffers_set") or set()
    for name, buffer in (attrs.get("_buffers") or {}).items():
        if buffer is not None and name not in skipped:
            state[prefix + name] = buffer.detach()
    for name, child in (attrs.get("_modules") or {}).items():
        if child is not None:
            state.update(module_state_dict(child, f"{prefix}{name}."))
    return state


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def pickled_globals(path: str) -> Set[Tuple[str, str]]:
    """The ``(module, name)`` globals the pickle of a zip-format torch file references, read from its opcodes
    without unpickling; empty for any other file. (``STACK_GLOBAL``, protocol 4+, takes the two strings pushed
    before it, memoised ones included.)"""
    if not zipfile.is_zipfile(path):
        return set()
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            return set()
        data = archive.read(pickles[0])
    found: Set[Tuple[str, str]] = set()
    strings: List[str] = []  # strings pushed so far (memo reads included)
    memo: Dict[int, Optional[str]] = {}
    last_string: Optional[str] = None  # the string the previous opcode pushed, if it pushed one
    try:
        for opcode, arg, _ in pickletools.genops(data):
            pushed: Optional[str] = None
            if opcode.name in ("GLOBAL", "INST"):
                module, _, name = str(arg).partition(" ")
                found.add((module, name))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.add((strings[-2], strings[-1]))
            elif opcode.name in _STRING_OPS:
                pushed = arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)
            elif opcode.name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
                memo[len(memo) if opcode.name == "MEMOIZE" else int(arg)] = last_string
                continue  # memoising leaves the stack (and the last string) as it was
            elif opcode.name in ("BINGET", "LONG_BINGET", "GET"):
                pushed = memo.get(int(arg))
            if pushed is not None:
                strings.append(pushed)
            last_string = pushed
    except (ValueError, pickle.UnpicklingError):  # not a pickle after all: nothing recognised
        return set()
    return found
