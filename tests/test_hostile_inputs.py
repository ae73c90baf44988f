"""Arguments that used to pass validation and fail mid-run: each is now one line, exit 2, nothing written.

Also: a rule refusing NaN input inside a run marks that run diverged while the comparison goes on, and a
plugin that breaks the output contract is named as the culprit (at validation, or in one line mid-run).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from byzbn.attacks import ATTACKS
from byzbn.cli import attack_eval
from byzbn.defenses import AGGREGATORS
from byzbn.runs.limits import MAX_COUNT, MAX_SEED

TINY = ["--dataset", "digits", "--schemes", "naive", "--steps", "2", "--eval-every", "2", "--batch-size", "4",
        "--width", "0.0625", "--quiet"]


@pytest.fixture
def registries():
    """Plugins registered by a test are removed afterwards."""
    before = {id(r): set(r) for r in (ATTACKS, AGGREGATORS)}
    yield
    for registry in (ATTACKS, AGGREGATORS):
        for name in set(registry) - before[id(registry)]:
            del registry[name]


def refused(capsys, tmp_path, *argv, match: str) -> str:
    """Run attack_eval with argv into tmp_path/out: exit 2, one stderr line containing `match`, no --out."""
    out = tmp_path / "out"
    rc = attack_eval.main([*TINY, *argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert match in err, err
    assert not out.exists()
    return err


def test_mimic_epsilon_beyond_the_honest_rows_fails_at_start(capsys, tmp_path):
    refused(capsys, tmp_path, "--attack", "mimic", "--attack-param", "epsilon=100",
            match="--attack mimic: epsilon=100 is out of range: valid [0, 7]")


@pytest.mark.parametrize("seed", [str(MAX_SEED + 1), "99999999999999999999"])
def test_a_seed_beyond_64_bits_fails_at_start(capsys, tmp_path, seed):
    refused(capsys, tmp_path, "--seed", seed, match=f"--seed={seed} is out of range")


@pytest.mark.parametrize("flag", ["--steps", "--eval-every", "--checkpoint-every", "--clients"])
def test_counts_are_bounded(capsys, tmp_path, flag):
    refused(capsys, tmp_path, flag, str(MAX_COUNT + 1), match=f"{flag}={MAX_COUNT + 1} is out of range")


def test_the_largest_seed_is_accepted():
    from byzbn.runs.config import validate_run

    args = attack_eval.build_parser().parse_args([*TINY, "--seed", str(MAX_SEED)])
    assert validate_run(args).config.seed == MAX_SEED


def test_an_empty_test_split_fails_at_start(capsys, tmp_path):
    path = tmp_path / "empty_test.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 255, (50, 8, 8)).astype(np.uint8), y_train=rng.integers(0, 3, 50),
             x_test=np.zeros((0, 8, 8), np.uint8), y_test=np.zeros(0, np.int64))
    refused(capsys, tmp_path, "--dataset", f"npz:{path}", match="empty test split")


def _plugin(tmp_path, name: str, body: str):
    path = tmp_path / f"{name}.py"
    path.write_text("import torch\nfrom byzbn.attacks import register_attack\nfrom byzbn.defenses import "
                    "register_aggregator\n\n" + body)
    return path


def test_a_plugin_attack_returning_the_wrong_shape_is_named_at_start(capsys, tmp_path, registries):
    path = _plugin(tmp_path, "short_rows", "@register_attack('short-rows')\n"
                                           "def short_rows(honest, context):\n"
                                           "    return honest[:1]\n")
    err = refused(capsys, tmp_path, "--plugin", str(path), "--attack", "short-rows",
                  match="--attack short-rows: the plugin module")
    assert str(path) in err and "must return rows of shape" in err


def test_a_plugin_rule_returning_a_list_is_named_at_start(capsys, tmp_path, registries):
    path = _plugin(tmp_path, "list_rule", "@register_aggregator('list-rule')\n"
                                          "class ListRule:\n"
                                          "    def __init__(self, f):\n"
                                          "        self.f = f\n\n"
                                          "    def __call__(self, x):\n"
                                          "        return x.mean(dim=0).tolist()\n")
    err = refused(capsys, tmp_path, "--plugin", str(path), "--defense", "list-rule", "--pre", "none",
                  match="--defense list-rule (--pre none): the plugin module")
    assert "list_rule" in err and "got list" in err


def test_a_plugin_rule_raising_anything_is_named_at_start(capsys, tmp_path, registries):
    path = _plugin(tmp_path, "broken_rule", "@register_aggregator('broken-rule')\n"
                                            "class BrokenRule:\n"
                                            "    def __init__(self, f):\n"
                                            "        self.f = f\n\n"
                                            "    def __call__(self, x):\n"
                                            "        return x.nosuchmethod()\n")
    refused(capsys, tmp_path, "--plugin", str(path), "--defense", "broken-rule", "--pre", "none",
            match="AttributeError")


def test_a_plugin_breaking_the_contract_mid_run_is_one_line(capsys, tmp_path, registries):
    # Right shape on the validator's test rows, wrong on the model's statistics: caught at the first step.
    path = _plugin(tmp_path, "late_rows", "@register_attack('late-rows')\n"
                                          "def late_rows(honest, context):\n"
                                          "    rows = honest[:1].repeat(context.f, 1)\n"
                                          "    return rows if honest.shape[1] == 6 else rows[:, :1]\n")
    out = tmp_path / "out"
    rc = attack_eval.main([*TINY, "--plugin", str(path), "--attack", "late-rows", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert len(err.strip().splitlines()) == 1 and "late-rows" in err and "at step 1" in err, err


def test_a_rule_refusing_nan_marks_its_run_diverged_and_the_comparison_goes_on(capsys, tmp_path):
    out = tmp_path / "out"
    rc = attack_eval.main([*TINY, "--pre", "bucketing", "--defense", "monna", "--attack", "nan", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())["naive"]  # {scheme: {scenario: entry}}
    assert set(summary) == {"no-attack", "attack", "attack+defense"}
    assert summary["no-attack"]["status"] == "ok"
    defended = summary["attack+defense"]["status"]
    assert defended.startswith("diverged: ") and "NaN" in defended and " at step " in defended
