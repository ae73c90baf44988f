"""byzbn: a Byzantine-robustness testbed for batch normalization in federated learning."""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path as _Path

__version__ = "0.1.0"

# kernels/, attacks/ and defenses/ sit beside byzbn/ in a source checkout and install as byzbn.kernels,
# byzbn.attacks and byzbn.defenses (pyproject's package-dir). When the checkout root is on sys.path
# (python -m from the repository root, pytest) this directory shadows the installed package, so these
# three names, and only they, are mapped to their folders; nothing else beside byzbn/ becomes importable
# as byzbn.* (an installed byzbn has no such siblings and is left alone).
_SIBLINGS = ("kernels", "attacks", "defenses")
_root = _Path(__file__).resolve().parent.parent


class _SiblingFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.partition(".")
        if prefix != __name__ or name not in _SIBLINGS:
            return None
        init = _root / name / "__init__.py"
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


if (_root / "pyproject.toml").is_file() and all((_root / s / "__init__.py").is_file() for s in _SIBLINGS):
    if not any(isinstance(finder, _SiblingFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SiblingFinder())
