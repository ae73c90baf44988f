"""A sweep from grid to outputs, for the commands: plan (writes nothing), train, write the outputs.

    plan, store = prepare(spec, threads, store_root)     # every point validated, the store checked
    outcomes, trained = train(plan, store, execution)    # finished runs read back, the others trained
    write_outputs(out, plan, store, outcomes, record)    # results.csv, heatmap/breakdown, table.md, report.md

One progress bar covers the whole sweep: runs done / distinct runs, and the ETA from the rate so far.

Several sweeps may train into one store at once: a run another process is training (its store lock is
held) is skipped, and read back (or trained, if that process died) once this sweep's other runs are
done. Ctrl-C or SIGTERM stops the sweep's workers and ends it with the runs finished so far stored
(`Interrupted`, exit status 128 + the signal's number): the same command continues it.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

from byzbn.grid.backends import run_tasks
from byzbn.grid.planner import SweepPlan, check_store, plan_sweep
from byzbn.grid.plots import write_plots
from byzbn.grid.report import write_reports
from byzbn.grid.spec import SweepSpec, value_text
from byzbn.grid.store import Store
from byzbn.grid.table import cell_rows, read_results, write_results
from byzbn.grid.worst import chance_of
from byzbn.grid.worker import Outcome, Task
from byzbn.runs.results import atomic_write_text

RECORD = "sweep.json"


@dataclass(frozen=True)
class Execution:
    """How the runs train: backend 'local' (jobs processes; 1 = this process) or 'ray' (at ray_address)."""

    backend: str = "local"
    jobs: int = 1
    threads: int = 1
    ray_address: Optional[str] = None
    setup: Optional[Callable[[], object]] = None  # run first in every worker: the command's --plugin imports


def prepare(spec: SweepSpec, threads: int, store_root: Path) -> tuple[SweepPlan, Store]:
    """Validate every point and check the store; raises ArgumentError, writes nothing."""
    store = Store(store_root)
    plan = plan_sweep(spec, threads)
    check_store(plan, store)
    return plan, store


class Interrupted(SystemExit):
    """The sweep was stopped by a signal; its finished runs are stored (exit status 128 + the signal)."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises Interrupted here (as Ctrl-C raises KeyboardInterrupt), so that the workers are stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def train(plan: SweepPlan, store: Store, execution: Execution, quiet: bool = False,
          on_outcome: Optional[Callable[[dict], None]] = None) -> tuple[dict, int]:
    """({key: (summary entry, records)} of every distinct run, the number trained by this call).

    `on_outcome(outcomes)` is called after each run finishes (e.g. to rewrite a partial results.csv).
    Runs locked by another sweep are waited for at the end. Raises Interrupted on Ctrl-C or SIGTERM, after
    one line on stderr saying how many runs are stored.
    """
    from tqdm import tqdm

    outcomes = {key: read for key in plan.runs if (read := store.read(key)) is not None}
    tasks = [Task(run.key, run.identity, run.options, run.scheme, run.scenario,
                  str(store.prepare(run.key, run.identity)), execution.threads, tuple(plan.spec.axes["schemes"]))
             for run in plan.runs.values() if run.key not in outcomes]
    bar = tqdm(total=len(plan.runs), initial=len(outcomes), unit="run", desc=plan.spec.name, file=sys.stderr,
               disable=quiet, dynamic_ncols=True, smoothing=0)

    by_key = {task.key: task for task in tasks}
    locked: list[Task] = []
    trained = 0

    def done(outcome: Outcome) -> None:
        nonlocal trained
        if outcome.locked:  # another sweep trains it: come back to it at the end
            locked.append(by_key[outcome.key])
            return
        outcomes[outcome.key] = (outcome.entry, outcome.records)
        trained += outcome.trained
        bar.update(1)
        if on_outcome is not None:
            on_outcome(outcomes)

    run = dict(backend=execution.backend, jobs=execution.jobs, setup=execution.setup,
               ray_address=execution.ray_address)
    signum = None
    try:
        with _sigterm_interrupts():
            run_tasks(tasks, done, **run)
            if locked:  # wait for each lock, then read the result back (or train it, if its trainer died)
                run_tasks([replace(task, wait=True) for task in locked], done, **run)
    except KeyboardInterrupt:
        signum = signal.SIGINT
    except Interrupted as error:
        signum = error.signum
    finally:
        bar.close()
    if signum is not None:  # raised here, once the workers' pool (held by the traceback) is gone
        print(f"interrupted ({signal.Signals(signum).name}): {len(outcomes)} of {len(plan.runs)} runs are stored in "
              f"{store.root}; the same command continues the sweep", file=sys.stderr, flush=True)
        raise Interrupted(signum)
    return outcomes, trained


def rows_of(plan: SweepPlan, store: Store, outcomes: dict) -> list[dict]:
    return cell_rows(plan.cells, {key: entry for key, (entry, _) in outcomes.items()}, store.path)


def machine() -> dict:
    """Where a sweep ran: CPU model and cores, torch, Python, and the UTC time it finished."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version(), "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def record_of(plan: SweepPlan, store: Store, outcomes: dict, execution: Execution, trained: int,
              command: str, wall_s: float) -> dict:
    """sweep.json: the grid, the counts, the times (what report.md states)."""
    walls = {key: entry["wall_s"] for key, (entry, _) in outcomes.items()}
    return {"name": plan.spec.name, "command": command, "store": str(store.root),
            "axes": {k: [value_text(v) for v in values] for k, values in plan.spec.axes.items()},
            "fixed": {k: value_text(v) for k, v in plan.spec.fixed.items()},
            "unattacked": dict(plan.unattacked),
            "data": dict(plan.data),
            "counts": {"cells": len(plan.cells), "runs": len(plan.runs), "trained": trained,
                       "read_back": len(plan.runs) - trained},
            "backend": execution.backend, "jobs": execution.jobs, "threads": execution.threads,
            "wall_s": round(wall_s, 3), "train_s": round(sum(walls.values()), 3), "machine": machine(),
            "naive_grid_train_s": round(sum(walls.get(cell.key, 0.0) for cell in plan.cells), 3)}


def write_outputs(out: Path, plan: SweepPlan, store: Store, outcomes: dict, record: dict,
                  tolerance: float = 0.1) -> list[dict]:
    """results.csv, then (read back from it) heatmap.png, breakdown.png, table.md, report.md; and sweep.json."""
    out = Path(out)
    write_results(out / "results.csv", rows_of(plan, store, outcomes))
    rows = redraw(out, record, tolerance)
    atomic_write_text(out / RECORD, json.dumps(record, indent=2) + "\n")
    return rows


def redraw(out: Path, record: dict, tolerance: float = 0.1) -> list[dict]:
    """heatmap.png, breakdown.png, table.md and report.md of `out` from its results.csv and `record`."""
    rows = read_results(Path(out) / "results.csv")
    images = write_plots(Path(out), rows, chance=chance_of(record))
    write_reports(Path(out), rows, record, tolerance, images)
    return rows


__all__ = ["RECORD", "Execution", "prepare", "train", "rows_of", "machine", "record_of", "write_outputs",
           "redraw"]
