"""python -m byzbn.attack_eval: errors, outputs, determinism, non-finite runs, kill-and-resume.

Runs use a tiny synthetic npz dataset (8x8 grayscale, 10 classes) and a narrow CNN, so each
scheme × scenario takes a fraction of a second.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from byzbn.attack_eval import build_parser, main

REPO = Path(__file__).resolve().parent.parent








def tiny_args(npz: Path, out: Path, *extra: str) -> list[str]:
    return ["--dataset", f"npz:{npz}", "--out", str(out), "--clients", "6", "--byzantine", "2", "--width", "0.125",
            "--batch-size", "8", "--steps", "12", "--eval-every", "4", "--checkpoint-every", "4", "--lr", "0.1",
            "--heterogeneity", "gamma:0.5", "--quiet", *extra]


def _run_main(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


BAD_ARGUMENTS = [
    (["--schemes", "naive,batch"], "unknown scheme 'batch'"),
    (["--schemes", ","], "--schemes is empty"),
    (["--attack", "nope"], "invalid choice: 'nope'"),
    (["--defense", "krumm"], "invalid choice: 'krumm'"),
    (["--clients", "4", "--byzantine", "2"], "--byzantine=2 is out of range"),
    (["--byzantine", "-1"], "--byzantine=-1 is out of range"),
    (["--dataset", "npz:/nonexistent/file.npz"], "dataset file not found"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--attack-param", "z"], "--attack-param 'z' is malformed"),
    (["--attack", "alie", "--attack-param", "zz=1"], "unknown parameter(s) ['zz']"),
    (["--attack", "alie", "--attack-param", "z=inf"], "z must be a finite float"),
    (["--attack", "none", "--attack-param", "z=1"], "--attack-param given with --attack none"),
    (["--steps", "0"], "--steps=0 is out of range"),
    (["--steps", "ten"], "invalid int value: 'ten'"),
    (["--lr", "nan"], "--lr=nan is out of range"),
    (["--momentum", "1"], "--momentum=1.0 is out of range"),
    (["--heterogeneity", "gamma:2"], "G=2.0 is outside [0, 1]"),
    (["--batch-size", "1000"], "--batch-size=1000 is out of range"),
    (["--fixbn-freeze", "2", "--schemes", "fixbn"], "freeze must be a fraction"),
    (["--eval-every", "0"], "--eval-every=0 is out of range"),
    (["--schemes", "groupnorm", "--target", "stats"],
     "--target stats: scheme(s) ['groupnorm'] exchange no BN statistics"),
    (["--schemes", "groupnorm", "--target", "grads", "--groups", "3"],
     "groups=3 does not divide a normalization layer's 8 channels"),
    (["--schemes", "groupnorm", "--target", "grads", "--groups", "0"], "--groups=0 is out of range"),
    (["--local-steps", "5"], "--local-steps=5 needs --algorithm fedavg"),
    (["--reset-client-momentum"], "--reset-client-momentum needs --algorithm fedavg"),
    (["--algorithm", "fedavg", "--local-steps", "5"], "--steps=12 is not a multiple of --local-steps=5"),
    (["--algorithm", "fedavg", "--local-steps", "0"], "--local-steps=0 is out of range"),
    (["--algorithm", "fedsgd"], "invalid choice: 'fedsgd'"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--pre", "nope"], "--pre: unknown pre-aggregator 'nope'"),
    (["--pre", ","], "--pre is empty"),
    (["--heterogeneity", "dirichlet:0"], "--heterogeneity: partition 'dirichlet:0' is invalid"),
    (["--plugin", "/nonexistent/rules.py"], "--plugin /nonexistent/rules.py: no such file"),
    (["--plugin", "no_such_plugin_module_for_byzbn"], "no such file or importable module"),
]


@pytest.mark.parametrize("extra,message", BAD_ARGUMENTS)
def test_a_bad_argument_prints_one_line_exits_2_and_writes_nothing(tiny_npz, tmp_path, monkeypatch, capsys,
                                                                   extra, message):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code, stdout, stderr = _run_main(tiny_args(tiny_npz, out) + extra, capsys)
    assert code == 2
    assert stderr.count("\n") == 1 and message in stderr, stderr
    assert stdout == ""
    assert sorted(os.listdir(tmp_path)) == []


def test_an_unreadable_dataset_file_is_a_bad_argument(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    garbage = tmp_path / "data" / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 this is not a zip archive")
    code, _, stderr = _run_main(["--dataset", f"npz:{garbage}", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and stderr.count("\n") == 1 and "garbage.npz" in stderr
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_resume_needs_an_existing_out_with_the_same_arguments(tiny_npz, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = _run_main(["--resume", "--dataset", f"npz:{tiny_npz}"], capsys)
    assert code == 2 and "--resume needs --out" in stderr and not (tmp_path / "runs").exists()
    code, _, stderr = _run_main(tiny_args(tiny_npz, tmp_path / "missing", "--resume"), capsys)
    assert code == 2 and "does not exist" in stderr and not (tmp_path / "missing").exists()
    out = tmp_path / "done"
    assert _run_main(tiny_args(tiny_npz, out, "--schemes", "fbn", "--attack", "none"), capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, _, stderr = _run_main(tiny_args(tiny_npz, out, "--schemes", "fbn", "--attack", "none"), capsys)
    assert code == 2 and "already exists" in stderr and stderr.count("\n") == 1
    code, _, stderr = _run_main(tiny_args(tiny_npz, out, "--schemes", "fbn", "--attack", "none", "--lr", "0.2",
                                          "--resume"), capsys)
    assert code == 2 and "differ" in stderr and "'lr'" in stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_the_entry_point_exits_2_with_one_stderr_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "byzbn.attack_eval", "--clients", "4", "--byzantine", "2",
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--byzantine=2 is out of range" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_help_explains_every_flag():
    text = build_parser().format_help()
    flags = ["--schemes", "--clients", "--byzantine", "--fixbn-freeze", "--attack", "--attack-param", "--target",
             "--attack-fields", "--defense", "--pre", "--dataset", "--data-root", "--download", "--heterogeneity",
             "--steps", "--batch-size", "--lr", "--momentum", "--width", "--eval-every", "--seed", "--device",
             "--out", "--checkpoint-every", "--resume", "--quiet", "--groups", "--algorithm", "--local-steps",
             "--reset-client-momentum", "--plugin"]
    for flag in flags:
        assert flag in text
    for action in build_parser()._actions:
        assert action.help, action.option_strings
    assert "sign-flip" in text and "trimmed-mean" in text and "naive" in text
    for scheme in ("centralized", "naive", "fbn", "fixbn", "fedtan", "hbn", "groupnorm"):
        assert f"\n    {scheme} " in text  # each scheme explained in the description
    flowing = " ".join(text.split())  # argparse wraps the flags' help
    assert "Hsieh et al. 2020" in flowing and "rounds = steps / local-steps" in flowing


ALL_SCHEMES = ["centralized", "naive", "fbn", "fixbn", "fedtan", "hbn", "groupnorm"]
# Exchanges per DSGD step: one gradient exchange (statistics ride along), FedTAN 3 more per BN layer (the
# CNN has 4), none for the one-machine centralized reference.
EXCHANGES_PER_STEP = {"centralized": 0, "fedtan": 3 * 4 + 1}


def test_outputs_table_and_summary(tiny_npz, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = _run_main(tiny_args(tiny_npz, out, "--schemes", ",".join(ALL_SCHEMES),
                                               "--attack-fields", "mean"), capsys)
    assert code == 0, stderr
    assert {"config.json", "metrics.jsonl", "summary.json", "summary.csv", "curves.png", "checkpoints"} <= set(os.listdir(out))
    config = json.loads((out / "config.json").read_text())
    assert config["schemes"] == ALL_SCHEMES and config["pre"] == "nnm"
    assert config["algorithm"] == "dsgd" and config["local_steps"] == 1 and config["groups"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == set(ALL_SCHEMES)
    assert set(summary["centralized"]) == {"no-attack"}
    assert set(summary["groupnorm"]) == {"no-attack"}  # --target stats: nothing of groupnorm's to attack
    assert set(summary["fbn"]) == set(summary["fedtan"]) == {"no-attack", "attack", "attack+defense"}
    for scheme, runs in summary.items():
        for scenario, entry in runs.items():
            assert 0 <= entry["final_acc"] <= entry["best_acc"] <= 1
            assert entry["comm_rounds"] == entry["steps_done"] * EXCHANGES_PER_STEP.get(scheme, 1)
            assert entry["wall_s"] > 0 and isinstance(entry["stats_clamped"], int)
            if scenario != "attack":  # an undefended attack may legitimately break a run
                assert entry["status"] == "ok" and entry["steps_done"] == 12
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines[:4]] == [0, 4, 8, 12]  # evaluated at step 0 and every 4 steps
    assert {(r["scheme"], r["scenario"]) for r in lines} == {(s, c) for s in summary for c in summary[s]}
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "summary.csv").read_text().splitlines()) == 1 + 2 + 5 * 3
    table = stdout[stdout.index("scheme"):]
    for name in ALL_SCHEMES + ["no-attack final / best", "attack+defense"]:
        assert name in table


def test_fedavg_outputs_count_local_steps_and_rounds(tiny_npz, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, stderr = _run_main(tiny_args(tiny_npz, out, "--schemes", ",".join(ALL_SCHEMES), "--algorithm", "fedavg",
                                          "--local-steps", "3", "--eval-every", "4", "--target", "both",
                                          "--attack", "alie"), capsys)
    assert code == 0, stderr
    config = json.loads((out / "config.json").read_text())
    assert config["algorithm"] == "fedavg" and config["local_steps"] == 3 and not config["reset_client_momentum"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["groupnorm"]) == {"no-attack", "attack", "attack+defense"}  # its updates are attacked
    for scheme, runs in summary.items():
        for scenario, entry in runs.items():
            if scenario != "attack":
                assert entry["status"] == "ok" and entry["steps_done"] == 12, (scheme, scenario, entry)
            # centralized steps on the union batch (no communication); the others: 4 rounds of 3 local steps.
            rounds = entry["steps_done"] if scheme == "centralized" else entry["steps_done"] // 3
            assert entry["comm_rounds"] == rounds * EXCHANGES_PER_STEP.get(scheme, 1), (scheme, entry)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    fbn_steps = [r["step"] for r in lines if r["scheme"] == "fbn" and r["scenario"] == "no-attack"]
    assert fbn_steps == [0, 6, 9, 12]  # the ends of the rounds that reach 4, 8 and 12 local steps
    central_steps = [r["step"] for r in lines if r["scheme"] == "centralized"]
    assert central_steps == [0, 4, 8, 12]


def test_same_seed_gives_identical_metrics(tiny_npz, tmp_path, capsys):
    argv = ["--schemes", "naive,fbn", "--attack", "alie", "--target", "both"]
    assert _run_main(tiny_args(tiny_npz, tmp_path / "a", *argv), capsys)[0] == 0
    assert _run_main(tiny_args(tiny_npz, tmp_path / "b", *argv), capsys)[0] == 0
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == (tmp_path / "b" / "metrics.jsonl").read_bytes()
    assert _run_main(tiny_args(tiny_npz, tmp_path / "c", *argv, "--seed", "1"), capsys)[0] == 0
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() != (tmp_path / "c" / "metrics.jsonl").read_bytes()


def test_fedavg_runs_are_deterministic_and_an_interrupted_one_resumes_to_the_same_metrics(tiny_npz, tmp_path, capsys,
                                                                                         monkeypatch):
    from byzbn.fl.fedavg import FedAvgFederation

    argv = ["--schemes", "naive,fedtan", "--attack", "alie", "--target", "both", "--algorithm", "fedavg",
            "--local-steps", "2", "--eval-every", "3", "--checkpoint-every", "3"]
    assert _run_main(tiny_args(tiny_npz, tmp_path / "a", *argv), capsys)[0] == 0
    assert _run_main(tiny_args(tiny_npz, tmp_path / "b", *argv), capsys)[0] == 0
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == (tmp_path / "b" / "metrics.jsonl").read_bytes()
    step, calls = FedAvgFederation.step, []

    def interrupted(self, *args, **kwargs):  # dies in the fedtan / attack run, right after its checkpoint at step 6
        calls.append(1)
        if self.scheme.name == "fedtan" and self.scenario.name == "attack" and self.step_count == 6:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(FedAvgFederation, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(tiny_args(tiny_npz, tmp_path / "c", *argv))
    monkeypatch.setattr(FedAvgFederation, "step", step)
    assert (tmp_path / "c" / "checkpoints" / "fedtan__attack.pt").is_file()
    assert _run_main(tiny_args(tiny_npz, tmp_path / "c", *argv, "--resume"), capsys)[0] == 0
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == (tmp_path / "c" / "metrics.jsonl").read_bytes()
    assert _uninterrupted_summary(tmp_path / "a") == _uninterrupted_summary(tmp_path / "c")


def test_a_non_finite_run_is_recorded_and_the_comparison_goes_on(tiny_npz, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = _run_main(tiny_args(tiny_npz, out, "--schemes", "fbn,naive", "--attack", "inf",
                                          "--attack-fields", "mean"), capsys)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    broken = summary["fbn"]["attack"]
    assert broken["status"].startswith("diverged: non-finite") and broken["steps_done"] < 12
    assert summary["fbn"]["attack+defense"]["status"] == "ok"
    assert summary["fbn"]["no-attack"]["status"] == "ok"
    assert summary["naive"]["attack"]["status"].startswith("diverged: non-finite running statistics")
    assert summary["naive"]["attack+defense"]["status"] == "ok"
    assert "! fbn / attack: diverged" in stdout


def _uninterrupted_summary(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    for runs in summary.values():
        for entry in runs.values():
            entry.pop("wall_s")
    return summary


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_final_metrics(tiny_npz, tmp_path):
    extra = ["--schemes", "naive,fbn", "--attack", "alie", "--target", "both", "--steps", "40", "--eval-every", "5",
             "--checkpoint-every", "5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "byzbn.attack_eval", *tiny_args(tiny_npz, tmp_path / "killed", *extra)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    target = tmp_path / "killed" / "checkpoints" / "naive__attack.pt"  # the second run has checkpointed
    deadline = time.monotonic() + 300
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert not (tmp_path / "killed" / "summary.json").exists() or \
        len(json.loads((tmp_path / "killed" / "summary.json").read_text())["naive"]) < 3
    resumed = subprocess.run(cmd + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert main(tiny_args(tiny_npz, tmp_path / "straight", *extra)) == 0
    assert (tmp_path / "killed" / "metrics.jsonl").read_bytes() == (tmp_path / "straight" / "metrics.jsonl").read_bytes()
    assert _uninterrupted_summary(tmp_path / "killed") == _uninterrupted_summary(tmp_path / "straight")
    # Resuming a finished directory skips every run and reports the same table.
    again = subprocess.run(cmd + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and again.stdout == resumed.stdout
