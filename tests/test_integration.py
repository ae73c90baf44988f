"""End to end: every scheme runs every attack and every defense through the CLI on tiny settings, on
both channels, under DSGD and FedAvg; a short CIFAR-10 run learns.

Tiny settings: a synthetic 8x8 npz dataset, 6 clients of which 2 Byzantine, width 0.125, 2 steps, so
each combination takes about a second (the optimal attacks' line searches a few). fixbn freezes after
its first step so both phases run. Every attack with one defense and every defense (with its
pre-aggregators' default) with one attack, under DSGD and under FedAvg (2 rounds of 2 local steps,
fixbn freezing after the first round); under DSGD every attack also meets the paper's three rules.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from byzbn.attack_eval import main
from byzbn.attacks import ATTACKS, make_attack
from byzbn.fl.scenario import TARGETS, incompatibility
from byzbn.schemes import SCHEMES
from byzbn.defenses import AGGREGATORS as DEFENSES


def _schemes(attack: str, target: str = "both") -> list[str]:
    """The attackable schemes that can face `attack` (e.g. a data-poisoning attack needs uncoupled clients)."""
    return [s for s in ATTACKABLE if incompatibility(SCHEMES[s], make_attack(attack), TARGETS[target]) is None]


def _run(npz: Path, out: Path, *extra: str) -> dict:
    argv = ["--dataset", f"npz:{npz}", "--out", str(out), "--clients", "6", "--byzantine", "2", "--width", "0.125",
            "--batch-size", "4", "--steps", "2", "--eval-every", "2", "--fixbn-freeze", "0.5", "--quiet", *extra]
    assert main(argv) == 0
    return json.loads((out / "summary.json").read_text())


NON_FINITE_ATTACKS = {"nan", "inf"}
ATTACKABLE = ["naive", "fbn", "fixbn", "fedtan", "hbn", "groupnorm"]
EXCHANGES = {"fedtan": 3 * 4 + 1}  # per step (DSGD) or round (FedAvg); 1 for the others


def _metrics(out: Path) -> dict:
    """{(scheme, scenario): [(step, test_acc, test_loss, train_loss), ...]} from metrics.jsonl."""
    runs: dict = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        runs.setdefault((r["scheme"], r["scenario"]), []).append((r["step"], r["test_acc"], r["test_loss"],
                                                                  r["train_loss"]))
    return runs


def _check_the_defense_is_used(out: Path, summary: dict, defense: str) -> None:
    """attack+defense differs from attack (the same attack, averaged) exactly when the server's rule is not the mean."""
    runs = _metrics(out)
    for scheme in summary:
        attacked, defended = runs[(scheme, "attack")], runs[(scheme, "attack+defense")]
        assert attacked[0] == defended[0]  # the same initial model and test set
        if defense == "mean":  # no pre-aggregation before the mean: the same aggregate as plain averaging
            # (to rounding: the defense's mean may be a fused kernel; a non-finite loss is null in both)
            assert [r[0] for r in defended] == [r[0] for r in attacked], scheme
            for got, want in zip(defended, attacked):
                for a, b in zip(got[1:], want[1:]):
                    assert (a is None) == (b is None) and (a is None or a == pytest.approx(b, rel=1e-4, abs=1e-6)), \
                        (scheme, got, want)
        else:
            assert defended != attacked, (scheme, "the defense left the attacked run unchanged")


def _check_every_run(summary: dict, attack: str, defense: str, steps: int, rounds: int) -> None:
    assert set(summary) == set(_schemes(attack))
    for scheme, runs in summary.items():
        assert set(runs) == {"no-attack", "attack", "attack+defense"}
        for scenario, entry in runs.items():
            assert 0.0 <= entry["final_acc"] <= entry["best_acc"] <= 1.0
            done_rounds = entry["steps_done"] * rounds // steps
            assert entry["comm_rounds"] == done_rounds * EXCHANGES.get(scheme, 1) and done_rounds >= 1
            robust = scenario == "no-attack" or (scenario == "attack+defense" and defense != "mean")
            if robust:
                assert entry["status"] == "ok" and entry["steps_done"] == steps, (scheme, scenario, entry)
            elif attack in NON_FINITE_ATTACKS:  # gradients averaged with NaN/Inf rows
                assert entry["status"].startswith("diverged: non-finite"), (scheme, scenario, entry)
            elif entry["status"] == "ok":  # a finite attack, averaged: the run may break, but only by diverging
                assert entry["steps_done"] == steps, (scheme, scenario, entry)
            else:
                assert entry["status"].startswith("diverged: non-finite"), (scheme, scenario, entry)


