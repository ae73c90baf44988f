"""Train one distinct run of a sweep, in whatever process it lands: this one, a local worker, a Ray task.

The task carries the options of a point that needs the run; the worker validates them again (the data
is loaded once per process), checks that they still compute what the planner hashed (same code, same
data), and trains with byzbn.runs.execute.run_one into the run's store directory, resuming from its
checkpoint when a killed sweep left one. result.json is written last, so a run either has it or is
resumed. Each run uses `threads` intra-op threads, whatever the backend (on CPU the numbers depend on it).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from byzbn.grid.planner import identity_of, run_namespace
from byzbn.grid.store import write_result
from byzbn.runs import execute
from byzbn.runs.config import validate_run

# The datasets this process has loaded, by (dataset, data_root, download): a worker loads each once.
DATASETS: dict = {}


@dataclass(frozen=True)
class Task:
    """One distinct run to train (picklable: it crosses process and machine boundaries)."""

    key: str
    identity: dict
    options: dict
    scheme: str
    scenario: str
    run_dir: str
    threads: int
    compared: tuple = ()  # the sweep's scheme axis (byzbn.runs.config.validate_run's `compared`)


@dataclass(frozen=True)
class Outcome:
    key: str
    entry: dict  # the summary entry (byzbn.runs.execute.run_one)
    records: list


@contextmanager
def torch_threads(threads: int):
    """Run with `threads` intra-op threads, restoring the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(task: Task, setup: Optional[Callable[[], object]] = None) -> Outcome:
    """Train (or finish, or read back) one run; `setup` runs first (the command's --plugin imports)."""
    if setup is not None:
        setup()
    with torch_threads(task.threads):
        plan = validate_run(run_namespace(task.options, out=task.run_dir, resume=True), DATASETS,
                            compared=list(task.compared) or None)
        identity = identity_of(plan.config, plan.client_indices, task.scheme, task.scenario, task.threads)
        if identity != task.identity:
            changed = sorted(k for k in set(identity) | set(task.identity) if identity.get(k) != task.identity.get(k))
            raise RuntimeError(f"run {task.key}: this process would compute another run than the planner hashed "
                               f"(differs in {changed}): is the code or the data different here?")
        entry, records = execute.run_one(plan, task.scheme, task.scenario, [])
        write_result(Path(task.run_dir), entry, records)
    return Outcome(task.key, entry, records)


__all__ = ["DATASETS", "Task", "Outcome", "torch_threads", "train"]
