"""A sweep with centered clipping reports, per run, the fraction of rows the rule clipped (results.csv)."""
from __future__ import annotations

from byzbn.cli.sweep import main
from byzbn.grid.table import CLIPPED_COLUMN, read_results


def test_a_sweep_with_centered_clipping_has_the_clipped_fraction_of_its_defended_runs(tmp_path, tiny_npz):
    out, config = tmp_path / "cc", tmp_path / "cc.toml"
    config.write_text(f'dataset = "npz:{tiny_npz}"\nsteps = 2\neval_every = 1\nbatch_size = 4\nclients = 5\n'
                      'byzantine = 1\nschemes = "naive"\nattack = "sign-flip"\n'
                      'defense = ["median", "centered-clipping"]\nseed = 0\n')
    assert main([str(config), "--jobs", "1", "--out", str(out)]) == 0
    rows = read_results(out / "results.csv")
    clipped = {r["defense"]: r[CLIPPED_COLUMN] for r in rows if r["scenario"] == "attack+defense"}
    assert set(clipped) == {"median", "centered-clipping"}
    assert clipped["median"] is None                                  # a rule that clips nothing reports nothing
    assert 0.0 <= clipped["centered-clipping"] <= 1.0
    assert all(r[CLIPPED_COLUMN] is None for r in rows if r["scenario"] != "attack+defense")
