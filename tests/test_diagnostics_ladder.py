"""The scale-ladder preset plans and runs end to end at a tiny size, its diagnostics in results.csv."""
from __future__ import annotations

from byzbn.cli.sweep import main
from byzbn.grid.table import DIAGNOSTIC_COLUMNS, read_results


def test_the_scale_ladder_runs_end_to_end_with_diagnostic_columns(tmp_path, tiny_npz):
    out = tmp_path / "ladder"
    # --set replaces a key in every rung too: only the momentum rung is left (two points).
    sets = [f"dataset=npz:{tiny_npz}", "steps=2", "eval_every=1", "batch_size=4", "width=0.125", "seed=0"]
    assert main(["--preset", "scale-ladder", *[a for s in sets for a in ("--set", s)], "--jobs", "1",
                 "--out", str(out)]) == 0
    rows = read_results(out / "results.csv")
    # centralized answers no-attack only; naive and fbn: no attack, attack, attack+defense (the mean)
    assert len(rows) == 2 * 7 and {r["momentum"] for r in rows} == {"0.9", "0.99"}
    assert all(r["status"] == "ok" and r["steps_done"] == 2 for r in rows)
    assert all(isinstance(r[c], float) for r in rows for c in DIAGNOSTIC_COLUMNS if "grad_deviation" in c)
    attacked = [r for r in rows if r["scenario"] == "attack" and r["scheme"] in ("naive", "fbn")]
    assert attacked and all(r["final_diag_reach_stats"] > 0 for r in attacked)
    assert all(r["final_diag_reach_stats"] == 0.0 for r in rows if r["scenario"] == "no-attack")
    assert (out / "report.md").is_file()
