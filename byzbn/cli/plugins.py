"""--plugin FILE_OR_MODULE: a user's own rules, attacks, schemes and models, selectable by name on every command.

A plugin is a Python file (my_rules.py) or an importable module (mylab.rules) that registers what it
defines when imported (byzbn.defenses.register_aggregator / register_pre_aggregator,
byzbn.attacks.register_attack, byzbn.schemes.register_scheme, byzbn.nn.register_model; docs/PLUGINS.md).
The commands read their choices (--attack, --defense, --pre, --schemes, --model) from those registries,
so the plugins are imported before the parser is even built: `load_plugins(argv)` picks the --plugin
values out of argv first.

Importing is idempotent within a process (a file is executed once, a module is cached by Python), so
a command called twice in one process does not register a name twice. A plugin that cannot be found or
that raises while importing is a bad argument, reported on one line with where it failed.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence

from byzbn.cli.errors import ArgumentError, one_line

FLAG = "--plugin"
METAVAR = "FILE_OR_MODULE"
HELP = ("import this Python file or dotted module first (repeatable), so that the aggregators, pre-aggregators, "
        "attacks, schemes and models it registers can be selected by name")

# Files already executed in this process, by resolved path.
_files: dict[Path, ModuleType] = {}


def plugin_values(argv: Sequence[str]) -> list[str]:
    """The --plugin values in argv, in order, before anything else is parsed.

    Only the full spelling (--plugin X or --plugin=X), the only one the commands accept (they take no
    abbreviations).
    """
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument(FLAG, action="append", default=[])
    pre.error = _raise  # type: ignore[method-assign]  # e.g. a trailing --plugin without a value
    known, _ = pre.parse_known_args(list(argv))
    return known.plugin


def _raise(message: str):
    raise ArgumentError(message)


def load_plugins(argv: Optional[Sequence[str]]) -> list[ModuleType]:
    """Import every --plugin of argv (sys.argv[1:] when None), in order."""
    return [load_plugin(spec) for spec in plugin_values(sys.argv[1:] if argv is None else argv)]


def import_plugins(specs: Sequence[str]) -> list[ModuleType]:
    """Import the plugins `specs` (a worker process's setup: the parent's --plugin values)."""
    return [load_plugin(spec) for spec in specs]


def load_plugin(spec: str) -> ModuleType:
    """Import one plugin: a file when spec names one (or ends in .py), else a dotted module name."""
    if spec.endswith(".py") or "/" in spec or "\\" in spec or Path(spec).is_file():
        return _load_file(spec)
    if not spec or not all(part.isidentifier() for part in spec.split(".")):
        raise ArgumentError(f"{FLAG} {spec!r}: no such file, and not a dotted module name")
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as error:
        if error.name is not None and (spec == error.name or spec.startswith(error.name + ".")):
            raise ArgumentError(f"{FLAG} {spec}: no such file or importable module") from error
        raise ArgumentError(f"{FLAG} {spec}: importing it failed ({_where(error, None)})") from error
    except Exception as error:  # noqa: BLE001 - whatever the plugin raised: it is the argument that is bad
        raise ArgumentError(f"{FLAG} {spec}: importing it failed ({_where(error, None)})") from error


def _load_file(spec: str) -> ModuleType:
    path = Path(spec).expanduser().resolve()
    if path in _files:
        return _files[path]
    if not path.is_file():
        raise ArgumentError(f"{FLAG} {spec}: no such file")
    # A private, unique module name: the file's own stem could shadow (or be shadowed by) a real module.
    stem = re.sub(r"\W", "_", path.stem)
    name = f"byzbn_plugin_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ArgumentError(f"{FLAG} {spec}: not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # what dataclasses and pickle look up while the file executes
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001
        del sys.modules[name]
        raise ArgumentError(f"{FLAG} {spec}: importing it failed ({_where(error, path)})") from error
    _files[path] = module
    return module


def _where(error: BaseException, path: Optional[Path]) -> str:
    """'file:line: Type: message' at the plugin's own line where possible, since no traceback is shown."""
    frames = traceback.extract_tb(error.__traceback__)
    if isinstance(error, SyntaxError) and error.filename:
        return f"{Path(error.filename).name}:{error.lineno}: SyntaxError: {error.msg}"
    own = [f for f in frames if path is not None and Path(f.filename) == path] or frames[-1:]
    place = f"{Path(own[-1].filename).name}:{own[-1].lineno}: " if own else ""
    return f"{place}{type(error).__name__}: {one_line(error)}"


__all__ = ["FLAG", "METAVAR", "HELP", "plugin_values", "load_plugins", "import_plugins", "load_plugin"]
