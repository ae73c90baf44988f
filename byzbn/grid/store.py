"""The run store: one directory per distinct run, named by a hash of what it computes and byzbn's version.

    STORE/<key>/config.json      {"byzbn": version, "key": key, "run": identity}  (written before training)
    STORE/<key>/checkpoints/     the run's checkpoint (byzbn.runs.execute.run_one), resumed after a kill
    STORE/<key>/metrics.jsonl    its evaluations so far
    STORE/<key>/result.json      {"summary": entry, "records": [...]}: written last, atomically; a run
                                 that has it is finished and is read back, never retrained

Every file is written atomically (byzbn.runs.results), so a sweep killed at any instant leaves each run
either finished, resumable from a checkpoint, or not started. Several sweeps (and several machines, on a
shared file system) may share one store: a key names one computation wherever it is asked for.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Optional

from byzbn import __version__
from byzbn.runs import results
from byzbn.runs.errors import ArgumentError, check

CONFIG, RESULT, CHECKPOINTS, METRICS = "config.json", "result.json", "checkpoints", "metrics.jsonl"
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
        """'done' (result.json), 'started' (a checkpoint) or 'new'."""
        run_dir = self.path(key)
        if (run_dir / RESULT).is_file():
            return "done"
        if any((run_dir / CHECKPOINTS).glob("*.pt")):
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
        """The run's directory, created with config.json (empty leftovers of a killed sweep are restarted)."""
        run_dir = self.path(key)
        if run_dir.is_dir() and not (run_dir / CONFIG).is_file():
            shutil.rmtree(run_dir)
        (run_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        if not (run_dir / CONFIG).is_file():
            text = json.dumps({**stored_config(identity), "key": key}, indent=2, sort_keys=True) + "\n"
            results.atomic_write_text(run_dir / CONFIG, text)
        return run_dir

    def read(self, key: str) -> Optional[tuple[dict, list[dict]]]:
        """A finished run's (summary entry, metric records); None when it has not finished."""
        path = self.path(key) / RESULT
        if not path.is_file():
            return None
        saved = json.loads(path.read_text())
        return saved["summary"], saved["records"]


def write_result(run_dir: Path, entry: dict, records: list[dict]) -> None:
    """Mark a run finished: its metrics, then result.json (last, so that it means 'complete')."""
    results.write_metrics(Path(run_dir) / METRICS, records)
    text = json.dumps({"summary": entry, "records": records}, indent=1, sort_keys=True) + "\n"
    results.atomic_write_text(Path(run_dir) / RESULT, text)


__all__ = ["CONFIG", "RESULT", "CHECKPOINTS", "METRICS", "stored_config", "run_key", "Store", "write_result"]