PAPER_DEFENSES = ("mean", "median", "trimmed-mean")
# Rules that need more rows than the tiny federation's 6 clients with 2 Byzantine (the last --clients wins).
DEFENSE_ARGS = {"bulyan": ("--clients", "11")}
CASES = [(attack, defense) for attack in sorted(ATTACKS) for defense in PAPER_DEFENSES]
CASES += [("alie", defense) for defense in sorted(DEFENSES) if defense not in PAPER_DEFENSES]


@pytest.mark.parametrize("attack,defense", CASES)
def test_every_scheme_attack_and_defense_runs(tiny_npz, tmp_path, capsys, attack, defense):
    summary = _run(tiny_npz, tmp_path / "out", "--schemes", ",".join(_schemes(attack)), "--attack", attack,
                   "--defense", defense, "--target", "both", *DEFENSE_ARGS.get(defense, ()))
    capsys.readouterr()
    _check_every_run(summary, attack, defense, steps=2, rounds=2)
    _check_the_defense_is_used(tmp_path / "out", summary, defense)


FEDAVG_CASES = [(attack, "median") for attack in sorted(ATTACKS)]
FEDAVG_CASES += [("alie", defense) for defense in sorted(DEFENSES) if defense != "median"]


@pytest.mark.parametrize("attack,defense", FEDAVG_CASES)
def test_every_scheme_attack_and_defense_runs_under_fedavg(tiny_npz, tmp_path, capsys, attack, defense):
    summary = _run(tiny_npz, tmp_path / "out", "--schemes", ",".join(_schemes(attack)), "--attack", attack,
                   "--defense", defense, "--target", "both", "--algorithm", "fedavg", "--local-steps", "2",
                   "--steps", "4", "--eval-every", "4", *DEFENSE_ARGS.get(defense, ()))
    capsys.readouterr()
    _check_every_run(summary, attack, defense, steps=4, rounds=2)
    _check_the_defense_is_used(tmp_path / "out", summary, defense)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_statistics_only_attacks_leave_the_gradient_channel_alone(tiny_npz, tmp_path, capsys, attack):
    summary = _run(tiny_npz, tmp_path / "out", "--schemes", ",".join(_schemes(attack, "stats")), "--attack", attack,
                   "--defense", "trimmed-mean", "--target", "stats", "--attack-fields", "mean")
    capsys.readouterr()
    assert set(summary["groupnorm"]) == {"no-attack"}  # no statistics: nothing to attack
    for scheme, runs in summary.items():
        assert runs["no-attack"]["status"] == "ok"
        if scheme == "groupnorm":
            continue
        assert runs["attack+defense"]["status"] == "ok"
        if attack in NON_FINITE_ATTACKS and scheme in ("naive", "fbn", "fedtan", "hbn"):
            # Averaged NaN/Inf means reach the server's statistics (naive) or the forward pass (the others).
            assert runs["attack"]["status"].startswith("diverged: non-finite"), (scheme, runs["attack"])


def test_centralized_runs_only_without_attack(tiny_npz, tmp_path, capsys):
    summary = _run(tiny_npz, tmp_path / "out", "--schemes", "centralized,fbn", "--target", "grads")
    capsys.readouterr()
    assert set(summary["centralized"]) == {"no-attack"}
    assert set(summary["fbn"]) == {"no-attack", "attack", "attack+defense"}
    assert summary["centralized"]["no-attack"]["status"] == "ok"


@pytest.mark.slow
def test_a_short_cifar10_run_learns(cifar10_npz, tmp_path, capsys):
    out = tmp_path / "cifar"
    assert main(["--dataset", f"npz:{cifar10_npz}", "--out", str(out), "--schemes", "fbn", "--attack", "none",
                 "--heterogeneity", "iid", "--clients", "5", "--byzantine", "0", "--width", "0.25",
                 "--batch-size", "16", "--steps", "120", "--lr", "0.1", "--eval-every", "40", "--quiet"]) == 0
    capsys.readouterr()
    entry = json.loads((out / "summary.json").read_text())["fbn"]["no-attack"]
    assert entry["status"] == "ok"
    assert entry["best_acc"] > 0.25, entry  # chance is 0.10
