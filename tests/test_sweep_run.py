"""python -m byzbn.sweep end to end: outputs, worst case from results.csv, backends, SIGKILL and rerun.

One small grid (2 schemes x 2 attacks x 1 defense x f in {1, 2} x 2 seeds on the tiny npz of conftest.py,
4-step runs of a narrow CNN: 48 cells, 40 runs) is swept once in this process as the reference; --jobs 2
and the Ray backend (each on part of it) must give the same accuracies for every cell, and so must
a sweep killed with SIGKILL mid-run and rerun.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from byzbn import sweep
from byzbn.runs import execute

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GRID = {"seed": [0, 1], "byzantine": [1, 2], "attack": ["sign-flip", "alie"], "defense": "median",
        "schemes": ["naive", "fbn"], "clients": 5, "width": 0.125, "batch_size": 4, "steps": 4, "eval_every": 2,
        "checkpoint_every": 1, "lr": 0.1, "heterogeneity": "gamma:0.5"}


def write_config(path: Path, npz: Path, **changes) -> Path:
    config = {"dataset": f"npz:{npz}", **GRID, **changes}
    path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in config.items()) + "\n")
    return path


def rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def accuracies(out: Path) -> list[tuple]:
    """Every cell's coordinates and accuracies: what must not depend on the backend, jobs or interruptions."""
    return [(r["scheme"], r["scenario"], r["seed"], r["byzantine"], r["attack"], r["final_acc"], r["best_acc"],
             r["run"]) for r in rows(out)]


@pytest.fixture(scope="module")
def reference(tiny_npz, tmp_path_factory):
    """The grid swept in this process (--jobs 1): its output directory."""
    root = tmp_path_factory.mktemp("sweep")
    config = write_config(root / "grid.toml", tiny_npz)
    assert sweep.main([str(config), "--out", str(root / "out"), "--jobs", "1", "--quiet"]) == 0
    return root / "out"


def test_a_sweep_writes_every_output(reference):
    table = rows(reference)
    # 2 seeds x 2 f x 2 attacks x 2 schemes x 3 scenarios; one no-attack run per seed x f x scheme.
    assert len(table) == 48 and len({r["run"] for r in table}) == 2 * 2 * 2 * (1 + 2 + 2)
    assert list(table[0])[:10] == ["scheme", "scenario", "seed", "byzantine", "attack", "clients",
                                   "heterogeneity", "target", "pre", "defense"]
    assert {"final_acc", "best_acc", "status", "comm_rounds", "wall_s", "run_dir"} <= set(table[0])
    assert all(r["status"] == "ok" and 0 <= float(r["final_acc"]) <= 1 for r in table)
    assert all(Path(r["run_dir"]).name == r["run"] and (Path(r["run_dir"]) / "result.json").is_file() for r in table)
    for name in ("heatmap.png", "breakdown.png"):
        data = (reference / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) < 300_000
    report = (reference / "report.md").read_text()
    assert "python -m byzbn.sweep" in report and "48 scenario cells answered by 40 distinct runs" in report
    assert "![heatmap](heatmap.png)" in report and "![breakdown](breakdown.png)" in report
    record = json.loads((reference / "sweep.json").read_text())
    assert record["counts"] == {"cells": 48, "runs": 40, "trained": 40, "read_back": 0}
    table_md = (reference / "table.md").read_text()
    assert "| f (f/n) | naive: no attack | naive: no defense | naive: nnm∘median |" in table_md


