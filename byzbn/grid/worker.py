"""Train one distinct run of a sweep, in whatever process it lands: this one, a local worker, a Ray task.

The task carries the options of a point that needs the run; the worker validates them again (the data
is loaded once per process), checks that they still compute what the planner hashed (same code, same
data), and trains with byzbn.runs.execute.run_one into the run's store directory, resuming from its
checkpoint when a killed sweep left one. result.json is written last, so a run either has it or is
resumed. Each run uses `threads` intra-op threads, whatever the backend (on CPU the numbers depend on it).

A run is trained under its store lock (byzbn.grid.store.run_lock): a task that finds it held by another
sweep returns at once, unfinished (`Outcome.locked`), unless it was asked to wait; once it holds the lock
it reads back the result another sweep may have written meanwhile instead of training again.

A local worker process dies with the sweep that started it (`watch_parent`): killed (SIGKILL, from Linux's
parent-death signal) when the sweep's process ends however it ends, or, where that signal does not
exist, exiting within a second of noticing it has another parent.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from byzbn.grid.planner import identity_of, run_namespace
from byzbn.grid.store import read_result, run_lock, write_result
from byzbn.runs import execute
from byzbn.runs.config import validate_run



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
    wait: bool = False    # wait for the run's lock (else return `locked` when another process holds it)


@dataclass(frozen=True)
class Outcome:
    key: str
    entry: Optional[dict]  # the summary entry (byzbn.runs.execute.run_one); None when locked
    records: Optional[list]
    trained: bool = False  # trained (or finished) here, rather than read back
    locked: bool = False   # another process holds the run's lock: nothing was done


PARENT_POLL_S = 1.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def watch_parent(parent: int) -> None:
    """In a worker process: die with `parent` (the sweep), and leave Ctrl-C to it (it stops the workers)."""
    from tqdm import tqdm

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A thread lock for tqdm's bars, not its default process-shared semaphore, which a worker stopped
    # mid-run would leave behind (and the sweep's exit would warn about).
    tqdm.set_lock(threading.RLock())
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # the polling thread below still notices
    if os.getppid() != parent:  # the sweep died before the signal was set
        os._exit(1)

    def poll() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=poll, name="byzbn-parent-watch", daemon=True).start()


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
    """Train (or finish, or read back) one run under its lock; `setup` runs first (the command's --plugin imports)."""
    with run_lock(Path(task.run_dir), wait=task.wait) as held:
        if not held:
            return Outcome(task.key, None, None, locked=True)
        # finished by another sweep while this one waited (a damaged one was reported by the sweep already)
        read = read_result(Path(task.run_dir), report=False)
        if read is not None:
            return Outcome(task.key, *read)
        return _train(task, setup)


def _train(task: Task, setup: Optional[Callable[[], object]]) -> Outcome:
    if setup is not None:
        setup()
    with torch_threads(task.threads):
        plan = validate_run(run_namespace(task.options, out=task.run_dir, resume=True),
                            compared=list(task.compared) or None)
        identity = identity_of(plan.config, plan.client_indices, task.scheme, task.scenario, task.threads)
        if identity != task.identity:
            changed = sorted(k for k in set(identity) | set(task.identity) if identity.get(k) != task.identity.get(k))
            raise RuntimeError(f"run {task.key}: this process would compute another run than the planner hashed "
                               f"(differs in {changed}): is the code or the data different here?")
        entry, records = execute.run_one(plan, task.scheme, task.scenario, [])
        write_result(Path(task.run_dir), entry, records)
    return Outcome(task.key, entry, records, trained=True)


__all__ = ["Task", "Outcome", "PARENT_POLL_S", "watch_parent", "torch_threads", "train"]
