"""Partial grids: [[rung]] tables, each a product, the grid their union (the scale-ladder preset)."""
from __future__ import annotations

import pytest

from byzbn.cli.sweep_config import apply_sets, parse_toml, spec_from_config
from byzbn.grid.presets import preset_text
from byzbn.runs.errors import ArgumentError

LADDER = """
seed = [0, 1]
schemes = ["naive", "fbn"]
width = 0.125
steps = 20
[[rung]]
width = [0.125, 0.25]
[[rung]]
steps = 40
seed = 0
"""


def _spec(text: str, sets=()):
    config = apply_sets(parse_toml(text, "ladder.toml"), list(sets))
    return spec_from_config(config, "ladder", "ladder.toml", [])


def test_a_ladder_is_the_union_of_its_rungs_each_point_once():
    spec = _spec(LADDER)
    points = [(a["seed"], a["schemes"], a["width"], a["steps"]) for a in spec.assignments()]
    assert len(points) == len(set(points)) == spec.size()
    # rung 1: 2 seeds x 2 schemes x 2 widths at 20 steps; rung 2: seed 0 x 2 schemes at width 0.125, 40 steps
    assert set(points) == ({(s, m, w, 20) for s in (0, 1) for m in ("naive", "fbn") for w in (0.125, 0.25)}
                           | {(0, m, 0.125, 40) for m in ("naive", "fbn")})
    assert spec.axes["steps"] == (20, 40) and spec.axes["width"] == (0.125, 0.25)
    assert "steps" not in spec.fixed and "width" not in spec.fixed


def test_set_replaces_a_key_in_every_rung_too():
    spec = _spec(LADDER, ["steps=3"])
    assert spec.fixed["steps"] == 3 and "steps" not in spec.axes
    assert spec.size() == 8  # rung 2 collapses onto rung 1's seed-0 points at width 0.125


def test_rung_values_go_through_the_options_types_and_unknown_keys_fail_in_one_line():
    with pytest.raises(ArgumentError, match="rung 1: key 'width'"):
        _spec('schemes = ["fbn"]\n[[rung]]\nwidth = ["wide"]\n')
    with pytest.raises(ArgumentError, match="rung 1: unknown key 'colour'"):
        _spec('schemes = ["fbn"]\n[[rung]]\ncolour = 1\n')
    with pytest.raises(ArgumentError, match="array of tables"):
        _spec('schemes = ["fbn"]\nrung = 3\n')


def test_the_scale_ladder_preset_moves_one_axis_at_a_time_from_its_base_point():
    spec = _spec(preset_text("scale-ladder"))
    base = {"width": 0.125, "steps": 200, "batch_size": 16, "momentum": 0.9}
    for a in spec.assignments():
        moved = [k for k, v in base.items() if a[k] != v]
        assert len(moved) <= 1, a
        if a["steps"] == 3000:
            assert a["seed"] == 0  # the most expensive rung runs one seed
        else:
            assert {s for s in (0, 1, 2)} <= {b["seed"] for b in spec.assignments()
                                             if all(b[k] == a[k] for k in base)}


def test_a_plain_mean_defense_is_answered_by_the_undefended_attack_run(tiny_npz):
    from byzbn.grid.planner import plan_sweep

    config = {"dataset": f"npz:{tiny_npz}", "clients": 5, "width": 0.125, "batch_size": 4, "steps": 3,
              "eval_every": 1, "schemes": ["naive", "fbn"], "attack": "sign-flip", "byzantine": 1,
              "defense": ["mean", "median"], "pre": "none"}
    plan = plan_sweep(spec_from_config(config, "t", "t.toml", []), threads=1)
    # per scheme: no-attack (4 cells), attack (3: both undefended cells and the mean's defended one), median's
    assert len(plan.cells) == 12 and len(plan.runs) == 6
    by = {(r.scheme, r.scenario): r.cells for r in plan.runs.values()}
    assert by == {(s, sc): k for s in ("naive", "fbn") for sc, k in
                  (("no-attack", 2), ("attack", 3), ("attack+defense", 1))}
