"""python -m byzbn.sweep before training: the config, the grid, the distinct-run planner, --dry-run, bad configs.

Grids are validated on the tiny synthetic npz of conftest.py (8x8 grayscale, 10 classes); the one test
that trains (the planner's runs equal attack_eval's cells) uses 3-step runs of a narrow CNN.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from byzbn import sweep
from byzbn.attacks import ATTACKS
from byzbn.cli.sweep_config import apply_sets, spec_from_config
from byzbn.grid.planner import plan_sweep
from byzbn.grid.presets import preset_names, preset_text
from byzbn.runs.identity import ATTACK_KEYS, DEFENSE_KEYS, NOT_COMPUTED, RUN_KEYS

TINY = {"clients": 5, "width": 0.125, "batch_size": 4, "steps": 3, "eval_every": 1, "lr": 0.1}


def tiny_config(npz: Path, **keys) -> dict:
    return {"dataset": f"npz:{npz}", **TINY, **keys}


def spec_of(config: dict, name: str = "test"):
    return spec_from_config(config, name, "config.toml", [])


EXAMPLE_GRID = {"schemes": ["naive", "fbn"], "attack": ["sign-flip", "alie"], "defense": ["median", "trimmed-mean"],
                 "byzantine": [1, 2]}


def test_the_example_grid_is_48_cells_and_28_distinct_runs(tiny_npz):
    plan = plan_sweep(spec_of(tiny_config(tiny_npz, **EXAMPLE_GRID)), threads=1)
    assert len(plan.cells) == 48 and len(plan.runs) == 28
    shared = {(run.scheme, run.scenario, run.options["byzantine"]): run.cells for run in plan.runs.values()
              if run.scenario == "no-attack"}
    # no-attack: one run per scheme x f answers its 2 attacks x 2 defenses; attack: 2 defenses; attack+defense: 1.
    assert shared == {(s, "no-attack", f): 4 for s in ("naive", "fbn") for f in (1, 2)}
    counts = sorted((run.scenario, run.cells) for run in plan.runs.values())
    assert counts.count(("attack", 2)) == 8 and counts.count(("attack+defense", 1)) == 16
    # every cell is answered, once, by a run of its own scheme and scenario
    assert all(plan.runs[c.key].scheme == c.scheme and plan.runs[c.key].scenario == c.scenario for c in plan.cells)
    assert len({(tuple(c.assignment.items()), c.scenario) for c in plan.cells}) == 48


def test_without_byzantine_clients_no_attack_is_read(tiny_npz):
    # f = 0: an attack has no one to submit for it, so the attack (and its parameters) do not split runs, and
    # the undefended attack is the no-attack run.
    plan = plan_sweep(spec_of(tiny_config(tiny_npz, schemes="fbn", attack=["sign-flip", "alie"],
                                          defense=["median", "trimmed-mean"], byzantine=[0])), threads=1)
    assert len(plan.cells) == 12 and sorted(r.scenario for r in plan.runs.values()) == \
        ["attack+defense", "attack+defense", "no-attack"]


def _cell_of_attack_eval(npz: Path, out: Path, options: dict) -> dict:
    """attack_eval's summary for one point: {(scheme, scenario): (final, best)}."""
    from byzbn.attack_eval import main

    argv = ["--dataset", f"npz:{npz}", "--out", str(out), "--quiet"]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    return {(s, sc): (e["final_acc"], e["best_acc"]) for s, runs in summary.items() for sc, e in runs.items()}