def test_a_second_sweep_trains_nothing_and_writes_the_same_results(reference, tiny_npz, tmp_path, monkeypatch,
                                                                   capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(execute, "run_one", no_training)
    before = (reference / "results.csv").read_bytes()
    config = write_config(tmp_path / "grid.toml", tiny_npz)
    assert sweep.main([str(config), "--out", str(reference), "--jobs", "1", "--quiet"]) == 0
    assert (reference / "results.csv").read_bytes() == before
    assert "0 trained, 40 read back" in capsys.readouterr().out


def expected_worst_case(table: list[dict]) -> tuple[dict, dict]:
    """Computed here from results.csv alone: {(scheme, defense, f): (worst mean %, its 95 % interval's half-width
    % over the two seeds: t(0.975, 1) · std / √2)} and the no-attack means."""
    per_attack, reference = {}, {}
    for r in table:
        f, acc = int(r["byzantine"]), float(r["final_acc"])
        if r["scenario"] == "no-attack":
            reference.setdefault((r["scheme"], f), {})[r["seed"]] = acc
            continue
        defense = "no defense" if r["scenario"] == "attack" else f"{r['pre']}∘{r['defense']}"
        per_attack.setdefault((r["scheme"], defense, f), {}).setdefault(r["attack"], {})[r["seed"]] = acc
    worst = {}
    for key, attacks in per_attack.items():
        mean, _, values = min((statistics.fmean(seeds.values()), attack, list(seeds.values()))
                              for attack, seeds in attacks.items())
        worst[key] = (100 * mean, 100 * 12.7062047 * statistics.stdev(values) / 2 ** 0.5)
    return worst, {k: 100 * statistics.fmean(v.values()) for k, v in reference.items()}


def test_heatmap_and_breakdown_show_the_worst_case_of_results_csv(reference):
    from byzbn.grid.plots import breakdown_figure, heatmap_figure, heatmap_matrices
    from byzbn.grid.table import read_results

    worst, no_attack = expected_worst_case(rows(reference))
    table = read_results(reference / "results.csv")
    matrices = heatmap_matrices(table)
    assert set(matrices) == {(s, (), d) for s in ("naive", "fbn") for d in ("no defense", "nnm∘median")}
    fig = heatmap_figure(table)
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 4
    for ax, (scheme, _, defense) in zip(drawn, matrices):
        image = np.asarray(ax.images[0].get_array())
        assert image.shape == (1, 2)  # one heterogeneity x f in {1, 2}
        np.testing.assert_allclose(image[0], [worst[(scheme, defense, f)][0] for f in (1, 2)], rtol=0, atol=1e-9)
        texts = [t.get_text() for t in ax.texts]  # per cell: the mean, then ± its interval's half-width
        assert texts[::2] == [f"{worst[(scheme, defense, f)][0]:.0f}" for f in (1, 2)]
        assert texts[1::2] == [f"±{worst[(scheme, defense, f)][1]:.0f}" for f in (1, 2)]
    fig = breakdown_figure(table)
    panels = {ax.get_title().split(" · ")[0]: ax for ax in fig.axes if ax.get_lines()}
    assert set(panels) == {"naive", "fbn"}
    for scheme, ax in panels.items():
        lines = {line.get_label(): line for line in ax.get_lines()}
        np.testing.assert_allclose(lines["no attack"].get_ydata(), [no_attack[(scheme, f)] for f in (1, 2)])
        assert list(lines["no attack"].get_xdata()) == [0.2, 0.4]
        for defense in ("no defense", "nnm∘median"):
            np.testing.assert_allclose(lines[defense].get_ydata(), [worst[(scheme, defense, f)][0] for f in (1, 2)],
                                       rtol=0, atol=1e-9)
    table_md = (reference / "table.md").read_text()
    for scheme in ("naive", "fbn"):
        mean, half = worst[(scheme, "nnm∘median", 2)]
        assert f"{mean:.1f} ± {half:.1f}" in table_md


def _sweep_subprocess(config: Path, out: Path, *extra: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "byzbn.sweep", str(config), "--out", str(out), "--quiet", *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_two_jobs_give_the_results_of_one(reference, tiny_npz, tmp_path):
    config = write_config(tmp_path / "grid.toml", tiny_npz, seed=[1])  # half the grid: 20 runs
    proc = _sweep_subprocess(config, tmp_path / "out", "--jobs", "2")
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr
    assert accuracies(tmp_path / "out") == [a for a in accuracies(reference) if a[2] == "1"]


def test_the_ray_backend_gives_the_results_of_one_job(reference, tiny_npz, tmp_path):
    pytest.importorskip("ray", reason="the sweep extra (Ray) is not installed")
    # 10 runs: Ray's start is the cost
    config = write_config(tmp_path / "grid.toml", tiny_npz, seed=[0], schemes=["fbn"])
    proc = _sweep_subprocess(config, tmp_path / "out", "--backend", "ray", "--jobs", "2")
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr
    assert accuracies(tmp_path / "out") == [a for a in accuracies(reference) if a[2] == "0" and a[0] == "fbn"]


def test_a_sweep_killed_at_any_moment_and_rerun_gives_the_same_results(reference, tiny_npz, tmp_path):
    # Longer runs than the reference's (same grid otherwise): the kill lands inside a run that has
    # checkpointed, which the rerun then resumes.
    config = write_config(tmp_path / "grid.toml", tiny_npz, steps=12, eval_every=4, checkpoint_every=2, seed=[0],
                          schemes=["fbn"])  # 10 runs
    out = tmp_path / "killed"
    proc = _sweep_subprocess(config, out, "--jobs", "2", start_new_session=True)

    def finished_runs() -> list:  # what the store counts as done: result.json with its checksum, agreeing
        from byzbn.grid.store import read_result

        return [d for d in (out / "runs").glob("*") if d.is_dir() and read_result(d, report=False) is not None]

    def resumable() -> bool:  # a run checkpointed but unfinished, after another finished
        runs = [d for d in (out / "runs").glob("*") if d.is_dir()]
        done = finished_runs()
        return bool(done) and any(list((d / "checkpoints").glob("*.pt")) and d not in done for d in runs)

    deadline = time.monotonic() + 600
    while proc.poll() is None and not resumable() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the sweep finished before it could be killed: " + proc.communicate()[1]
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker processes, at once
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    finished = {d.name for d in finished_runs()}
    assert 0 < len(finished) < 10 and not (out / "report.md").exists()

    rerun = _sweep_subprocess(config, out, "--jobs", "2")
    stdout, stderr = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, stderr
    assert f"{10 - len(finished)} trained, {len(finished)} read back" in stdout
    straight = tmp_path / "straight"
    assert sweep.main([str(config), "--out", str(straight), "--jobs", "1", "--quiet"]) == 0
    assert accuracies(out) == accuracies(straight)
    for run in (out / "runs").iterdir():  # every evaluation, not only the final one
        assert (run / "metrics.jsonl").read_bytes() == (straight / "runs" / run.name / "metrics.jsonl").read_bytes()


def test_the_docs_page_is_the_report_with_its_images_beside_it(reference, tmp_path):
    from byzbn.grid.report import report_text, write_docs_page
    from byzbn.grid.table import read_results

    table, record = read_results(reference / "results.csv"), json.loads((reference / "sweep.json").read_text())
    page = tmp_path / "docs" / "SWEEP.md"
    write_docs_page(page, reference, table, record, 0.1)
    text = page.read_text()
    assert "![heatmap](sweep/heatmap.png)" in text and "![breakdown](sweep/breakdown.png)" in text
    for name in ("heatmap.png", "breakdown.png"):
        assert (page.parent / "sweep" / name).read_bytes() == (reference / name).read_bytes()
    assert text == report_text(table, record, 0.1, ["heatmap.png", "breakdown.png"], image_dir="sweep/")
    assert text.replace("](sweep/", "](") == (reference / "report.md").read_text()  # report.md, images beside it


def test_redraw_rewrites_the_outputs_from_results_csv_and_trains_nothing(reference, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference, out, ignore=shutil.ignore_patterns("runs"))  # no store: nothing to train from
    (out / "report.md").unlink()
    (out / "heatmap.png").unlink()
    page = tmp_path / "docs" / "SWEEP.md"
    assert sweep.main(["--redraw", "--out", str(out), "--docs", str(page), "--tolerance", "0.2"]) == 0
    assert (out / "heatmap.png").read_bytes() == (reference / "heatmap.png").read_bytes()
    assert (out / "report.md").is_file() and "![heatmap](sweep/heatmap.png)" in page.read_text()
    assert sweep.main(["--redraw", "--out", str(tmp_path)]) == 2
    assert "holds no finished sweep" in capsys.readouterr().err
    assert sweep.main(["--redraw", "--out", str(out), "--preset", "fig3"]) == 2
