"""The sweep against the naive grid, and the Ray backend's overhead.

Run with `pytest benchmarks/test_bench_sweep.py --benchmark -s`. Both tests time whole commands from the
outside (wall clock, fresh stores), side by side in one run, and put the numbers in the benchmark's
extra_info (and print them):

- test_sweep_vs_naive_grid: an example grid (schemes naive, fbn × attacks sign-flip, alie ×
  defenses median, trimmed-mean × f ∈ {1, 2}: 48 scenario cells) on mnist5k, 10 DSGD steps, width 0.125.
  (a) `python -m byzbn.sweep` with its planner (28 distinct runs), --jobs 1 and --jobs 2; (b) the naive
  grid as ByzFL's benchmark runs it: every cell trained separately, one fresh process per cell, one or
  two processes at a time. Ratios: naive / sweep at the same parallelism.
- test_ray_overhead_per_run: the same grid at 3 steps on `digits` (runs of a fraction of a second, so
  that the overhead shows): --backend ray on a local 2-CPU cluster against --jobs 2, and Ray's start
  and stop alone; overhead per run = (ray − local − start/stop) / runs.
- test_dry_run_counting: `--dry-run`'s counting (byzbn.grid.counting) of grids of 10^5 and 10^6 scenario
  cells (BYZBN_BENCH_DRY_RUN_CELLS overrides the sizes, comma-separated): wall time, the growth of the
  process's maximum RSS and (up to 10^5 cells, in a second pass) the peak traced Python memory, with
  cells, points and distinct runs. Every cell is its own distinct run here (points over seed x lr).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GRID = {"schemes": ["naive", "fbn"], "attack": ["sign-flip", "alie"], "defense": ["median", "trimmed-mean"],
        "byzantine": [1, 2]}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# One cell in its own process: what a grid runner without a planner does for every cell.
NAIVE_CELL = """
import argparse, json, sys
import torch
torch.set_num_threads(1)
from byzbn.runs import execute
from byzbn.runs.config import validate_run
options, scheme, scenario, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
plan = validate_run(argparse.Namespace(**options, out=out, resume=False, quiet=True))
(plan.out / "checkpoints").mkdir(parents=True)
execute.run_one(plan, scheme, scenario, [])
"""


def _config(path: Path, **fixed) -> Path:
    config = {**GRID, **fixed}
    path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in config.items()) + "\n")
    return path


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=ENV, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def _sweep(config: Path, out: Path, *extra: str) -> float:
    return _timed([sys.executable, "-m", "byzbn.sweep", str(config), "--out", str(out), "--quiet", *extra])


def _cells(config: Path) -> list[tuple[dict, str, str]]:
    """(options, scheme, scenario) of every scenario cell, from the sweep's own expansion."""
    from byzbn.cli.sweep_config import read_config, spec_from_config
    from byzbn.grid.planner import plan_sweep

    spec = spec_from_config(read_config(str(config)), "bench", str(config), [])
    plan = plan_sweep(spec, threads=1)
    return [({**spec.fixed, **cell.assignment}, cell.scheme, cell.scenario) for cell in plan.cells]


def _naive(config: Path, out: Path, processes: int) -> float:
    cells = _cells(config)
    commands = [[sys.executable, "-c", NAIVE_CELL, json.dumps(options), scheme, scenario, str(out / f"cell-{i}")]
                for i, (options, scheme, scenario) in enumerate(cells)]
    start = time.perf_counter()
    with ThreadPoolExecutor(processes) as pool:
        list(pool.map(lambda cmd: subprocess.run(cmd, cwd=REPO, env=ENV, check=True, capture_output=True),
                      commands))
    return time.perf_counter() - start


