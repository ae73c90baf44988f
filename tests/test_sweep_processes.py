"""Sweeps as processes: two sweeps on one store split the runs; a sweep's workers die with it.

Each sweep is a `python -m byzbn.sweep` subprocess on a tiny grid (conftest.py's npz, a narrow CNN).
Training is counted by a plugin rule that appends a line to a log file at every aggregation of a
gradient, so the count does not rely on what the sweeps report about themselves.
"""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from byzbn import sweep
from byzbn.cli import plugins

REPO = Path(__file__).resolve().parent.parent
LOG_ENV = "BYZBN_TEST_TRAINING_LOG"
PLUGIN = '''
import os

from byzbn.defenses import register_aggregator


@register_aggregator("counted-median")
class CountedMedian:
    def __init__(self, f):
        self.f = f

    def __call__(self, x):
        if x.shape[1] > 100:  # a model's gradient, not the validator's few random columns
            with open(os.environ["BYZBN_TEST_TRAINING_LOG"], "a") as handle:
                handle.write(f"{os.getpid()}\\n")
        return x.median(dim=0).values
'''
GRID = {"schemes": ["naive", "groupnorm"], "byzantine": [1], "attack": "sign-flip", "target": "grads",
        "defense": "counted-median", "clients": 5, "width": 0.125, "batch_size": 4, "eval_every": 4,
        "checkpoint_every": 1, "lr": 0.1, "heterogeneity": "gamma:0.5", "seed": [0, 1]}


def write_grid(path: Path, npz: Path, **changes) -> Path:
    config = {"dataset": f"npz:{npz}", **GRID, **changes}
    path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in config.items()) + "\n")
    return path


@pytest.fixture
def rule(tmp_path):
    """The counting plugin's file (its rule taken out of the registry after the test)."""
    from byzbn.defenses import AGGREGATORS

    path = tmp_path / "counted.py"
    path.write_text(PLUGIN)
    loaded = set(plugins._files)
    yield path
    AGGREGATORS.pop("counted-median", None)
    for key in set(plugins._files) - loaded:
        del plugins._files[key]


def start_sweep(grid: Path, out: Path, *extra: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", LOG_ENV: str(log)}
    return subprocess.Popen([sys.executable, "-m", "byzbn.sweep", str(grid), "--out", str(out), "--quiet", *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_two_sweeps_on_one_store_train_each_run_once(tiny_npz, tmp_path, rule, monkeypatch, capsys):
    grid = write_grid(tmp_path / "grid.toml", tiny_npz, steps=8)  # 2 schemes x 2 seeds x 3 scenarios: 12 runs
    alone = tmp_path / "alone.log"
    monkeypatch.setenv(LOG_ENV, str(alone))
    assert sweep.main([str(grid), "--out", str(tmp_path / "alone"), "--plugin", str(rule), "--jobs", "1",
                       "--quiet"]) == 0
    assert "12 trained" in capsys.readouterr().out and lines(alone) > 0

    both, store = tmp_path / "both.log", tmp_path / "store"
    sweeps = [start_sweep(grid, tmp_path / f"out{i}", "--store", str(store), "--plugin", str(rule), "--jobs", "1",
                          log=both) for i in range(2)]
    outputs = [proc.communicate(timeout=600) for proc in sweeps]
    assert [proc.returncode for proc in sweeps] == [0, 0], [err for _, err in outputs]
    assert lines(both) == lines(alone)  # every run trained once, by one sweep or the other
    trained = [int(re.search(r"\((\d+) trained, (\d+) read back\)", out).group(1)) for out, _ in outputs]
    assert sum(trained) == 12
    assert accuracies(tmp_path / "out0") == accuracies(tmp_path / "out1") == accuracies(tmp_path / "alone")


def accuracies(out: Path) -> list[tuple]:
    with open(out / "results.csv", newline="") as handle:
        return [(r["scheme"], r["scenario"], r["seed"], r["final_acc"], r["best_acc"]) for r in csv.DictReader(handle)]


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped by whoever adopted it counts as gone)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def workers(pid: int) -> list[int]:
    def spawned(child: int) -> bool:
        try:
            return b"spawn_main" in (Path("/proc") / str(child) / "cmdline").read_bytes()  # not the resource tracker
        except OSError:
            return False
    return [child for child in children(pid) if spawned(child)]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("kill", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_the_workers_die_with_their_sweep(tiny_npz, tmp_path, rule, kill):
    grid = write_grid(tmp_path / "grid.toml", tiny_npz, steps=200, eval_every=100, checkpoint_every=10,
                      defense="median")  # 12 runs
    out = tmp_path / "out"
    proc = start_sweep(grid, out, "--jobs", "2", log=tmp_path / "unused.log")
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not (
            len(workers(proc.pid)) == 2 and list((out / "runs").glob("*/result.json"))):
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be killed: " + proc.communicate()[1]
    pids = children(proc.pid)
    os.kill(proc.pid, kill)  # the sweep alone, not its process group
    _, err = proc.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if alive(pid)], "worker processes outlived their sweep"
    if kill == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:  # stopped in order: one line, the status of the signal, the finished runs stored
        assert proc.returncode == 128 + kill, err
        assert err.count("\n") == 1 and f"interrupted ({signal.Signals(kill).name})" in err, err
    stored = list((out / "runs").glob("*/result.json"))  # the runs finished before the signal are kept
    assert 0 < len(stored) < 12 and all(path.with_name("result.json.sha256").is_file() for path in stored)
