"""The run store serves no stale or damaged result: content-keyed runs, checksummed result.json and checkpoints.

A tiny grid (one scheme, f = 1, one attack: 3 runs of 2 steps) on the tiny npz of conftest.py, swept in
this process. The data file rewritten in place or a plugin rule edited gives other run keys (the
runs are trained again); a result.json or checkpoint truncated or edited is reported in one line naming
it, never used, and its run is trained again to the same numbers.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from byzbn import sweep
from byzbn.cli import attack_eval, plugins
from byzbn.runs.digests import data_digest

GRID = {"schemes": ["naive"], "byzantine": [1], "attack": "sign-flip", "defense": "median", "clients": 5,
        "width": 0.125, "batch_size": 4, "steps": 2, "eval_every": 1, "checkpoint_every": 1, "lr": 0.1,
        "heterogeneity": "gamma:0.5"}

PLUGIN = '''
from byzbn.defenses import register_aggregator


@register_aggregator("store-test-rule")
class StoreTestRule:
    def __init__(self, f):
        self.f = f

    def __call__(self, x):
        return x.median(dim=0).values
'''


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """The digests' cache of this test only."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def npz(tmp_path, make_tiny_npz) -> Path:
    return make_tiny_npz(tmp_path / "data.npz")


def write_grid(path: Path, npz: Path, **changes) -> Path:
    config = {"dataset": f"npz:{npz}", **GRID, **changes}
    path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in config.items()) + "\n")
    return path


def sweep_counts(capsys, *argv: str) -> tuple[int, int, str]:
    """(trained, read back, stderr) of one sweep in this process."""
    capsys.readouterr()
    assert sweep.main([*argv, "--jobs", "1", "--quiet"]) == 0
    captured = capsys.readouterr()
    trained, read = re.search(r"\((\d+) trained, (\d+) read back\)", captured.out).groups()
    return int(trained), int(read), captured.err