def test_sweep_vs_naive_grid(benchmark, tmp_path):
    config = _config(tmp_path / "grid.toml", dataset="mnist5k", steps=10, eval_every=5, width=0.125)
    times = {}

    def measure():
        times["sweep_jobs1_s"] = _sweep(config, tmp_path / "sweep1", "--jobs", "1")
        times["naive_1proc_s"] = _naive(config, tmp_path / "naive1", 1)
        times["sweep_jobs2_s"] = _sweep(config, tmp_path / "sweep2", "--jobs", "2")
        times["naive_2proc_s"] = _naive(config, tmp_path / "naive2", 2)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    times["ratio_planner_alone"] = times["naive_1proc_s"] / times["sweep_jobs1_s"]
    times["ratio_with_2_jobs"] = times["naive_2proc_s"] / times["sweep_jobs2_s"]
    times["ratio_sweep_jobs2_vs_naive_1proc"] = times["naive_1proc_s"] / times["sweep_jobs2_s"]
    times["load_average"] = os.getloadavg()
    benchmark.extra_info.update(times)
    print(json.dumps(times, indent=2))


def test_ray_overhead_per_run(benchmark, tmp_path):
    pytest.importorskip("ray")
    config = _config(tmp_path / "grid.toml", dataset="digits", steps=3, eval_every=3, width=0.0625, batch_size=4)
    runs = 28
    start_stop = ("import os\nfrom byzbn.grid.backends import RAY_ENV, RAY_LOCAL_OBJECT_STORE\n"
                  "for k, v in RAY_ENV.items(): os.environ.setdefault(k, v)\nimport ray\n"
                  "ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level='ERROR', "
                  "object_store_memory=RAY_LOCAL_OBJECT_STORE)\n"
                  "ray.get(ray.remote(lambda: 1).remote())\nray.shutdown()\n")
    times = {}

    def measure():
        times["local_jobs2_s"] = _sweep(config, tmp_path / "local", "--jobs", "2")
        times["ray_jobs2_s"] = _sweep(config, tmp_path / "ray", "--backend", "ray", "--jobs", "2")
        times["ray_start_stop_s"] = _timed([sys.executable, "-c", start_stop])

    benchmark.pedantic(measure, rounds=1, iterations=1)
    times["ray_overhead_per_run_s"] = (times["ray_jobs2_s"] - times["local_jobs2_s"] - times["ray_start_stop_s"]) / runs
    times["ray_total_overhead_per_run_s"] = (times["ray_jobs2_s"] - times["local_jobs2_s"]) / runs
    times["load_average"] = os.getloadavg()
    benchmark.extra_info.update(times)
    print(json.dumps(times, indent=2))


DRY_RUN_CELLS = [int(c) for c in os.environ.get("BYZBN_BENCH_DRY_RUN_CELLS", "100000,1000000").split(",")]


def _dry_run_spec(cells: int):
    """A grid of about `cells` scenario cells: 2 schemes x 3 scenarios per point, points over seeds x lr."""
    from byzbn.cli.sweep_config import spec_from_config

    points = max(1, cells // 6)
    seeds = max(1, int(points ** 0.5))
    lrs = max(1, points // seeds)
    config = {"dataset": "digits", "steps": 10, "width": 0.0625, "batch_size": 4, "schemes": ["naive", "fbn"],
              "seed": list(range(seeds)), "lr": [round(0.001 * (i + 1), 6) for i in range(lrs)]}
    return spec_from_config(config, "dry-run-bench", "benchmark", [])


@pytest.mark.parametrize("cells", DRY_RUN_CELLS)
def test_dry_run_counting(benchmark, cells):
    import resource
    import tracemalloc

    from byzbn.grid.counting import count_sweep

    spec = _dry_run_spec(cells)
    count_sweep(_dry_run_spec(6), threads=1)  # the dataset and the imports, once
    info = {}

    def measure():
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        count = count_sweep(spec, threads=1)
        info["wall_s"] = round(time.perf_counter() - start, 2)
        info["max_rss_growth_mb"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024, 1)
        info.update(cells=count.cells, distinct_runs=len(count.runs), points=spec.size())
        if cells <= 100_000:  # tracemalloc slows the count several times: a second, traced pass
            tracemalloc.start()
            count_sweep(spec, threads=1)
            info["traced_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2 ** 20, 1)
            tracemalloc.stop()

    benchmark.pedantic(measure, rounds=1, iterations=1)
    info["load_average"] = os.getloadavg()
    benchmark.extra_info.update(info)
    print(json.dumps(info, indent=2))
