"""byzbn.grid.worst and byzbn.grid.report on hand-made results.csv rows: worst case, breakdown point, tables."""
from __future__ import annotations

import pytest

from byzbn.grid.report import breakdown_table, findings, worst_case_tables
from byzbn.grid.worst import breakdown_points, panel_columns, reference, worst_case


def row(scheme, scenario, f, attack, seed, acc, defense="median", het="gamma:0.5", **extra):
    return {"scheme": scheme, "scenario": scenario, "byzantine": f, "clients": 10, "attack": attack, "seed": seed,
            "defense": defense, "pre": "nnm", "heterogeneity": het, "final_acc": acc, "target": "stats", **extra}


def grid_rows() -> list[dict]:
    """fbn with NNM∘median: no attack 0.8; sign-flip hurts from f = 3, alie from f = 2; two seeds."""
    rows = []
    for f in (1, 2, 3):
        for seed, noise in ((0, 0.0), (1, 0.02)):
            rows.append(row("fbn", "no-attack", f, "sign-flip", seed, 0.8 + noise))
            for attack, drop in (("sign-flip", {1: 0.0, 2: 0.05, 3: 0.5}), ("alie", {1: 0.02, 2: 0.3, 3: 0.4})):
                rows.append(row("fbn", "attack", f, attack, seed, 0.1 + noise))
                rows.append(row("fbn", "attack+defense", f, attack, seed, 0.8 - drop[f] + noise))
    return rows


def test_the_worst_case_is_the_worst_attacks_mean_over_seeds():
    worst = worst_case(grid_rows())
    value = worst[("fbn", "nnm∘median", (), "gamma:0.5", 2)]
    assert value.attack == "alie" and value.mean == pytest.approx(0.51) and value.seeds == 2
    assert value.std == pytest.approx(0.02 / 2 ** 0.5)  # the sample std of alie's two seeds
    assert worst[("fbn", "nnm∘median", (), "gamma:0.5", 3)].attack == "sign-flip"
    assert worst[("fbn", "no defense", (), "gamma:0.5", 1)].mean == pytest.approx(0.11)
    assert reference(grid_rows())[("fbn", (), "gamma:0.5", 1)].mean == pytest.approx(0.81)


def test_the_breakdown_point_is_the_largest_f_over_n_within_tolerance_at_every_smaller_f():
    rows = grid_rows()
    worst, ref = worst_case(rows), reference(rows)
    assert breakdown_points(worst, ref, 0.1)[("fbn", "nnm∘median", (), "gamma:0.5")] == pytest.approx(0.1)
    assert breakdown_points(worst, ref, 0.35)[("fbn", "nnm∘median", (), "gamma:0.5")] == pytest.approx(0.2)
    assert breakdown_points(worst, ref, 0.5)[("fbn", "nnm∘median", (), "gamma:0.5")] == pytest.approx(0.3)
    assert breakdown_points(worst, ref, 0.1)[("fbn", "no defense", (), "gamma:0.5")] is None
    assert "| fbn | nnm∘median | 0.10 |" in breakdown_table(rows, 0.1)


def test_a_column_without_a_role_that_varies_splits_the_figures_into_panels():
    rows = grid_rows() + [dict(r, lr="0.1") for r in grid_rows()]
    for r in rows:
        r.setdefault("lr", "0.05")
    assert panel_columns(rows) == ["lr"]
    keys = {k[2] for k in worst_case(rows)}
    assert keys == {(("lr", "0.05"),), (("lr", "0.1"),)}


def test_the_table_bolds_the_best_attacked_combination_of_each_row():
    rows = grid_rows() + [dict(r, scheme="naive", final_acc=r["final_acc"] - 0.05) for r in grid_rows()]
    table = worst_case_tables(rows)
    line = next(t for t in table.splitlines() if t.startswith("| 1 (0.10) |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # columns: f, fbn: no attack / no defense / nnm∘median, naive: no attack / no defense / nnm∘median
    assert cells[3].startswith("**79.0 ± 1.4") and "(alie)" in cells[3]
    assert sum(c.startswith("**") for c in cells) == 1 and cells[6].startswith("74.0")
    said = " ".join(findings(rows, 0.1))
    assert "the most robust combination is fbn with nnm∘median" in said
    assert "fbn without defense falls to 11.0% at f = 3" in said
