"""Import torchvision even when its compiled ops cannot load (a CUDA torchvision wheel on CPU torch).

The pinned torchvision wheel is a CUDA build. On a CPU-only torch its `_C` extension fails to load
silently, and `import torchvision` then dies in `torchvision/_meta_registrations.py`, which registers
fake (meta) kernels for `torchvision::nms` / `torchvision::qnms` unconditionally:
`RuntimeError: operator torchvision::nms does not exist`. byzbn only needs torchvision's datasets,
which never call these ops, so declaring the two op schemas (the same ones torchvision's C++ code
declares) is enough for the import to succeed. The ops stay without kernels: calling them raises.

Only imported lazily (by the cifar10 loader), never at `import byzbn.data` time.
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType

import torch

# The schemas torchvision's csrc/ops/nms.cpp and quantized/cpu/qnms_kernel.cpp declare.
_MISSING_OP_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor",
}

# A torch.library.Library removes its definitions when garbage-collected: keep it for the process.
_schema_library: torch.library.Library | None = None


def _op_is_defined(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def _define_missing_schemas() -> None:
    global _schema_library
    for name, schema in _MISSING_OP_SCHEMAS.items():
        if _op_is_defined(name):
            continue
        if _schema_library is None:
            _schema_library = torch.library.Library("torchvision", "DEF")
        _schema_library.define(schema)


def _is_missing_op_error(error: RuntimeError) -> bool:
    message = str(error)
    return any(f"operator torchvision::{name} does not exist" in message for name in _MISSING_OP_SCHEMAS)


def import_torchvision() -> ModuleType:
    """Return the `torchvision` module, declaring its missing op schemas only if the import needs them.

    Idempotent: once imported, later calls return the cached module. Where torchvision's compiled ops
    load (a matching CUDA torch), the first import succeeds and nothing is declared — declaring them
    first would make the real extension's own definitions collide.
    """
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as error:
        if not _is_missing_op_error(error):
            raise
    # The failed attempt left some submodules (extension, _autograd_registrations) half-registered
    # in sys.modules; drop them so the retry runs torchvision's import from the start.
    for module_name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[module_name]
    _define_missing_schemas()
    return importlib.import_module("torchvision")
