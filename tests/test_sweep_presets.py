"""The seed papers' presets end to end at a tiny size: sweep, then the claim section of docs/RESULTS.md.

Each preset runs through `python -m byzbn.sweep --preset NAME` with --set shrinking it (the tiny npz of
conftest.py, a narrow CNN, a few steps, fewer values on the largest axes), then `python -m byzbn.claims`
writes its block into a page. The full grids' sizes are asserted in tests/test_sweep_plan.py.
"""
from __future__ import annotations

import csv

import pytest

from byzbn import claims, sweep
from byzbn.grid.claims.page import begin_marker

SMALL = ["width=0.0625", "eval_every=2", "batch_size=4"]
PRESETS = {  # preset: (its --set shrinking, cells of the shrunk grid, claims in its table)
    "fixbn": (["steps=4", "local_steps=[1,2]", 'heterogeneity=["iid","extreme"]'], 32, 3),
    "fedtan": (["steps=4", "local_steps=[1,2]", "seed=[0]"], 24, 3),
    "hbn": (["steps=4", "batch_size=[2,4]", "seed=[0]"], 16, 3),
    "schemes-under-attack": (["steps=2", "byzantine=[0,2]", 'heterogeneity=["gamma:0.0"]'], 272, 0),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_preset_sweeps_and_its_claims_are_written(tmp_path, make_tiny_npz, preset):
    sets, cells, claim_rows = PRESETS[preset]
    npz = make_tiny_npz(tmp_path / "tiny.npz", train=400)
    argv = ["--preset", preset, "--out", str(tmp_path / "out"), "--jobs", "1", "--quiet",
            "--set", f"dataset='npz:{npz}'"]
    for item in SMALL + sets:
        argv += ["--set", item]
    assert sweep.main(argv) == 0
    with open(tmp_path / "out" / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == cells and all(r["final_acc"] != "" for r in rows)
    page = tmp_path / "RESULTS.md"
    assert claims.main([preset, str(tmp_path / "out"), "--page", str(page)]) == 0
    text = page.read_text()
    assert begin_marker(preset) in text and f"--preset {preset}" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and line.endswith((" yes |", " no |",
                                                                                          " partly |", " – |"))]
    assert len(table) == claim_rows
    images = list((tmp_path / "results").glob("*.png"))
    assert images and all(p.name.startswith(preset) for p in images)
    if preset == "schemes-under-attack":
        assert "the most robust is" in text
        report = (tmp_path / "out" / "report.md").read_text()
        assert "--schemes fedtan" in report and "answer their no-attack cell only" in report