def dry_run_done(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    assert sweep.main([*argv, "--dry-run"]) == 0
    captured = capsys.readouterr()
    return int(re.search(r"(\d+) done", captured.out).group(1)), captured.err


def results(out: Path) -> list[tuple]:
    return sorted((r["summary"]["scheme"], r["summary"]["scenario"], r["summary"]["final_acc"], len(r["records"]))
                  for r in (json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")))


def test_rewriting_the_data_file_in_place_retrains_and_touching_it_does_not(npz, tmp_path, capsys):
    grid, out = write_grid(tmp_path / "grid.toml", npz), tmp_path / "out"
    argv = (str(grid), "--out", str(out))
    assert sweep_counts(capsys, *argv)[:2] == (3, 0)
    before = data_digest(f"npz:{npz}")
    os.utime(npz, ns=(1, 1))  # the same bytes at another time: the digest is computed again, equal
    assert data_digest(f"npz:{npz}") == before
    assert dry_run_done(capsys, *argv)[0] == 3
    with np.load(npz) as data:  # the same labels (so the same partition), other images
        arrays = {k: data[k] for k in data.files}
    arrays["x_train"] = 255 - arrays["x_train"]
    np.savez(npz, **arrays)
    assert data_digest(f"npz:{npz}") != before
    assert dry_run_done(capsys, *argv)[0] == 0
    assert sweep_counts(capsys, *argv)[:2] == (3, 0)
    assert len(list((out / "runs").glob("*/result.json"))) == 6  # the old data's runs are still stored


def test_editing_a_plugin_rule_retrains(npz, tmp_path, capsys):
    from byzbn.defenses import AGGREGATORS

    rule = tmp_path / "my_rule.py"
    rule.write_text(PLUGIN)
    loaded = set(plugins._files)
    try:
        grid = write_grid(tmp_path / "grid.toml", npz, defense="store-test-rule")
        argv = (str(grid), "--out", str(tmp_path / "out"), "--plugin", str(rule))
        assert sweep_counts(capsys, *argv)[:2] == (3, 0)
        assert dry_run_done(capsys, *argv)[0] == 3
        rule.write_text(PLUGIN.replace("x.median(dim=0).values", "x.mean(dim=0) * float('nan')"))
        assert dry_run_done(capsys, *argv)[0] == 0
    finally:
        AGGREGATORS.pop("store-test-rule", None)
        for key in set(plugins._files) - loaded:
            del plugins._files[key]


@pytest.fixture
def swept(npz, tmp_path, capsys):
    """A finished sweep: (its argv, its output directory, its results)."""
    out = tmp_path / "out"
    argv = (str(write_grid(tmp_path / "grid.toml", npz)), "--out", str(out))
    assert sweep_counts(capsys, *argv)[:2] == (3, 0)
    return argv, out, results(out)


@pytest.mark.parametrize("damage", ["truncated", "edited", "invalid-json", "checksum-removed"])
def test_a_damaged_result_json_is_reported_and_retrained(swept, capsys, damage):
    argv, out, expected = swept
    path = next((out / "runs").glob("*/result.json"))
    text = path.read_text()
    if damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "edited":  # other valid numbers: used silently before
        saved = json.loads(text)
        saved["summary"]["final_acc"] = 0.999
        path.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
    elif damage == "invalid-json":
        path.write_text("{")
    else:
        path.with_name("result.json.sha256").unlink()
    done, err = dry_run_done(capsys, *argv)
    assert done == 2  # never "done"
    assert err.count("\n") == 1 and str(path) in err
    trained, read, err = sweep_counts(capsys, *argv)
    assert (trained, read) == (1, 2)
    assert err.count("\n") <= 1 and "Traceback" not in err
    assert results(out) == expected
    assert sweep_counts(capsys, *argv)[:2] == (0, 3)


def test_a_truncated_checkpoint_is_a_warning_and_the_run_restarts_from_scratch(swept, capsys):
    argv, out, expected = swept
    run = next((out / "runs").glob("*/result.json")).parent
    for name in ("result.json", "result.json.sha256"):  # the run is not finished: its checkpoint is read
        (run / name).unlink()
    checkpoint = next((run / "checkpoints").glob("*.pt"))
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    trained, read, err = sweep_counts(capsys, *argv)
    assert (trained, read) == (1, 2)
    assert err.count("\n") == 1 and str(checkpoint) in err and "restarts from scratch" in err
    assert results(out) == expected


def test_attack_eval_resumes_past_a_truncated_checkpoint(npz, tmp_path, capsys):
    argv = ["--dataset", f"npz:{npz}", "--out", str(tmp_path / "out"), "--schemes", "naive", "--clients", "5",
            "--byzantine", "1", "--attack", "none", "--steps", "2", "--eval-every", "1", "--batch-size", "4",
            "--width", "0.125", "--quiet"]
    assert attack_eval.main(argv) == 0
    expected = (tmp_path / "out" / "metrics.jsonl").read_text()
    checkpoint = next((tmp_path / "out" / "checkpoints").glob("*.pt"))
    checkpoint.write_bytes(checkpoint.read_bytes()[:-10])
    capsys.readouterr()
    assert attack_eval.main([*argv, "--resume"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(checkpoint) in err
    assert (tmp_path / "out" / "metrics.jsonl").read_text() == expected


@pytest.mark.parametrize("truncate", [False, True])
def test_dry_run_counts_a_run_with_a_damaged_checkpoint_as_new(swept, capsys, truncate):
    argv, out, _ = swept
    run = next((out / "runs").glob("*/result.json")).parent
    for name in ("result.json", "result.json.sha256"):
        (run / name).unlink()
    checkpoint = next((run / "checkpoints").glob("*.pt"))
    if truncate:
        checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    capsys.readouterr()
    assert sweep.main([*argv, "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert ("2 done, 0 started" if truncate else "2 done, 1 started") in captured.out
    assert captured.err.count("\n") == int(truncate) and (not truncate or str(checkpoint) in captured.err)
