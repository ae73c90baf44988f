"""The content of a run's inputs outside its options: the data file and the plugin sources, as sha256.

A run's stored result is only valid for the inputs it was computed from. Its options name the data
file (npz:PATH) and the plugins (--plugin FILE_OR_MODULE) by where they are, not by what they hold, so
the sweep's run key (byzbn.runs.identity) adds these digests: rewrite the data file or edit a plugin,
and the run is another run.

Hashing a large data file for every point of a grid would be slow, so a file's digest is cached by its
resolved path, size and modification time (nanoseconds): in this process, and in a small JSON file under
the user's cache directory ($XDG_CACHE_HOME/byzbn, else ~/.cache/byzbn), so that the workers and the next
sweep reuse it. A cache that cannot be read or written is ignored: the digest is then computed again.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Optional

from byzbn.data import NPZ_PREFIX

CACHE_FILE = "digests.json"
CHUNK = 1 << 20

_memory: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256, for this process


def cache_dir() -> Path:
    """Where the digests of data files are cached between processes."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "byzbn"


def data_file(dataset: str) -> Optional[Path]:
    """The file a --dataset value reads from (npz:PATH), or None for a built-in dataset."""
    if isinstance(dataset, str) and dataset.startswith(NPZ_PREFIX):
        return Path(dataset[len(NPZ_PREFIX):]).expanduser()
    return None


def file_state(dataset: str) -> Optional[tuple]:
    """(resolved path, size, mtime_ns) of a --dataset's file, or None (built in, or no such file)."""
    path = data_file(dataset)
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_cache() -> dict:
    try:
        cached = json.loads((cache_dir() / CACHE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cached if isinstance(cached, dict) else {}


def _write_cache(entries: dict) -> None:
    from byzbn.runs.results import atomic_write_text

    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_dir() / CACHE_FILE, json.dumps(entries, sort_keys=True) + "\n")
    except OSError:
        pass  # a cache only: the digest is computed again next time


def data_digest(dataset: str) -> Optional[str]:
    """sha256 of the data file of `dataset` (npz:PATH), cached by path, size and mtime; None for a built-in
    dataset or a file that cannot be read (the validator reports that one)."""
    state = file_state(dataset)
    if state is None:
        return None
    if state in _memory:
        return _memory[state]
    entry_key = json.dumps(list(state))
    cached = _read_cache()
    digest = cached.get(entry_key)
    if not isinstance(digest, str):
        try:
            digest = sha256_file(Path(state[0]))
        except OSError:
            return None
        # entries of files since rewritten are dropped: one entry per path
        cached = {k: v for k, v in cached.items() if not k.startswith(json.dumps([state[0]])[:-1] + ",")}
        cached[entry_key] = digest
        _write_cache(cached)
    _memory[state] = digest
    return digest


def plugin_source(spec: str) -> Optional[Path]:
    """The source file of a --plugin value: the file itself, or the module's (a package's __init__.py)."""
    if spec.endswith(".py") or "/" in spec or "\\" in spec or Path(spec).is_file():
        return Path(spec).expanduser()
    try:
        found = importlib.util.find_spec(spec)
    except (ImportError, ValueError):
        return None
    return Path(found.origin) if found is not None and found.origin and found.has_location else None


def plugin_digests(specs) -> list[str]:
    """sha256 of each plugin's source, in --plugin order ('unreadable:SPEC' where it cannot be read)."""
    digests = []
    for spec in specs:
        source = plugin_source(spec)
        try:
            digests.append(sha256_file(source) if source is not None else f"unreadable:{spec}")
        except OSError:
            digests.append(f"unreadable:{spec}")
    return digests


def input_digests(dataset: str, plugins) -> dict:
    """What a run's identity adds for its inputs' content: {'data': sha256} for an npz file and
    {'plugins': [sha256, ...]} when plugins are loaded (nothing for a built-in dataset without plugins)."""
    inputs = {}
    digest = data_digest(dataset)
    if digest is not None:
        inputs["data"] = digest
    if plugins:
        inputs["plugins"] = plugin_digests(plugins)
    return inputs


__all__ = ["cache_dir", "data_file", "file_state", "sha256_file", "data_digest", "plugin_source",
           "plugin_digests", "input_digests"]
