"""One extension contract for every kind: what registration refuses (one line, nothing filed), the
capabilities each base class declares, and a plugin scheme's parameters reaching it from the command
line, a sweep config and a Flower run config."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from byzbn._registry import Registry
from byzbn.attacks import ATTACKS, Attack, register_attack
from byzbn.cli import plugins
from byzbn.defenses import (AGGREGATORS, PRE_AGGREGATORS, Aggregator, PreAggregator, register_aggregator,
                            register_pre_aggregator)
from byzbn.nn import MODELS, BNPass, register_model
from byzbn.schemes import SCHEMES, Scheme, make_scheme, register_scheme
from byzbn.schemes.naive import Naive

REPO = Path(__file__).resolve().parent.parent
LOG_ENV = "BYZBN_TEST_SCHEME_LOG"


def refused(register, obj, match: str) -> str:
    """Register obj under 'test-bad', which must fail with a one-line ValueError matching `match`."""
    with pytest.raises(ValueError, match=match) as error:
        register("test-bad")(obj)
    assert "\n" not in str(error.value)
    return str(error.value)


# ---------------------------------------------------------------------------------------------- aggregators
class _Rule(Aggregator):
    def __call__(self, x):
        return x.mean(dim=0)


class StatefulWithoutCenter(_Rule):
    stateful = True


class GeneratorWithoutFlag(_Rule):
    def with_generator(self, generator):
        return self


class CenterWithoutFlag(_Rule):
    def with_center(self, center):
        return self


class NotABool(_Rule):
    randomized = "yes"


class NoCall(Aggregator):
    pass


@pytest.mark.parametrize("register", [register_aggregator, register_pre_aggregator])
@pytest.mark.parametrize("cls, match", [
    (StatefulWithoutCenter, "sets stateful = True but defines no with_center()"),
    (GeneratorWithoutFlag, r"defines with_generator\(\) but not randomized = True"),
    (CenterWithoutFlag, r"defines with_center\(\) but not stateful = True"),
    (NotABool, "capability randomized must be a bool class attribute, got 'yes'"),
])
def test_rules_and_pre_aggregators_declare_their_capabilities(register, cls, match):
    if register is register_pre_aggregator:
        cls = type(cls.__name__, (cls, PreAggregator), {})
    refused(register, cls, match)
    assert "test-bad" not in AGGREGATORS and "test-bad" not in PRE_AGGREGATORS


def test_a_rule_must_implement_call():
    refused(register_aggregator, NoCall, r"aggregator 'test-bad': NoCall does not implement __call__\(\)")
    refused(register_pre_aggregator, type("NoCallPre", (PreAggregator,), {}), "NoCallPre does not implement __call__")


def test_a_plain_class_rule_has_the_bases_capabilities_and_a_declared_one_reaches_the_defense():
    from byzbn.defenses import make_defense

    class Plain:  # no base class: not stateful, not randomized
        def __init__(self, f):
            self.f = f

        def __call__(self, x):
            return x.mean(dim=0)

    class Shuffled(PreAggregator):
        randomized = True

        def with_generator(self, generator):
            return self

        def __call__(self, x):
            return x

    try:
        register_aggregator("test-plain")(Plain)
        register_pre_aggregator("test-shuffled")(Shuffled)
        assert not make_defense("test-plain", 1).randomized
        defense = make_defense("test-plain", 1, pre="test-shuffled")
        assert defense.randomized and not defense.stateful
        assert defense.with_generator(torch.Generator()) is not defense
    finally:
        AGGREGATORS.pop("test-plain", None)
        PRE_AGGREGATORS.pop("test-shuffled", None)


# -------------------------------------------------------------------------------------------------- attacks
def test_a_poisoning_attack_must_define_poison_and_a_class_attack_rows():
    class Poisoner(Attack):
        poisons_data = True

        def rows(self, honest, context):
            return honest[:1]

    refused(register_attack, Poisoner, "attack 'test-bad': Poisoner sets poisons_data = True but defines no poison()")
    refused(register_attack, type("Rowless", (Attack,), {}), r"Rowless does not implement rows\(\)")
    refused(register_attack, type("Odd", (Attack,), {"rows": lambda s, h, c: h, "needs_defense": 1}),
            "capability needs_defense must be a bool")
    assert "test-bad" not in ATTACKS


def test_each_base_declares_its_capabilities_as_typed_class_attributes():
    assert AGGREGATORS.capabilities() == ["stateful", "randomized"]
    assert PRE_AGGREGATORS.capabilities() == ["stateful", "randomized"]
    assert ATTACKS.capabilities() == ["needs_defense", "needs_whole_submission", "poisons_data"]
    assert SCHEMES.capabilities() == ["has_stats", "attackable", "couples_clients", "sync_layers"]
    assert all(isinstance(getattr(cls, cap), bool) for registry in (AGGREGATORS, PRE_AGGREGATORS, ATTACKS, SCHEMES)
               for cls in registry.values() for cap in registry.capabilities())


# -------------------------------------------------------------------------------------------------- schemes
class PassOnly(Scheme):
    def bn_pass(self, step, channel):
        return BNPass()


class RoundOnly(Scheme):
    def server_round(self, layers, steps, channel, round):
        return 0


class NoSteps(Naive):
    def __init__(self, k=1):
        super().__init__(10)


@pytest.mark.parametrize("cls, match", [
    (PassOnly, r"scheme 'test-bad': PassOnly does not implement server_round\(\)"),
    (RoundOnly, r"RoundOnly does not implement bn_pass\(\)"),
    (NoSteps, r"NoSteps.__init__ takes no parameter steps"),
    (type("Loud", (Naive,), {"sync_layers": None}), "capability sync_layers must be a bool"),
    (type("Other", (), {}), "must decorate a Scheme subclass"),
])
def test_an_incomplete_scheme_fails_at_registration(cls, match):
    refused(register_scheme, cls, match)
    assert "test-bad" not in SCHEMES


def test_a_schemes_repr_shows_its_parameters_whatever_attribute_holds_them():
    @register_scheme("test-renamed")
    class Renamed(Naive):
        def __init__(self, steps, k=1, label="x"):
            super().__init__(steps)
            self.kk = k  # not self.k

    try:
        assert repr(make_scheme("test-renamed", 5, k=3)) == "make_scheme('test-renamed', steps=5, k=3, label='x')"
        assert make_scheme("test-renamed", 5).params == {"k": 1, "label": "x"}
        assert repr(Renamed(5)) == "make_scheme('test-renamed', steps=5)"  # built directly: nothing to show, no raise
        with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['z'\] for scheme 'test-renamed'"):
            make_scheme("test-renamed", 5, z=1)
    finally:
        SCHEMES.pop("test-renamed", None)


# --------------------------------------------------------------------------------------------------- models
def test_a_model_builder_must_take_the_input_shape_and_the_class_count():
    refused(register_model, lambda shape: None, r"model 'test-bad': <lambda> must take \(input_shape, num_classes\)")
    assert "test-bad" not in MODELS
    assert MODELS.parameters("cnn")[0] == "width"  # what a builder takes besides (input_shape, num_classes)


def test_a_registry_makes_with_the_kinds_context_and_validated_parameters():
    assert isinstance(AGGREGATORS.make("trimmed-mean", 1), Aggregator)
    assert type(SCHEMES.make("fixbn", 10, freeze=0.2)).__name__ == "FixBN"
    with pytest.raises(ValueError, match=r"unknown scheme 'nope': valid schemes are \["):
        SCHEMES.make("nope", 10)
    with pytest.raises(TypeError, match=r"built with the context \(steps\)"):
        SCHEMES.make("fixbn")
    registry = Registry("widget")
    registry.register("w")(type("W", (), {}))
    with pytest.raises(ValueError, match="widget name 'w' is already registered to W"):
        registry.register("w")(type("W2", (), {}))


# ---------------------------------------------------------------- a plugin scheme's parameter, end to end
PLUGIN = f'''
import os

from byzbn.schemes import register_scheme
from byzbn.schemes.naive import Naive


@register_scheme("test-k-scheme")
class KScheme(Naive):
    """Naive BN that logs the k it is built with."""

    def __init__(self, steps, k=1):
        super().__init__(steps)
        self.kk = int(k)
        with open(os.environ["{LOG_ENV}"], "a") as log:
            log.write(f"k={{k}}\\n")
'''


@pytest.fixture
def plugin_file(tmp_path, monkeypatch):
    """The plugin file and its log; the scheme is taken out of the registry again afterwards."""
    path = tmp_path / "k_scheme.py"
    path.write_text(PLUGIN)
    log = tmp_path / "k.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    loaded = set(plugins._files)
    yield path, lambda: sorted(set(log.read_text().split())) if log.exists() else []
    SCHEMES.pop("test-k-scheme", None)
    for key in set(plugins._files) - loaded:
        del plugins._files[key]


def tiny(npz: Path, out: Path) -> list[str]:
    return ["--dataset", f"npz:{npz}", "--out", str(out), "--clients", "5", "--byzantine", "1", "--width", "0.125",
            "--batch-size", "4", "--steps", "2", "--eval-every", "2", "--attack", "none", "--quiet"]


def test_a_scheme_parameter_reaches_a_plugin_scheme_from_the_command_line(tiny_npz, tmp_path, plugin_file, capsys):
    from byzbn import attack_eval

    path, logged = plugin_file
    argv = tiny(tiny_npz, tmp_path / "out") + ["--plugin", str(path), "--schemes", "naive,test-k-scheme",
                                               "--scheme-param", "test-k-scheme.k=3"]
    assert attack_eval.main(argv) == 0, capsys.readouterr().err
    assert logged() == ["k=3"]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["scheme_params"] == {"test-k-scheme": {"k": 3}}
    # An unknown parameter, or a scheme not in --schemes, is a bad argument: one line, exit status 2.
    for bad, message in [("test-k-scheme.z=3", r"unknown parameter(s) ['z'] for scheme 'test-k-scheme'"),
                         ("fbn.k=3", "'fbn' is not in --schemes")]:
        argv = tiny(tiny_npz, tmp_path / bad) + ["--plugin", str(path), "--schemes", "test-k-scheme",
                                                 "--scheme-param", bad]
        assert attack_eval.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_the_scheme_shorthands_are_scheme_parameters_and_a_scheme_param_wins():
    from byzbn.runs.build import scheme_params

    class Config:  # the two shorthand options and the --scheme-param values, as a RunConfig holds them
        fixbn_freeze, groups = 0.5, 4
        scheme_params = {"fixbn": {"freeze": 0.25}}

        def params_of_scheme(self, name):
            return dict(self.scheme_params.get(name, {}))

    assert scheme_params("fixbn", Config()) == {"freeze": 0.25}
    assert scheme_params("groupnorm", Config()) == {"groups": 4}
    assert scheme_params("naive", Config()) == {}


def test_a_scheme_parameter_reaches_a_plugin_scheme_from_a_sweep_config(tiny_npz, tmp_path, plugin_file):
    from byzbn import sweep

    path, logged = plugin_file
    config = tmp_path / "grid.toml"
    config.write_text(f'plugin = "{path}"\ndataset = "npz:{tiny_npz}"\nschemes = ["naive", "test-k-scheme"]\n'
                      'scheme_param = "test-k-scheme.k=5"\nattack = "none"\nclients = 5\nbyzantine = 1\n'
                      'width = 0.125\nbatch_size = 4\nsteps = 2\neval_every = 2\n')
    assert sweep.main([str(config), "--out", str(tmp_path / "out"), "--jobs", "1", "--quiet"]) == 0
    assert logged() == ["k=5"]


def test_a_scheme_parameter_reaches_a_plugin_scheme_from_a_flower_run_config(tiny_npz, plugin_file):
    pytest.importorskip("flwr", reason='byzbn.flower needs the flower extra: pip install ".[flower]"')
    from byzbn.flower.experiment import experiment_from_run_config
    from byzbn.flower.spec import ClientSpec, client_spec
    from byzbn.flower.strategy import FlowerRun, RobustBNStrategy

    path, logged = plugin_file
    experiment = experiment_from_run_config({
        "plugin": str(path), "dataset": f"npz:{tiny_npz}", "schemes": "test-k-scheme",
        "scheme-param": "test-k-scheme.k=7", "clients": 5, "byzantine": 1, "width": 0.125, "batch-size": 4,
        "local-steps": 2, "rounds": 1, "attack": "none", "quiet": True})
    plan = experiment.plan
    strategy = RobustBNStrategy(FlowerRun(plan.config, "test-k-scheme", "no-attack", plan.dataset, plan.client_indices,
                                          plan.attack, plan.defense, nodes={c: 100 + c for c in range(5)}))
    assert strategy.scheme.params == {"k": 7}  # the server's scheme
    spec = client_spec(plan.config, "test-k-scheme", "no-attack", 1, 4, "none", "simulated")
    assert ClientSpec.from_config(spec.to_config()).scheme_kwargs() == {"k": 7}  # what every client builds
    assert logged() == ["k=7"]


# ------------------------------------------------------------------------------------------- bare imports
@pytest.mark.parametrize("folder", ["attacks", "defenses", "kernels"])
def test_the_top_level_folders_import_only_as_byzbn_subpackages(folder):
    statement = "import kernels" if folder == "kernels" else f"import {folder}.registry"
    run = subprocess.run([sys.executable, "-c", statement], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last == (f"ImportError: this folder is the package byzbn.{folder}: import byzbn.{folder}, not {folder} "
                    "(the same files under two names would be two separate modules, each with its own state)")