def test_each_cell_of_a_sweep_is_what_attack_eval_computes_for_it(tiny_npz, tmp_path, capsys):
    # The planner's sharing is exact: every cell's result equals attack_eval's own run of that cell,
    # including the cells f = 0 shares across attacks (and a data-poisoning attack where one is registered).
    attacks = ["sign-flip", "alie"] + (["label-flip"] if "label-flip" in ATTACKS else [])
    config = tiny_config(tiny_npz, schemes="naive", attack=attacks, defense=["median", "trimmed-mean"],
                         byzantine=[0, 1], heterogeneity="gamma:0.5")
    path = tmp_path / "grid.toml"
    path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in config.items()) + "\n")
    assert sweep.main([str(path), "--out", str(tmp_path / "sweep"), "--jobs", "1", "--quiet"]) == 0
    import csv

    rows = list(csv.DictReader(open(tmp_path / "sweep" / "results.csv")))
    assert len(rows) == len(attacks) * 2 * 2 * 3
    # f = 0: the no-attack run (which answers the undefended attack too) and one per defense; f = 1:
    # no-attack, each attack, each attack x defense, and
    # label-flip's own no-attack run: its Byzantine clients hold data, so its partition has n shares, not h.
    poisoning = "label-flip" in attacks
    assert len({r["run"] for r in rows}) == 3 + (1 + len(attacks) + 2 * len(attacks)) + poisoning
    for attack in attacks:
        for defense in ("median", "trimmed-mean"):
            for f in (0, 1):
                options = {**{k: v for k, v in config.items() if k != "dataset"}, "attack": attack,
                           "defense": defense, "byzantine": f}
                expected = _cell_of_attack_eval(tiny_npz, tmp_path / f"{attack}-{defense}-{f}", options)
                got = {("naive", r["scenario"]): (float(r["final_acc"]), float(r["best_acc"])) for r in rows
                       if (r["attack"], r["defense"], r["byzantine"]) == (attack, defense, str(f))}
                assert got == expected, (attack, defense, f)
    capsys.readouterr()


def test_every_run_configuration_key_is_classified(tiny_npz):
    # A key added to the run options must say which scenarios read it (byzbn.runs.identity).
    plan = plan_sweep(spec_of(tiny_config(tiny_npz, schemes="naive,fbn", byzantine=[1])), threads=1)
    from byzbn.runs.config import validate_run
    from byzbn.grid.planner import run_namespace

    config = validate_run(run_namespace(next(iter(plan.runs.values())).options)).config.to_json()
    assert set(config) <= RUN_KEYS | ATTACK_KEYS | DEFENSE_KEYS | NOT_COMPUTED, \
        sorted(set(config) - (RUN_KEYS | ATTACK_KEYS | DEFENSE_KEYS | NOT_COMPUTED))


def robustness_counts(fs, attacks, defenses, schemes, seeds=1, hets=1) -> tuple[int, int]:
    """(cells, distinct runs) of a robustness grid whose every scheme can be attacked: 3 scenario cells per
    point; per scheme, seed and heterogeneity one no-attack run and one defended run per defense at f = 0
    (nobody attacks: the undefended attack cells are the no-attack run), and at each f > 0 one no-attack
    run, one undefended run per attack and one defended run per attack × defense."""
    cells = 3 * len(fs) * attacks * defenses * schemes * seeds * hets
    per_scheme = (1 + defenses if 0 in fs else 0) + sum(1 + attacks + attacks * defenses for f in fs if f > 0)
    return cells, per_scheme * schemes * seeds * hets


# preset: (--set shrinking it to plan in seconds, (cells, runs) of the shrunk grid). The seeds and the
# heterogeneity levels are independent copies of the grid, so the full preset has their product times more.
PRESET_PLANS = {
    "fig3": (["seed=[0]"], (4 * 4, 4 * 4)),  # 4 partitions x 4 schemes, no attack
    "fig4": (["seed=[0]"], (2 * 2 * 2 * 3, 2 * 2 * (1 + 1 + 2))),  # 2 partitions x 2 defenses x 2 schemes x 3
    # 4 schemes x 3 E x 3 partitions x 2 momenta; centralized once per partition (it never trains with FedAvg)
    "fixbn": (["seed=[0]"], (72, 3 * (3 * 3 * 2 + 1))),
    "fedtan": (["seed=[0]"], (3 * 2 * 4, 3 * (3 * 2 + 1))),  # centralized once per partition
    "hbn": (["seed=[0]"], (2 * 3 * 4, 2 * 3 * 4)),
    "breakdown": (["seed=[0]"], robustness_counts([0, 1, 2, 3, 4], 9, 2, 2)),
    "heatmap": (["seed=[0]", 'heterogeneity=["gamma:0.0"]', 'attack=["sign-flip","bn-adaptive"]'],
                robustness_counts([0, 1, 2, 3, 4], 2, 5, 2)),
}


@pytest.mark.parametrize("name", sorted(PRESET_PLANS))
def test_the_presets_expand_to_their_grids(tmp_path, make_tiny_npz, name):
    from byzbn.cli.sweep_config import parse_toml
    sets, (cells, runs) = PRESET_PLANS[name]
    npz = make_tiny_npz(tmp_path / "tiny.npz", train=800)  # hbn's batch of 64 needs 64 samples per client
    preset = parse_toml(preset_text(name), name)
    assert preset["seed"] == [0, 1, 2]  # every preset runs three seeds: its intervals and paired differences
    config = apply_sets(preset, [f"dataset='npz:{npz}'", "width=0.0625", *sets])
    plan = plan_sweep(spec_of(config, name), threads=1)
    assert (len(plan.cells), len(plan.runs)) == (cells, runs)
    assert set(preset_names()) >= {"fig3", "fig4", "breakdown", "heatmap", "fixbn", "fedtan", "hbn",
                                   "schemes-under-attack"}


