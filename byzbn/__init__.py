"""byzbn: a Byzantine-robustness testbed for batch normalization in federated learning."""
from pathlib import Path as _Path

# In a source checkout, kernels/, attacks/ and defenses/ sit beside byzbn/ (pyproject maps them to
# byzbn.kernels, ...). When the checkout root is on sys.path (python -m from the repo root, pytest),
# this directory shadows the installed package, so let the subpackages be found beside it. An
# installed byzbn has no such siblings and is left alone.
_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "kernels" / "__init__.py").is_file():
    __path__.append(str(_root))  # noqa: F821 - __path__ is defined for packages

__version__ = "0.1.0"
