"""Path problems are one line, exit 2, before anything is written, in every command; never an empty --out left.

A read-only directory cannot be simulated by chmod when the tests run as root, so the unwritable cases are
/proc (refuses new entries), a file on the way, and an ENOSPC raised in-process.
"""
from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from byzbn.cli import attack_eval, claims, reproduce, sweep
from byzbn.runs import paths, results

REPO = Path(__file__).resolve().parent.parent
TINY = ["--dataset", "digits", "--schemes", "naive", "--steps", "2", "--eval-every", "2", "--batch-size", "4",
        "--width", "0.0625", "--quiet", "--attack", "none"]
SWEEP = 'dataset = "digits"\nsteps = 2\neval_every = 2\nwidth = 0.0625\nbatch_size = 4\nattack = "none"\n' \
        'schemes = ["naive"]\n'


def one_line_error(capsys, rc: int, match: str, code: int = 2) -> str:
    err = capsys.readouterr().err
    assert rc == code, err
    assert len(err.strip().splitlines()) == 1 and match in err, err
    return err


@pytest.fixture
def afile(tmp_path) -> Path:
    path = tmp_path / "afile"
    path.write_text("x")
    return path


@pytest.mark.parametrize("where, match", [("/proc/byzbn-x", "cannot create a directory in /proc"),
                                          ("AFILE/sub", "which is a file, not a directory")])
def test_attack_eval_refuses_an_unwritable_out(capsys, afile, where, match):
    out = where.replace("AFILE", str(afile))
    one_line_error(capsys, attack_eval.main([*TINY, "--out", out]), f"--out {out}: ")
    assert not Path(out).exists()


def test_a_full_disk_at_the_start_is_one_line(capsys, tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(paths.os, "fsync", full)
    out = tmp_path / "out"
    one_line_error(capsys, attack_eval.main([*TINY, "--out", str(out)]), "No space left on device")
    assert not out.exists() and not list(tmp_path.iterdir())  # the probe is gone too


def test_a_disk_filling_during_the_run_is_one_line_and_leaves_no_empty_out(capsys, tmp_path, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(results, "atomic_write_bytes", full)
    out = tmp_path / "out"
    err = one_line_error(capsys, attack_eval.main([*TINY, "--out", str(out)]), "No space left on device", code=1)
    assert "config.json" in err
    assert not out.exists()


def test_resume_of_a_truncated_config_is_one_line(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"schemes": ["naive"], "ste')
    one_line_error(capsys, attack_eval.main([*TINY, "--out", str(out), "--resume"]),
                   "--resume: cannot read")


def test_npz_pointing_at_a_npy_is_one_line(capsys, tmp_path):
    path = tmp_path / "images.npy"
    np.save(path, np.zeros((4, 8, 8), np.uint8))
    out = tmp_path / "out"
    one_line_error(capsys, attack_eval.main([*TINY, "--dataset", f"npz:{path}", "--out", str(out)]),
                   "is a single array (.npy), not an .npz archive")
    assert not out.exists()


def write_sweep_config(tmp_path) -> Path:
    config = tmp_path / "grid.toml"
    config.write_text(SWEEP)
    return config


@pytest.mark.parametrize("flag", ["--out", "--store"])
def test_sweep_refuses_an_unwritable_out_or_store_and_writes_nothing(capsys, tmp_path, afile, flag):
    out = tmp_path / "sweep"
    argv = [str(write_sweep_config(tmp_path)), "--out", str(out), "--quiet"]
    for where in ("/proc/byzbn-x", f"{afile}/sub"):
        rc = sweep.main([*argv, flag, where] if flag == "--store" else [*argv[:1], "--out", where, "--quiet"])
        one_line_error(capsys, rc, f"{flag} {where}: ")
        assert not out.exists()


def fake_finished_sweep(out: Path, record: str, csv: str) -> Path:
    out.mkdir()
    (out / "sweep.json").write_text(record)
    (out / "results.csv").write_text(csv)
    return out


@pytest.mark.parametrize("record, csv, match", [
    ('{"name": "x", "axes": {"sch', "scheme,scenario\n", "--redraw: cannot read"),
    ('{"name": "x"}', 'scheme\n"naive\n1,2,3\n', "--redraw: "),
])
def test_redraw_of_a_damaged_sweep_is_one_line(capsys, tmp_path, record, csv, match):
    out = fake_finished_sweep(tmp_path / "sweep", record, csv)
    one_line_error(capsys, sweep.main(["--redraw", "--out", str(out)]), match)


def test_claims_of_a_damaged_sweep_is_one_line(capsys, tmp_path):
    out = fake_finished_sweep(tmp_path / "sweep", '{"name": "fig', "scheme\n")
    preset = claims.build_parser()._actions[1].choices[0]
    one_line_error(capsys, claims.main([preset, str(out)]), "cannot read")


def test_reproduce_refuses_an_unwritable_out(capsys):
    rc = reproduce.main(["fig3", "--dataset", "digits", "--steps", "2", "--out", "/proc/byzbn-x", "--quiet"])
    one_line_error(capsys, rc, "--out /proc/byzbn-x: ")


def test_flower_refuses_an_unwritable_out(capsys):
    command = pytest.importorskip("byzbn.flower.command")
    rc = command.main([*TINY, "--steps", "5", "--out", "/proc/byzbn-x"])
    one_line_error(capsys, rc, "--out /proc/byzbn-x: ")


def test_the_commands_refuse_in_a_fresh_process_too(tmp_path):
    """The real entry point: exit status 2, one line, no traceback."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "byzbn.attack_eval", *TINY, "--out", "/proc/byzbn-x/out"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_check_writable_dir_accepts_a_new_nested_directory_and_leaves_nothing(tmp_path):
    paths.check_writable_dir(tmp_path / "a" / "b", "--out")
    assert list(tmp_path.iterdir()) == []