def test_without_byzantine_clients_every_attack_and_target_is_one_run_and_its_defended_twins(tiny_npz):
    # f = 0: nobody submits for the attack, so the undefended attack cells are the no-attack run whatever the
    # attack or target; the defended cells need one run per defense and target (the channels it aggregates).
    config = tiny_config(tiny_npz, schemes=["naive", "fbn"], byzantine=[0], attack=["alie", "sign-flip", "foe"],
                         target=["stats", "both"], defense=["median", "trimmed-mean"], pre="nnm")
    plan = plan_sweep(spec_of(config), threads=1)
    assert len(plan.cells) == 2 * 3 * 2 * 2 * 3
    assert len(plan.runs) == 2 * (1 + 2 * 2)
    for scheme in ("naive", "fbn"):
        keys = {c.key for c in plan.cells if c.scheme == scheme and c.scenario in ("no-attack", "attack")}
        assert len(keys) == 1
        assert plan.runs[keys.pop()].scenario == "no-attack"
    assert {run.scenario for run in plan.runs.values()} == {"no-attack", "attack+defense"}


def test_options_a_scheme_never_reads_do_not_split_its_runs(tiny_npz):
    # The centralized reference never trains with FedAvg: E and the momentum reset are not its options;
    # fixbn's T* is only fixbn's.
    plan = plan_sweep(spec_of(tiny_config(tiny_npz, schemes=["centralized", "naive", "fixbn"], attack="none",
                                          byzantine=0, algorithm="fedavg", steps=4, local_steps=[1, 2],
                                          reset_client_momentum=[False, True], fixbn_freeze=[0.25, 0.5])), threads=1)
    runs = {}
    for run in plan.runs.values():
        runs[run.scheme] = runs.get(run.scheme, 0) + 1
    assert runs == {"centralized": 1, "naive": 4, "fixbn": 8}
    assert len(plan.cells) == 24


def test_defaults_keep_the_run_keys_they_had(tiny_npz):
    from byzbn.runs.identity import run_identity, scheme_unread

    config = {"schemes": ["naive"], "algorithm": "dsgd", "local_steps": 1, "reset_client_momentum": False,
              "fixbn_freeze": 0.5, "groups": 2, "steps": 10, "byzantine": 0}
    assert scheme_unread(config, "naive") == {"fixbn_freeze": 0.5, "groups": 2, "algorithm": "dsgd",
                                              "local_steps": 1, "reset_client_momentum": False}
    assert run_identity(config, "naive", "no-attack") == run_identity({**config, "fixbn_freeze": 0.3}, "naive",
                                                                      "no-attack")
    assert run_identity(config, "fixbn", "no-attack") != run_identity({**config, "fixbn_freeze": 0.3}, "fixbn",
                                                                      "no-attack")
    fedavg = {**config, "algorithm": "fedavg", "local_steps": 5}
    assert run_identity(fedavg, "naive", "no-attack")["local_steps"] == 5
    assert run_identity(fedavg, "centralized", "no-attack")["local_steps"] == 1


def test_a_pair_the_attack_cannot_target_answers_no_attack_only(tiny_npz, capsys):
    # attack_eval refuses --schemes fedtan --attack bn-adaptive and --schemes groupnorm --target stats; a sweep
    # crossing them with other schemes keeps their no-attack cells and says why the others are missing.
    config = tiny_config(tiny_npz, schemes=["naive", "fedtan", "groupnorm"], attack=["alie", "bn-adaptive"],
                         byzantine=[1], defense="median")
    plan = plan_sweep(spec_of(config), threads=1)
    scenarios = {}
    for cell in plan.cells:
        scenarios.setdefault((cell.scheme, cell.assignment["attack"]), []).append(cell.scenario)
    assert scenarios[("fedtan", "alie")] == ["no-attack", "attack", "attack+defense"]
    assert scenarios[("fedtan", "bn-adaptive")] == scenarios[("groupnorm", "alie")] == ["no-attack"]
    assert list(plan.unattacked.values()) == [1] and "--schemes fedtan" in next(iter(plan.unattacked))
    path = Path(tiny_npz).parent / "pairs.toml"
    path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in config.items()) + "\n")
    assert sweep.main([str(path), "--dry-run", "--out", str(path.parent / "pairs-out")]) == 0
    assert "no attack cells at 1 point: --attack bn-adaptive --target stats --schemes fedtan" in capsys.readouterr().out


