"""Partial participation through the runner (--participation, --defense-f): the sampled counts recorded and
reproducible, nothing changed at P = 1, the defense built for the sampled f on request, the sweep axis."""
from __future__ import annotations

import json

import pytest

from byzbn.cli.attack_eval import main
from byzbn.defenses import AGGREGATORS, register_aggregator
from byzbn.fl.participation import sample_participants

TINY = ["--clients", "10", "--byzantine", "3", "--steps", "6", "--eval-every", "1", "--batch-size", "4",
        "--schemes", "fbn", "--target", "both", "--quiet"]
BUILT: list = []   # the f the spy rule was built for, in order


@pytest.fixture()
def spy_rule():
    """The coordinate-wise median, logging the f it is built for."""

    @register_aggregator("test-f-spy")
    class FSpy:
        def __init__(self, f):
            self.f = f
            BUILT.append(f)

        def check_n(self, n):  # a rule that needs 4 rows whatever f
            if n < 4:
                raise ValueError(f"test-f-spy needs n >= 4, got n={n}")

        def __call__(self, x):
            return x.median(dim=0).values

    BUILT.clear()
    yield "test-f-spy"
    AGGREGATORS.pop("test-f-spy", None)


def _run(tmp_path, name, dataset, *args) -> list[dict]:
    out = tmp_path / name
    assert main(["--dataset", f"npz:{dataset}", *TINY, *args, "--out", str(out)]) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _trained(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("participants", "byzantine_sampled")} for r in records]


@pytest.mark.parametrize("algorithm", [["--algorithm", "dsgd"], ["--algorithm", "fedavg", "--local-steps", "1"]])
def test_a_sampled_run_records_its_participants_reproducibly(tmp_path, tiny_npz, algorithm):
    first = _run(tmp_path, "a", tiny_npz, "--participation", "0.6", *algorithm)
    again = _run(tmp_path, "b", tiny_npz, "--participation", "0.6", *algorithm)
    assert first == again
    attacked = [r for r in first if r["scenario"] == "attack+defense" and r["step"] > 0]
    expected = [sample_participants(0, r["step"] - 1, 10, 3, 0.6) for r in attacked]
    assert [r["participants"] for r in attacked] == [6] * len(attacked)
    assert [r["byzantine_sampled"] for r in attacked] == [p.f for p in expected]
    assert len({r["byzantine_sampled"] for r in attacked}) > 1          # the Byzantine count varies
    full = _run(tmp_path, "c", tiny_npz, *algorithm)
    assert _trained(first) != full                                       # sampling trains something else


@pytest.mark.parametrize("algorithm", [["--algorithm", "dsgd"], ["--algorithm", "fedavg", "--local-steps", "2"]])
def test_full_participation_changes_no_number(tmp_path, tiny_npz, algorithm):
    assert _run(tmp_path, "flag", tiny_npz, "--participation", "1.0", *algorithm) == \
        _run(tmp_path, "none", tiny_npz, *algorithm)


@pytest.mark.parametrize("mode", ["run", "sampled"])
def test_the_defense_is_built_for_the_run_f_or_the_sampled_f(tmp_path, tiny_npz, spy_rule, mode):
    records = _run(tmp_path, mode, tiny_npz, "--participation", "0.6", "--defense", spy_rule, "--pre", "none",
                   "--defense-f", mode)
    sampled = {sample_participants(0, t, 10, 3, 0.6).f for t in range(6)}
    built = set(BUILT)
    if mode == "run":
        assert built == {3}
    else:  # the run's f when validated and planned, then each step's sampled count (capped at 2f < 6)
        assert sampled - {3} <= built and {min(f, 2) for f in sampled} <= built
    assert records


def test_a_sample_too_small_for_the_rule_is_refused(tmp_path, tiny_npz, capsys, spy_rule):
    out = tmp_path / "o"
    assert main(["--dataset", f"npz:{tiny_npz}", *TINY, "--participation", "0.3", "--defense", spy_rule,
                 "--pre", "none", "--out", str(out)]) == 2
    assert "--participation 0.3 samples 3 of --clients=10" in capsys.readouterr().err and not out.exists()


def test_a_sweep_over_participation_plans_two_runs_per_cell(tiny_npz):
    from byzbn.cli.sweep_config import spec_from_config
    from byzbn.grid.planner import plan_sweep

    config = {"dataset": f"npz:{tiny_npz}", "clients": 5, "byzantine": 1, "width": 0.125, "batch_size": 4,
              "steps": 2, "eval_every": 1, "schemes": "fbn", "participation": [1.0, 0.6]}
    plan = plan_sweep(spec_from_config(config, "test", "config.toml", []), threads=1)
    assert len(plan.runs) == 2 * len({c.scenario for c in plan.cells})
    assert {run.options["participation"] for run in plan.runs.values()} == {1.0, 0.6}


def test_the_options_stay_out_of_the_run_identity_at_their_defaults():
    from byzbn.runs.identity import run_identity

    config = {"schemes": ["fbn"], "byzantine": 2, "steps": 10, "defense": "median", "pre": "nnm"}
    plain = run_identity(config, "fbn", "attack+defense")
    assert run_identity({**config, "participation": 1.0, "defense_f": "run"}, "fbn", "attack+defense") == plain
    # defense_f is read only when clients are sampled, and only by the defended scenario
    assert run_identity({**config, "defense_f": "sampled"}, "fbn", "attack+defense") == plain
    sampled = {**config, "participation": 0.6, "defense_f": "sampled"}
    assert run_identity(sampled, "fbn", "attack+defense")["defense_f"] == "sampled"
    assert "defense_f" not in run_identity(sampled, "fbn", "attack")
    assert run_identity(sampled, "fbn", "no-attack")["participation"] == 0.6
    # the centralized reference samples nobody
    assert run_identity(sampled, "centralized", "no-attack") == run_identity(config, "centralized", "no-attack")
