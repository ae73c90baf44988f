"""ByzFL 0.0.11's aggregators as an optional cross-check (not a test module).

`import byzfl` runs its package __init__, which pulls its benchmark and training tools (torchvision,
seaborn, matplotlib: seconds, and an error where one is missing); only byzfl.aggregators (numpy, scipy,
torch) is wanted. It is loaded under a bare `byzfl` package, and every byzfl entry is then put back in
sys.modules as it was, so an `import byzfl` elsewhere in the session behaves as if this had never run.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def load_byzfl_aggregators():
    """The module byzfl.aggregators (Krum, MultiKrum, MDA, MoNNA, CAF, SMEA, ...), or None without ByzFL."""
    spec = importlib.util.find_spec("byzfl")
    if spec is None:
        return None
    saved = _byzfl_modules()
    for name in saved:
        del sys.modules[name]
    bare = types.ModuleType("byzfl")
    bare.__path__ = list(spec.submodule_search_locations)
    sys.modules["byzfl"] = bare
    try:
        return importlib.import_module("byzfl.aggregators")
    finally:
        for name in _byzfl_modules():
            del sys.modules[name]
        sys.modules.update(saved)


def _byzfl_modules() -> dict:
    return {k: v for k, v in sys.modules.items() if k == "byzfl" or k.startswith("byzfl.")}
