"""RunConfig: config.json round-trips exactly, older files are migrated in one place, types are checked."""
from __future__ import annotations

import json

import pytest

from byzbn.cli import attack_eval
from byzbn.runs import RunConfig
from byzbn.runs.config import plan_from_args
from byzbn.runs.identity import run_identity
from byzbn.runs.run_config import added_defaults, migrate

TINY = ["--schemes", "naive,fixbn", "--clients", "5", "--byzantine", "1", "--steps", "2", "--eval-every", "1",
        "--batch-size", "4", "--width", "0.125", "--attack", "alie", "--quiet", "--device", "cpu"]


def _config(tiny_npz, tmp_path, *extra) -> RunConfig:
    args = attack_eval.build_parser().parse_args([*TINY, "--dataset", f"npz:{tiny_npz}", "--out",
                                                  str(tmp_path / "out"), *extra])
    return plan_from_args(args).config


def test_the_config_is_typed_and_round_trips_config_json(tiny_npz, tmp_path):
    config = _config(tiny_npz, tmp_path, "--defense", "geomed", "--defense-param", "T=3", "--lr", "1")
    assert isinstance(config, RunConfig)
    assert config.schemes == ("naive", "fixbn") and config.byzantine == 1 and config.honest == 4
    assert isinstance(config.lr, float) and config.lr == 1.0 and config.defense_params == {"T": 3}
    text = config.text()
    assert RunConfig.from_json(json.loads(text)) == config
    assert RunConfig.from_json(json.loads(text)).text() == text  # byte for byte
    assert json.loads(text) == config.to_json()
    # what the plugins of the other parts of the configuration read, at their defaults
    assert (config.model, config.participation, config.diagnostics, config.scheme_params) == ("cnn", 1.0, False, {})


def test_the_config_is_frozen_and_its_dicts_are_copies(tiny_npz, tmp_path):
    config = _config(tiny_npz, tmp_path, "--attack-param", "z=1.5")
    with pytest.raises(AttributeError):
        config.steps = 3  # type: ignore[misc]
    config.to_json()["attack_params"]["z"] = 9
    assert config.attack_params == {"z": 1.5}
    assert hash(config) == hash(RunConfig.from_json(config.to_json()))


def test_an_older_config_json_is_migrated_in_one_place(tiny_npz, tmp_path):
    current = _config(tiny_npz, tmp_path).to_json()
    older = {k: v for k, v in current.items() if k not in added_defaults()}
    assert migrate(older) == {**older, **added_defaults()}
    assert older == {k: v for k, v in current.items() if k not in added_defaults()}  # not mutated
    assert RunConfig.from_json(older) == RunConfig.from_json(current)
    # Flower's config.json once left these out, and carries its own options beside the run options
    flower = {k: v for k, v in older.items() if k not in ("checkpoint_every", "resume")}
    flower.update(engine="flower", rounds=2, fraction_train=1.0)
    config = RunConfig.from_json(flower)
    assert config.checkpoint_every == config.steps and config.resume is False
    assert config.extras == {"engine": "flower", "rounds": 2, "fraction_train": 1.0}
    assert RunConfig.from_json(config.to_json()) == config


def test_resume_accepts_an_older_config_json_and_refuses_another(tiny_npz, tmp_path, capsys):
    argv = [*TINY, "--dataset", f"npz:{tiny_npz}", "--out", str(tmp_path / "out")]
    assert attack_eval.main(argv) == 0
    saved = tmp_path / "out" / "config.json"
    old = {k: v for k, v in json.loads(saved.read_text()).items() if k not in added_defaults()}
    saved.write_text(json.dumps(old))
    assert attack_eval.main([*argv, "--resume"]) == 0
    capsys.readouterr()
    assert attack_eval.main([*argv, "--resume", "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differ" in err and "'seed'" in err


@pytest.mark.parametrize("key,value", [("steps", "10"), ("steps", 2.5), ("schemes", "naive"), ("resume", 1),
                                       ("lr", True), ("attack_params", [1])])
def test_a_value_of_the_wrong_type_is_a_one_line_error(tiny_npz, tmp_path, key, value):
    data = {**_config(tiny_npz, tmp_path).to_json(), key: value}
    with pytest.raises(ValueError, match=f"^run configuration {key}=") as error:
        RunConfig.from_json(data)
    assert "\n" not in str(error.value)


def test_a_config_lacking_an_option_names_it(tiny_npz, tmp_path):
    data = _config(tiny_npz, tmp_path).to_json()
    del data["steps"], data["seed"]
    with pytest.raises(ValueError, match=r"lacks \['seed', 'steps'\]"):
        RunConfig.from_json(data)


def test_options_added_later_keep_the_run_keys_at_their_defaults(tiny_npz, tmp_path):
    config = _config(tiny_npz, tmp_path)
    identity = run_identity(config, "naive", "no-attack")
    assert not set(identity) & {"model", "participation", "diagnostics", "scheme_params"}
    assert run_identity(config.to_json(), "naive", "no-attack") == identity
    other = config.with_changes(model="resnet", participation=0.5, scheme_params={"fixbn": {"freeze": 0.3}})
    changed = run_identity(other, "naive", "no-attack")
    assert (changed["model"], changed["participation"]) == ("resnet", 0.5) and "scheme_params" not in changed
    assert run_identity(other, "fixbn", "no-attack")["scheme_params"] == {"freeze": 0.3}
