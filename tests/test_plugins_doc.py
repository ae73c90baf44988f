"""docs/PLUGINS.md runs as written: every python block is a plugin file, and the command after it trains with it.

Each block's first line names its file (`# my_rule.py`); the ```bash block that follows is the command,
run in a temporary directory holding the file — in this process (the command's `main`), so that the
test does not pay for five interpreters; the names the plugins register are taken out again afterwards.
"""
from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path

import pytest

from byzbn.attacks import ATTACKS
from byzbn.cli import plugins
from byzbn.defenses import AGGREGATORS, PRE_AGGREGATORS
from byzbn.nn import MODELS
from byzbn.schemes import SCHEMES

DOC = Path(__file__).resolve().parent.parent / "docs" / "PLUGINS.md"
EXAMPLE = re.compile(r"```python\n# (?P<file>\w+\.py)\n(?P<code>.*?)```\s*```bash\n(?P<command>.*?)\n```", re.S)
KINDS = {"register_aggregator": AGGREGATORS, "register_pre_aggregator": PRE_AGGREGATORS,
         "register_attack": ATTACKS, "register_scheme": SCHEMES, "register_model": MODELS}


def examples() -> list[tuple[str, str, str]]:
    return [(m["file"], m["code"], m["command"]) for m in EXAMPLE.finditer(DOC.read_text())]


def test_the_guide_has_one_example_per_kind_and_every_python_block_is_one():
    found = examples()
    assert len(found) == len(re.findall(r"```python\n", DOC.read_text())), "a python block without its command"
    registered = [next(k for k in KINDS if f"@{k}(" in code) for _, code, _ in found]
    assert sorted(registered) == sorted(KINDS)


@pytest.fixture
def clean_registries():
    before = {name: set(registry) for name, registry in KINDS.items()}
    loaded = set(plugins._files)
    yield
    for name, registry in KINDS.items():
        for key in set(registry) - before[name]:
            del registry[key]
    for key in set(plugins._files) - loaded:
        del plugins._files[key]


@pytest.mark.parametrize("file, code, command", examples(), ids=[e[0] for e in examples()])
def test_each_example_runs_as_written(file, code, command, tmp_path, monkeypatch, capsys, clean_registries):
    (tmp_path / file).write_text(code)
    monkeypatch.chdir(tmp_path)
    python, dash_m, module, *argv = shlex.split(command)
    assert (python, dash_m) == ("python", "-m") and f"--plugin {file}" in command
    assert importlib.import_module(module).main(argv) == 0, capsys.readouterr().err
    kind = next(k for k in KINDS if f"@{k}(" in code)
    name = re.search(rf'@{kind}\("([^"]+)"\)', code).group(1)
    assert name in KINDS[kind]
    (out,) = (tmp_path / "runs").iterdir()
    config = json.loads((out / "config.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    used = {"register_aggregator": config["defense"], "register_pre_aggregator": config["pre"],
            "register_attack": config["attack"], "register_scheme": ",".join(summary),
            "register_model": config.get("model")}[kind]
    assert name in used.split(","), (name, used)
    assert all(entry["status"] == "ok" for cells in summary.values() for entry in cells.values())
