"""The seed papers' presets end to end at a tiny size: sweep, then the claim section of docs/RESULTS.md.

Each preset runs through `python -m byzbn.sweep --preset NAME` with --set shrinking it (the tiny npz of
conftest.py, a narrow CNN, a few steps, fewer values on the largest axes), then `python -m byzbn.claims`
writes its block into a page. The full grids' sizes are asserted in tests/test_sweep_plan.py.
"""
from __future__ import annotations

import csv

import pytest

from byzbn import claims, sweep
from byzbn.attacks import ATTACKS
from byzbn.cli.sweep_config import parse_toml
from byzbn.grid.claims.page import begin_marker
from byzbn.grid.presets import STRONG_ATTACKS, WORST_CASE_PRESETS, preset_text

SMALL = ["width=0.0625", "eval_every=2", "batch_size=4"]
PRESETS = {  # preset: (its --set shrinking, cells of the shrunk grid, claims in its table)
    # the preset's three seeds x 2 E x 2 partitions x 2 momenta x 4 schemes
    "fixbn": (["steps=4", "local_steps=[1,2]", 'heterogeneity=["iid","extreme"]'], 3 * 2 * 2 * 2 * 4, 3),
    "fedtan": (["steps=4", "local_steps=[1,2]", "seed=[0]"], 3 * 2 * 4, 3),
    "hbn": (["steps=4", "batch_size=[2,4]", "seed=[0]"], 2 * 2 * 4, 3),
    # 7 schemes x 2 f x 2 targets x 2 attacks x 2 defenses x 3 scenarios, less the attack cells (2 per point)
    # of the centralized reference (never attacked), of groupnorm on the statistics (it has none) and of
    # fedtan under bn-adaptive (it never submits a whole statistics row)
    "schemes-under-attack": (["steps=2", "byzantine=[0,2]", 'heterogeneity=["gamma:0.0"]', "seed=[0]",
                              'attack=["alie","bn-adaptive"]'],
                             7 * 2 * 2 * 2 * 2 * 3 - 2 * (2 * 2 * 2 * 2 + 2 * 2 * 2 + 2 * 2 * 2), 0),
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
    lines = text.splitlines()
    head = [i for i, line in enumerate(lines) if line.startswith("| claim | paper | byzbn | rule (margin")]
    after = lines[head[0] + 2:] if head else []
    table = after[:next((i for i, line in enumerate(after) if not line.startswith("| ")), len(after))]
    assert len(table) == claim_rows
    assert all(line.endswith((" yes |", " no |", " inconclusive |", " – |", ") |")) for line in table)
    assert "Noise floor:" in text
    images = list((tmp_path / "results").glob("*.png"))
    assert images and all(p.name.startswith(preset) for p in images)
    if preset == "schemes-under-attack":
        assert "gamma:0.0, attacks on either channel: " in text
        report = (tmp_path / "out" / "report.md").read_text()
        assert "--schemes fedtan" in report and "answer their no-attack cell only" in report


def test_three_seeds_give_every_cell_of_a_claim_table_an_interval(tmp_path, make_tiny_npz):
    npz = make_tiny_npz(tmp_path / "tiny.npz", train=400)
    argv = ["--preset", "hbn", "--out", str(tmp_path / "out"), "--jobs", "1", "--quiet", "--set", f"dataset='npz:{npz}'",
            "--set", "steps=4", "--set", "batch_size=[4]", "--set", 'heterogeneity=["iid"]'] + \
        [a for item in SMALL[:2] for a in ("--set", item)]
    assert sweep.main(argv) == 0
    page = tmp_path / "RESULTS.md"
    assert claims.main(["hbn", str(tmp_path / "out"), "--page", str(page)]) == 0
    text = page.read_text()
    assert "mean over 3 seeds ± the 95 % Student-t interval over seeds" in text
    row = next(line for line in text.splitlines() if line.startswith("| iid | 4 |"))
    assert row.count(" ± ") == 5  # four schemes and HBN − BN


@pytest.mark.parametrize("preset", WORST_CASE_PRESETS)
def test_every_worst_case_preset_covers_the_strongest_attacks_of_the_catalogue(preset):
    attacks = parse_toml(preset_text(preset), preset)["attack"]
    assert {a for a in STRONG_ATTACKS if a in ATTACKS} <= set(attacks)
    assert set(STRONG_ATTACKS) <= set(ATTACKS)  # every attack named there is registered
