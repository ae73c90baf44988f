"""Bounded resources: the memory estimate refuses what cannot fit, the class count is capped, a dry run
counts without materializing the plan, and the GPU check runs (its logic on CPU here)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from byzbn.cli import attack_eval
from byzbn.cli.sweep_config import spec_from_config
from byzbn.data import load_dataset
from byzbn.data.datasets import MAX_CLASSES
from byzbn.grid.counting import count_sweep, dry_run_count
from byzbn.grid.planner import plan_sweep
from byzbn.grid.store import Store
from byzbn.nn.models import make_cnn
from byzbn.runs.memory import GB, LIMIT_ENV, available_bytes, estimate, model_shapes

REPO = Path(__file__).resolve().parent.parent
TINY = ["--dataset", "digits", "--schemes", "naive", "--steps", "2", "--eval-every", "2", "--batch-size", "4",
        "--quiet", "--attack", "none"]


def test_the_estimate_counts_the_real_models_parameters_and_activations():
    model = make_cnn((1, 28, 28), 10, 0.25)
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel()))
             for m in model.modules() if not list(m.children())]
    model(torch.zeros(1, 1, 28, 28))
    for hook in hooks:
        hook.remove()
    parameters, activations, largest = model_shapes(lambda: make_cnn((1, 28, 28), 10, 0.25), (1, 28, 28))
    assert parameters == sum(p.numel() for p in model.parameters())
    assert (activations, largest) == (sum(sizes), max(sizes))


def test_the_estimate_grows_with_clients_batch_and_width():
    def peak(width, clients, batch):
        return estimate(lambda: make_cnn((1, 28, 28), 10, width, norm=nn.BatchNorm2d), (1, 28, 28), clients,
                        batch).bytes

    base = peak(0.25, 10, 16)
    assert peak(0.5, 10, 16) > base and peak(0.25, 20, 16) > base and peak(0.25, 10, 32) > base
    assert peak(40, 10, 16) > 200 * GB  # the run that used to be OOM-killed


def test_a_run_beyond_the_limit_is_refused_with_its_estimate(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(LIMIT_ENV, "0.01")
    out = tmp_path / "out"
    rc = attack_eval.main([*TINY, "--width", "0.5", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "--width=0.5" in err and "needs about" in err and "more than the 0.01 GB available" in err
    assert LIMIT_ENV in err and not out.exists()


def test_the_limit_can_be_raised(monkeypatch):
    monkeypatch.setenv(LIMIT_ENV, "1e6")
    assert available_bytes() == int(1e6 * GB)
    from byzbn.runs.config import validate_run

    validate_run(attack_eval.build_parser().parse_args([*TINY, "--width", "0.0625"]))


@pytest.mark.parametrize("value", ["lots", "-1", "0"])
def test_a_malformed_limit_is_one_line(capsys, tmp_path, monkeypatch, value):
    monkeypatch.setenv(LIMIT_ENV, value)
    rc = attack_eval.main([*TINY, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and LIMIT_ENV in err, err


def test_width_40_is_refused_for_real_before_anything_is_written(tmp_path):
    """No limit set: the machine's MemAvailable (far below the ~300 GB the run needs)."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != LIMIT_ENV}
    done = subprocess.run([sys.executable, "-m", "byzbn.attack_eval", "--width", "40", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2, done.stderr
    assert "--width=40.0" in done.stderr and "needs about" in done.stderr and "GB available" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


def _npz(path, top_label: int):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    y[0] = top_label
    np.savez(path, x_train=rng.integers(0, 255, (40, 8, 8)).astype(np.uint8), y_train=y,
             x_test=rng.integers(0, 255, (10, 8, 8)).astype(np.uint8), y_test=rng.integers(0, 3, 10))
    return path


def test_the_class_count_is_capped(tmp_path):
    assert load_dataset(f"npz:{_npz(tmp_path / 'ok.npz', MAX_CLASSES - 1)}").num_classes == MAX_CLASSES
    with pytest.raises(ValueError, match=f"at most {MAX_CLASSES:,} classes"):
        load_dataset(f"npz:{_npz(tmp_path / 'many.npz', MAX_CLASSES)}")


def test_too_many_classes_is_one_line_at_start(capsys, tmp_path):
    path = _npz(tmp_path / "million.npz", 10 ** 6)
    rc = attack_eval.main([*TINY, "--dataset", f"npz:{path}", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "at most 10,000 classes" in err and not (tmp_path / "out").exists()


GRID = {"dataset": "digits", "steps": 2, "eval_every": 2, "width": 0.0625, "batch_size": 4,
        "schemes": ["naive", "fbn"], "attack": ["sign-flip", "alie"], "byzantine": [0, 1],
        "defense": ["median", "mean"], "lr": [0.05, 0.1]}


def test_counting_gives_the_planners_cells_and_runs(tmp_path):
    spec = spec_from_config(GRID, "count", "test", [])
    plan = plan_sweep(spec, threads=1)
    count = count_sweep(spec, threads=1)
    assert count.cells == len(plan.cells)
    assert list(count.runs) == list(plan.runs)  # same keys, same order
    assert [count.runs[k] for k in plan.runs] == [run.cells for run in plan.runs.values()]
    text = dry_run_count(spec, 1, tmp_path / "store")
    assert text.startswith(f"{len(plan.cells)} scenario cells, {len(plan.runs)} distinct runs")
    assert Store(tmp_path / "store").root.exists() is False  # a dry run writes nothing


def test_counting_validates_every_value_of_a_value_only_axis():
    from byzbn.runs.errors import ArgumentError

    spec = spec_from_config({**GRID, "lr": [0.05, 0.1, -1.0], "momentum": [0.9, 0.5]}, "count", "test", [])
    with pytest.raises(ArgumentError, match=r"--lr=-1.0 is out of range.*\(at .*lr=-1"):
        count_sweep(spec, threads=1)


def test_the_gpu_check_stops_cleanly_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would run")
    out = tmp_path / "tmp"
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--out", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 1
    assert "no CUDA device" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_the_gpu_checks_correctness_part_on_cpu_tensors(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert gpu_check.main(["correctness", "--out", str(tmp_path), "--device", "cpu", "--size", "tiny"]) == 0
    checks = json.loads((tmp_path / "correctness.json").read_text())
    assert {c["op"] for c in checks} >= {"robust_aggregate nnm+median", "nearest_neighbour_mixing",
                                         "pairwise_sq_distances", "client_stats var", "order_statistics.median"}
    assert all(c["ok"] and c["relative_error"] < 1e-5 for c in checks)
    assert gpu_check.main(["report", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| robust_aggregate nnm+median | 9x300 |" in table
    assert json.loads((tmp_path / "gpu_check.json").read_text())["correctness"] == checks
    assert gpu_check.peak_gbps("NVIDIA H200") == 4800.0 and gpu_check.peak_gbps("NVIDIA H100 80GB HBM3") == 3350.0


def test_the_gpu_check_flags_a_wrong_kernel(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    import byzbn.kernels as kernels

    monkeypatch.setattr(kernels, "robust_aggregate", lambda x, f, rule, nnm=True: x.mean(dim=0) + 1e-2)
    checks = gpu_check.check_kernels("cpu", "tiny")
    bad = {c["op"] for c in checks if not c["ok"]}
    assert bad == {f"robust_aggregate {p}{r}" for p in ("", "nnm+") for r in ("mean", "median", "trimmed-mean")}
