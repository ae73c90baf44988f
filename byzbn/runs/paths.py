"""Output paths checked before anything is written, and cleaned up when writing fails half-way.

`check_writable_dir` answers "can this command create (or fill) this directory?" without leaving a
trace: the nearest existing ancestor must be a directory in which a probe directory with a small file
can be made (and is removed at once). That catches `--out /proc/x` (a file system that refuses new
entries), `--out afile/sub` (a file on the way), a read-only mount and a disk already full, each as one
line naming the flag, before any output exists.

`removing_if_empty` is for what can still fail later (a disk that fills during the run): the directory
the command created is removed again if the failure left nothing in it but empty folders, so a failed
command never leaves an empty --out behind.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from byzbn.runs.errors import ArgumentError, one_line

PROBE_BYTES = 64 * 1024  # what the probe writes: fails on a disk that is (nearly) full


def _nearest_existing(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def _reason(error: OSError) -> str:
    return os.strerror(error.errno) if error.errno else one_line(error)


def check_writable_dir(path, flag: str) -> None:
    """ArgumentError (one line naming `flag`) unless `path` is, or can be created as, a writable directory."""
    path = Path(path)
    existing = _nearest_existing(path.absolute())
    if not existing.is_dir():
        where = "is" if existing == path.absolute() else f"has {existing} on its way, which is"
        raise ArgumentError(f"{flag} {path}: {where} a file, not a directory")
    try:
        probe = Path(tempfile.mkdtemp(prefix=".byzbn-probe-", dir=existing))
    except OSError as error:
        raise ArgumentError(f"{flag} {path}: cannot create a directory in {existing} ({_reason(error)})") from error
    try:
        with open(probe / "probe", "wb") as handle:
            handle.write(b"\0" * PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise ArgumentError(f"{flag} {path}: cannot write in {existing} ({_reason(error)})") from error
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def holds_files(path: Path) -> bool:
    return any(p.is_file() for p in Path(path).rglob("*"))


@contextmanager
def removing_if_empty(path) -> Iterator[None]:
    """Remove `path` (if this block created it) when the block raises and left no file in it."""
    path = Path(path)
    existed = path.exists()
    try:
        yield
    except BaseException:
        if not existed and path.is_dir() and not holds_files(path):
            shutil.rmtree(path, ignore_errors=True)
        raise


def write_failure(error: OSError) -> str:
    """One line for an OSError raised while writing outputs (a full disk, a file system gone read-only)."""
    target = f" {error.filename}" if error.filename else ""
    hint = ": free some space and rerun (--resume continues)" if error.errno == errno.ENOSPC else ""
    return f"cannot write{target} ({_reason(error)}){hint}"


__all__ = ["PROBE_BYTES", "check_writable_dir", "holds_files", "removing_if_empty", "write_failure"]