def test_keys_take_either_spelling_and_set_overrides_them(tiny_npz):
    config = apply_sets({"attack-fields": "mean", "byzantine": 1}, ["attack_fields=var", "byzantine=[1, 2]",
                                                                     "heterogeneity=gamma:0.5"])
    spec = spec_of(config)
    assert spec.fixed["attack_fields"] == "var" and spec.fixed["heterogeneity"] == "gamma:0.5"
    assert spec.axes["byzantine"] == (1, 2) and spec.axes["schemes"] == ("naive", "fbn")  # attack_eval's default
    spec = spec_of({"attack_param": ["z=1", ["z=2"]], "attack": "alie", "pre": ["nnm", "nnm,bucketing", "none"]})
    assert spec.axes["attack_param"] == (["z=1"], ["z=2"]) and spec.axes["pre"] == ("nnm", "nnm,bucketing", "none")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return path


BAD_CONFIGS = [
    ("colour = 'red'\n", [], "unknown key 'colour'"),
    ("defense = ['median', 'nope']\n", [], "key 'defense': argument --defense: invalid choice: 'nope'"),
    ("byzantine = [1, 5]\nclients = 10\n", [], "--byzantine=5 is out of range with --clients=10"),
    ("steps = 'many'\n", [], "key 'steps': argument --steps: invalid int value: 'many'"),
    ("byzantine = []\n", [], "key 'byzantine': is an empty list"),
    ("seed = [0, 0]\n", [], "key 'seed' lists 0 twice"),
    ("attack-fields = 'mean'\nattack_fields = 'var'\n", [], "key 'attack_fields' is given twice"),
    ("download = 'yes'\n", [], "key 'download': expected true or false"),
    ("schemes = ['naive', 'batch']\n", [], "unknown scheme 'batch'"),
    ("steps = [1, 2\n", [], "not valid TOML"),
    ("", ["--set", "colour=red"], "--set: unknown key 'colour'"),
    ("", ["--set", "steps"], "--set 'steps' is malformed"),
    ("", ["--jobs", "0"], "--jobs=0 is out of range"),
    ("", ["--ray-address", "auto"], "--ray-address needs --backend ray"),
    ("", ["--preset", "fig3"], "give a config file or --preset, not both"),
]


@pytest.mark.parametrize("text,extra,message", BAD_CONFIGS)
def test_a_bad_config_exits_2_with_one_line_naming_the_key_and_writes_nothing(tiny_npz, tmp_path, monkeypatch,
                                                                                capsys, text, extra, message):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, f"dataset = 'npz:{tiny_npz}'\n{text}")
    code = sweep.main([str(path), "--out", str(tmp_path / "out"), *extra])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and message in captured.err, captured.err
    assert captured.out == "" and os.listdir(tmp_path) == ["grid.toml"]


def test_an_unreadable_config_and_a_missing_one_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert sweep.main([str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: cannot read it" in capsys.readouterr().err
    assert sweep.main([]) == 2
    assert "give a config file (TOML) or --preset NAME" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_dry_run_prints_the_plan_and_what_is_done_and_writes_nothing(tiny_npz, tmp_path, capsys):
    small = _write(tmp_path, "\n".join(f"{k} = {json.dumps(v)}" for k, v in tiny_config(
        tiny_npz, schemes="fbn", attack="sign-flip", defense="median", byzantine=1).items()) + "\n")
    assert sweep.main([str(small), "--out", str(tmp_path / "out"), "--jobs", "1", "--quiet"]) == 0
    capsys.readouterr()
    before = sorted(p for p in (tmp_path / "out").rglob("*"))
    config = tiny_config(tiny_npz, **EXAMPLE_GRID)
    big = tmp_path / "big.toml"
    big.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in config.items()) + "\n")
    assert sweep.main([str(big), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("48 scenario cells, 28 distinct runs (20 cells answered by a shared run); 3 done, "
                           "0 started (resume from a checkpoint), 25 to train\n")
    assert len(text.splitlines()) == 2 + 28 and text.count(" done ") == 3
    assert sorted(p for p in (tmp_path / "out").rglob("*")) == before
