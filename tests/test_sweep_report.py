"""byzbn.grid.worst and byzbn.grid.report on hand-made results.csv rows: worst case, breakdown point, tables,
intervals over seeds, divergence and censoring."""
from __future__ import annotations

import pytest

from byzbn.grid.report import breakdown_table, findings, noise_floor, report_text, worst_case_tables
from byzbn.grid.worst import Breakdown, breakdown_points, panel_columns, reference, worst_case


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
    assert value.half == pytest.approx(12.7062047 * 0.01)  # t(0.975, 1) · std / √2
    assert worst[("fbn", "nnm∘median", (), "gamma:0.5", 3)].attack == "sign-flip"
    assert worst[("fbn", "no defense", (), "gamma:0.5", 1)].mean == pytest.approx(0.11)
    assert reference(grid_rows())[("fbn", (), "gamma:0.5", 1)].mean == pytest.approx(0.81)


def test_the_breakdown_point_is_the_largest_f_over_n_within_tolerance_at_every_smaller_f():
    rows = grid_rows()
    worst, ref = worst_case(rows), reference(rows)
    key = ("fbn", "nnm∘median", (), "gamma:0.5")
    assert breakdown_points(worst, ref, 0.1)[key] == Breakdown(pytest.approx(0.1), censored=False)
    assert breakdown_points(worst, ref, 0.35)[key] == Breakdown(pytest.approx(0.2), censored=False)
    assert breakdown_points(worst, ref, 0.1)[("fbn", "no defense", (), "gamma:0.5")] == Breakdown(None)
    assert "| fbn | nnm∘median | 0.10 |" in breakdown_table(rows, 0.1)


def test_a_breakdown_point_never_crossed_in_the_grid_is_censored_at_the_largest_f_tested():
    rows = grid_rows()
    point = breakdown_points(worst_case(rows), reference(rows), 0.5)[("fbn", "nnm∘median", (), "gamma:0.5")]
    assert point == Breakdown(pytest.approx(0.3), censored=True) and point.text() == "≥ 0.30 (largest f tested)"
    assert "| fbn | nnm∘median | ≥ 0.30 (largest f tested) |" in breakdown_table(rows, 0.5)


def test_the_breakdown_point_reads_the_upper_end_of_the_paired_drops_interval():
    # alie at f = 1 drops 0.02 on average, but by 0 on one seed and 0.04 on the other: its interval's upper
    # end (0.02 + 12.7 · 0.02 / √2 · ... ≈ 0.27) is above a tolerance of 0.1, so f = 1 is not within it
    rows = [dict(r, final_acc=r["final_acc"] + (0.02 if r["seed"] == 1 and r["attack"] == "alie"
                                                    and r["scenario"] == "attack+defense" and r["byzantine"] == 1
                                                    else 0.0)) for r in grid_rows()]
    rows = [dict(r, final_acc=r["final_acc"] - (0.04 if r["seed"] == 0 and r["attack"] == "alie"
                                                    and r["scenario"] == "attack+defense" and r["byzantine"] == 1
                                                    else 0.0)) for r in rows]
    worst, ref = worst_case(rows), reference(rows)
    assert worst[("fbn", "nnm∘median", (), "gamma:0.5", 1)].mean == pytest.approx(0.78)
    assert breakdown_points(worst, ref, 0.1)[("fbn", "nnm∘median", (), "gamma:0.5")] == Breakdown(None)


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
    assert cells[3].startswith("**79.0 ± 12.7") and "(alie)" in cells[3]  # mean ± 95 % interval over 2 seeds
    assert sum(c.startswith("**") for c in cells) == 1 and cells[6].startswith("74.0")
    said = " ".join(findings(rows, 0.1))
    assert "the highest worst case is fbn with nnm∘median" in said
    assert "fbn without defense falls to 11.0 ± 12.7% at f = 3" in said


def three_seed_rows(diverge: bool = False) -> list[dict]:
    rows = []
    for seed, noise in ((0, 0.0), (1, 0.02), (2, -0.01)):
        for f in (0, 2):
            rows.append(row("fbn", "no-attack", f, "alie", seed, 0.8 + noise, status="ok"))
            for attack, acc in (("alie", 0.6), ("minmax", 0.5)):
                rows.append(row("fbn", "attack", f, attack, seed, (0.8 if f == 0 else 0.2) + noise, status="ok"))
                rows.append(row("fbn", "attack+defense", f, attack, seed, (0.8 if f == 0 else acc) + noise,
                                status="ok"))
    if diverge:  # seed 2 of minmax against the defense at f = 2 diverges
        for r in rows:
            if (r["seed"], r["attack"], r["scenario"], r["byzantine"]) == (2, "minmax", "attack+defense", 2):
                r.update(status="diverged: non-finite loss at step 3", final_acc=0.0)
    return rows


def test_three_seeds_give_intervals_and_the_page_says_how_they_are_computed():
    rows = three_seed_rows()
    table = worst_case_tables(rows)
    assert "mean over 3 seeds ± the 95 % Student-t interval over seeds" in table
    line = next(t for t in table.splitlines() if t.startswith("| 2 (0.20) |"))
    assert "50.3 ± 3.8 (minmax)" in line  # 0.5 + (0, 0.02, −0.01): std 0.0153, t(2) = 4.303
    record = {"name": "t", "command": "c", "counts": {"cells": 1, "runs": 1, "trained": 1, "read_back": 0},
              "wall_s": 1.0, "backend": "local", "jobs": 1, "threads": 1, "axes": {}, "fixed": {},
              "data": {"npz:x": {"test_samples": 1017, "classes": 10}}}
    text = report_text(rows, record, 0.1, [])
    assert "The worst case is over 2 attacks: alie, minmax" in text
    assert "binomial standard error of the test set 1.5 points" in noise_floor(rows, record)  # p = 63.3 %, N = 1017
    assert "seed-to-seed standard deviation 1.5 points" in noise_floor(rows, record)


def test_a_diverged_run_counts_as_chance_in_the_worst_case_and_is_shown():
    worst = worst_case(three_seed_rows(diverge=True), chance=0.1)
    value = worst[("fbn", "nnm∘median", (), "gamma:0.5", 2)]
    assert value.attack == "minmax" and value.diverged == 1 and value.seeds == 3
    assert value.mean == pytest.approx((0.5 + 0.52 + 0.1) / 3)  # the diverged seed at chance
    assert value.text().endswith("(1/3 diverged)")
    table = worst_case_tables(three_seed_rows(diverge=True))
    assert "(1/3 diverged) (minmax)" in table
