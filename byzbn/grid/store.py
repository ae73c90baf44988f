"""The run store: one directory per distinct run, named by a hash of what it computes and byzbn's version.

    STORE/<key>/config.json      {"byzbn": version, "key": key, "run": identity}  (written before training)
    STORE/<key>/lock             held (an OS file lock) by the process training the run
    STORE/<key>/checkpoints/     the run's checkpoint (byzbn.runs.execute.run_one), resumed after a kill
    STORE/<key>/metrics.jsonl    its evaluations so far
    STORE/<key>/result.json      {"summary": entry, "records": [...]}: written last, atomically, with its
                                 checksum (result.json.sha256) after it; a run that has both, agreeing, is
                                 finished and is read back, never retrained

The identity (byzbn.runs.identity) holds the content of the run's data file and plugins, so a rewritten
npz or an edited plugin makes another key. Every file is written atomically (byzbn.runs.results), so a
sweep killed at any instant leaves each run either finished, resumable from a checkpoint, or not
started; a result.json or checkpoint that fails its checksum or cannot be read is reported in one line
and its run is trained again. Several sweeps (and several machines, on a shared file system with
working locks) may share one store: a key names one computation wherever it is asked for, and the run
lock makes them split the runs instead of training each twice.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from byzbn import __version__
from byzbn.runs import results
from byzbn.runs.errors import ArgumentError, check

CONFIG, RESULT, CHECKPOINTS, METRICS, LOCK = "config.json", "result.json", "checkpoints", "metrics.jsonl", "lock"
KEY_CHARS = 16  # 64 bits of sha256: collisions are checked against config.json anyway


def stored_config(identity: dict) -> dict:
    """What config.json holds for a run: its identity and the byzbn version that computes it."""
    return {"byzbn": __version__, "run": identity}


def run_key(identity: dict) -> str:
    """The directory name of a run: a hash of its identity (byzbn.runs.identity + data digest) and version."""
    text = json.dumps(stored_config(identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:KEY_CHARS]


class Store:
    """The directory of the runs; `check` reads only, `prepare` writes."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def state(self, key: str) -> str:
        """'done' (a result.json that passes its checksum), 'started' (a checkpoint that does) or 'new'."""
        run_dir = self.path(key)
        if read_result(run_dir) is not None:
            return "done"
        if any(_intact(path) for path in (run_dir / CHECKPOINTS).glob("*.pt")):
            return "started"
        return "new"

    def check(self, key: str, identity: dict) -> None:
        """Refuse a directory the sweep did not make, or one made for another computation; writes nothing."""
        check(not self.root.exists() or self.root.is_dir(), f"--store {self.root} exists and is not a directory")
        run_dir = self.path(key)
        if not run_dir.exists():
            return
        saved = run_dir / CONFIG
        if not saved.is_file():
            check(not any(p.is_file() for p in run_dir.rglob("*")),
                  f"the store holds {run_dir} without {CONFIG}: it is not a sweep run; remove it or choose "
                  f"another --store")
            return  # killed between creating it and writing config.json: prepare starts it afresh
        try:
            stored = json.loads(saved.read_text())
        except (OSError, ValueError) as error:
            raise ArgumentError(f"the store's {saved} is unreadable ({error}); remove {run_dir}") from error
        check(stored == {**stored_config(identity), "key": key},
              f"the store's {saved} describes another run than the one hashed to {key}; remove {run_dir}")

    def prepare(self, key: str, identity: dict) -> Path:
        """The run's directory, created with config.json (empty leftovers of a killed sweep are reused as they are:
        another sweep on the store may be creating the same directory now)."""
        run_dir = self.path(key)
        (run_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        if not (run_dir / CONFIG).is_file():
            text = json.dumps({**stored_config(identity), "key": key}, indent=2, sort_keys=True) + "\n"
            results.atomic_write_text(run_dir / CONFIG, text)
        return run_dir

    def read(self, key: str) -> Optional[tuple[dict, list[dict]]]:
        """A finished run's (summary entry, metric records); None when it has not finished, or when its
        result.json fails its checksum or cannot be read (reported in one line: the run is trained again)."""
        return read_result(self.path(key))


def read_result(run_dir: Path, report: bool = True) -> Optional[tuple[dict, list[dict]]]:
    """The (summary entry, metric records) of the run in run_dir, if finished and intact (else None; a damaged
    result.json is reported on stderr in one line naming it, unless `report` is false)."""
    path = Path(run_dir) / RESULT
    try:
        saved = json.loads(results.read_checked(path).decode("utf-8"))
        if not (isinstance(saved, dict) and isinstance(saved.get("summary"), dict)
                and isinstance(saved.get("records"), list)):
            raise results.CorruptFile(f"{path} does not hold a run's result")
    except FileNotFoundError:
        return None
    except (results.CorruptFile, OSError, UnicodeDecodeError, ValueError) as error:
        problem = error if isinstance(error, results.CorruptFile) else \
            results.CorruptFile(f"{path} cannot be read ({type(error).__name__})")
        if report:
            results.report_corrupt(problem, "its run is trained again", path)
        return None
    return saved["summary"], saved["records"]


def _intact(checkpoint: Path) -> bool:
    """Whether a checkpoint passes its checksum (a damaged one is reported: its run restarts from scratch)."""
    try:
        results.read_checked(checkpoint)
    except FileNotFoundError:
        return False
    except (results.CorruptFile, OSError) as error:
        problem = error if isinstance(error, results.CorruptFile) else \
            results.CorruptFile(f"{checkpoint} cannot be read ({type(error).__name__})")
        results.report_corrupt(problem, "the run restarts from scratch", checkpoint)
        return False
    return True


def write_result(run_dir: Path, entry: dict, records: list[dict]) -> None:
    """Mark a run finished: its metrics, then result.json and its checksum (last, so that they mean 'complete')."""
    results.write_metrics(Path(run_dir) / METRICS, records)
    text = json.dumps({"summary": entry, "records": records}, indent=1, sort_keys=True) + "\n"
    results.write_checked(Path(run_dir) / RESULT, text.encode("utf-8"))


@contextmanager
def run_lock(run_dir: Path, wait: bool) -> Iterator[bool]:
    """Hold the run's lock (an OS file lock on run_dir/lock) for the block; yields False when another process
    holds it and `wait` is false. Released when the block ends or the process dies, however it dies."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): runs are not shared between sweeps there
        yield True
        return
    fd = os.open(Path(run_dir) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


__all__ = ["CONFIG", "RESULT", "CHECKPOINTS", "METRICS", "LOCK", "stored_config", "run_key", "Store", "read_result",
           "write_result", "run_lock"]
