"""--model through the commands: docs/MODELS.md's example as written, a user model in a sweep and on Flower,
a bad --model, and an interrupted ResNet-20 run resumed to the same metrics (all in this process)."""
from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import pytest

from byzbn.attack_eval import main as attack_eval

DOC = Path(__file__).resolve().parent.parent / "docs" / "MODELS.md"
FILE_EXAMPLE = re.compile(r"```python\n# (?P<file>\w+\.py)\n(?P<code>.*?)```\s*```bash\n(?P<command>.*?)\n```", re.S)


def _doc_example() -> tuple[str, str, str, str]:
    text = DOC.read_text()
    match = FILE_EXAMPLE.search(text)
    api = re.findall(r"```python\n(.*?)```", text[match.end():], flags=re.S)[0]
    return match["file"], match["code"], match["command"], api


def _summary_ok(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert all(entry["status"] == "ok" for cells in summary.values() for entry in cells.values()), summary
    return summary


def test_the_docs_user_model_example_runs_as_written(tmp_path, monkeypatch, capsys):
    file, code, command, api = _doc_example()
    (tmp_path / file).write_text(code)
    monkeypatch.chdir(tmp_path)
    python, dash_m, module, *argv = shlex.split(command)
    assert (python, dash_m, module) == ("python", "-m", "byzbn.attack_eval") and f"--model {file}:" in command
    assert attack_eval(argv) == 0, capsys.readouterr().err
    (out,) = (tmp_path / "runs").iterdir()
    assert json.loads((out / "config.json").read_text())["model"] == f"{file}:build"
    assert sorted(_summary_ok(out)) == ["fbn", "fedtan", "naive"]
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, file[:-3], raising=False)
    exec(compile(api, str(DOC), "exec"), {})


@pytest.mark.parametrize("model,message", [
    ("nope", "--model nope: unknown model 'nope'"),
    ("nobn.py:build", "--model nobn.py:build --schemes fbn at --width 0.125: Sequential has no BatchNorm layer"),
    ("nobn.py:missing", "--model nobn.py:missing: nobn.py has no 'missing'"),
])
def test_a_bad_model_is_one_line_and_writes_nothing(model, message, tiny_npz, tmp_path, monkeypatch, capsys):
    (tmp_path / "nobn.py").write_text("from torch import nn\n\ndef build(input_shape, num_classes):\n"
                                      "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n")
    monkeypatch.chdir(tmp_path)
    code = attack_eval(["--dataset", f"npz:{tiny_npz}", "--schemes", "fbn", "--model", model, "--out", "out"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


USER_MODEL = '''from torch import nn


def build(input_shape, num_classes, width=1.0):
    c = max(2, round(8 * width))
    return nn.Sequential(nn.Conv2d(input_shape[0], c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 8), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Linear(8, num_classes))
'''


def test_model_is_a_sweep_axis_and_part_of_the_run_key(tiny_npz, tmp_path):
    from byzbn import sweep

    (tmp_path / "user.py").write_text(USER_MODEL)
    user = f"{tmp_path / 'user.py'}:build"
    grid = {"dataset": f"npz:{tiny_npz}", "model": ["cnn", "resnet20", user], "schemes": ["fbn"], "clients": 3,
            "byzantine": 1, "attack": "sign-flip", "defense": "median", "width": 0.125, "batch_size": 4, "steps": 2,
            "eval_every": 2, "lr": 0.1}
    config = tmp_path / "grid.toml"
    config.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in grid.items()) + "\n")
    assert sweep.main([str(config), "--out", str(tmp_path / "out"), "--jobs", "1", "--quiet"]) == 0
    with open(tmp_path / "out" / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["model"] for r in rows} == {"cnn", "resnet20", user}
    runs = {r["model"]: set() for r in rows}
    for r in rows:
        runs[r["model"]].add(r["run"])
    assert len(set.union(*runs.values())) == sum(len(v) for v in runs.values())  # no run shared across models


def test_a_user_model_trains_on_flower(tiny_npz, tmp_path):
    pytest.importorskip("flwr", reason="byzbn.flower needs the flower extra")
    from byzbn.flower.command import main as flower

    (tmp_path / "user.py").write_text(USER_MODEL)
    out = tmp_path / "flower"
    assert flower(["--dataset", f"npz:{tiny_npz}", "--clients", "3", "--byzantine", "1", "--width", "0.5",
                   "--batch-size", "4", "--local-steps", "1", "--rounds", "1", "--eval-every", "1",
                   "--schemes", "fbn", "--attack", "none", "--model", f"{tmp_path / 'user.py'}:build",
                   "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model"].endswith("user.py:build")
    _summary_ok(out)


def test_an_interrupted_resnet_run_resumes_to_the_same_metrics(tiny_npz, tmp_path, monkeypatch, capsys):
    from byzbn.fl import Federation

    argv = ["--dataset", f"npz:{tiny_npz}", "--model", "resnet20", "--width", "0.125", "--schemes", "fbn,fedtan",
            "--clients", "3", "--byzantine", "1", "--attack", "sign-flip", "--target", "both", "--batch-size", "4",
            "--steps", "4", "--eval-every", "2", "--checkpoint-every", "2", "--lr", "0.1", "--quiet"]
    assert attack_eval(argv + ["--out", str(tmp_path / "a")]) == 0, capsys.readouterr().err
    step = Federation.step

    def interrupted(self, *args, **kwargs):  # dies in fedtan / attack right after its checkpoint at step 2
        if self.scheme.name == "fedtan" and self.scenario.name == "attack" and self.step_count == 2:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Federation, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        attack_eval(argv + ["--out", str(tmp_path / "b")])
    monkeypatch.setattr(Federation, "step", step)
    assert (tmp_path / "b" / "checkpoints" / "fedtan__attack.pt").is_file()
    assert attack_eval(argv + ["--out", str(tmp_path / "b"), "--resume"]) == 0, capsys.readouterr().err
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == (tmp_path / "b" / "metrics.jsonl").read_bytes()
    # --resume with another model is refused
    code = attack_eval([*argv[:3], "resnet18", *argv[4:], "--out", str(tmp_path / "b"), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "arguments differ" in err and "'model'" in err, err
