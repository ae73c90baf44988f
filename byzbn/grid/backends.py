"""Where a sweep's runs train: this process (--jobs 1), local worker processes (--jobs K), or Ray tasks.

Every backend runs byzbn.grid.worker.train on the same tasks, each run on `threads` intra-op threads and
writing into the same store, so the results do not depend on the backend or on the number of jobs.
Outcomes are handed to `on_done` in this process as they arrive (the progress bar, results.csv).
A failing run is a real error: the runs not yet started are cancelled and the error propagates. So does
an interruption (Ctrl-C, SIGTERM: byzbn.grid.engine), after the local worker processes are stopped; and
a worker process whose sweep is killed outright dies with it (byzbn.grid.worker.watch_parent).
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable, Optional

from byzbn.grid import worker
from byzbn.grid.worker import Outcome, Task

BACKENDS = ("local", "ray")
# Ray offline and quiet: no usage statistics, no dashboard, no log forwarding from the workers.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
           "RAY_DISABLE_DOCKER_CPU_WARNING": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
           "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
RAY_LOCAL_OBJECT_STORE = 128 * 1024 ** 2  # results are a few kB: a small local object store starts faster


def available_cores() -> int:
    """The cores this process may run on (the container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_jobs(threads: int, on_gpu: bool) -> int:
    """--jobs when not given: one run per `threads` cores on CPU; one at a time on a GPU (they would share it)."""
    return 1 if on_gpu else max(1, available_cores() // threads)


def run_tasks(tasks: list[Task], on_done: Callable[[Outcome], None], *, backend: str = "local", jobs: int = 1,
              setup: Optional[Callable[[], object]] = None, ray_address: Optional[str] = None) -> None:
    """Train every task, calling on_done(outcome) here as each finishes."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: valid {list(BACKENDS)}")
    if not tasks:  # everything was read back: no pool, no cluster
        return
    if backend == "ray":
        run_ray(tasks, on_done, jobs=jobs, setup=setup, address=ray_address)
    else:
        run_local(tasks, on_done, jobs=jobs, setup=setup)


def run_local(tasks: list[Task], on_done: Callable[[Outcome], None], *, jobs: int,
              setup: Optional[Callable[[], object]] = None) -> None:
    """jobs == 1: one after the other in this process; else a pool of `jobs` fresh (spawned) processes."""
    if jobs == 1 or len(tasks) <= 1:
        for task in tasks:
            on_done(worker.train(task, setup))
        return
    # spawn, not fork: a forked child would inherit torch's thread pools and locks mid-state.
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=worker.watch_parent, initargs=(os.getpid(),))
    pending = {pool.submit(worker.train, task, setup) for task in tasks}
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                on_done(future.result())
    except BaseException:
        stop_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)  # the queues too, before the error propagates
        raise
    finally:
        pool.shutdown(wait=not pending, cancel_futures=True)


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's processes now (mid-run: their runs resume from their checkpoints next time)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # the executor has no public handle
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)


def run_ray(tasks: list[Task], on_done: Callable[[Outcome], None], *, jobs: int, threads: Optional[int] = None,
            setup: Optional[Callable[[], object]] = None, address: Optional[str] = None) -> None:
    """Each task a Ray task of threads CPUs on the cluster at `address` (a local one of jobs·threads CPUs if None).

    The workers write into the store themselves: on a cluster it must be a directory every node sees.
    A task whose worker dies is retried by Ray, and resumes from the run's checkpoint.
    """
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    threads = threads or (tasks[0].threads if tasks else 1)
    started = not ray.is_initialized()
    if started:
        common = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        if address:
            ray.init(address=address, **common)
        else:
            ray.init(num_cpus=jobs * threads, object_store_memory=RAY_LOCAL_OBJECT_STORE, **common)
    remote = ray.remote(num_cpus=threads)(worker.train)
    pending = [remote.remote(task, setup) for task in tasks]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                on_done(ray.get(ref))
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


__all__ = ["BACKENDS", "RAY_ENV", "available_cores", "default_jobs", "run_tasks", "run_local", "stop_workers",
           "run_ray"]
