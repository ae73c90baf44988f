"""byzbn.cli: --plugin on every command, the options reproduce shares with attack_eval, and which errors are
bad arguments (one line, exit 2, nothing written) and which are real errors (a traceback, never exit 2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from byzbn import attack_eval, reproduce
from byzbn.cli import plugins
from byzbn.cli.options import ATTACK_FLAGS
from byzbn.runs import config as validate
from byzbn.runs import execute as runner

REPO = Path(__file__).resolve().parent.parent
LOG_ENV = "BYZBN_TEST_PLUGIN_LOG"

# A user's file: a rule, a pre-aggregator, an attack and a scheme, each logging its calls to $BYZBN_TEST_PLUGIN_LOG.
PLUGIN = '''
import os

from byzbn.attacks import register_attack
from byzbn.defenses import register_aggregator, register_pre_aggregator
from byzbn.schemes import Naive, register_scheme


def log(line):
    with open(os.environ["BYZBN_TEST_PLUGIN_LOG"], "a") as handle:
        handle.write(line + "\\n")


@register_aggregator("logged-median")
class LoggedMedian:
    def __init__(self, f):
        self.f = f

    def __call__(self, x):
        log(f"rule {x.shape[0]}")
        return x.median(dim=0).values


@register_pre_aggregator("logged-pre")
class LoggedPre:
    def __init__(self, f):
        self.f = f

    def __call__(self, x):
        log(f"pre {x.shape[0]}")
        return x


@register_attack("logged-flip")
def logged_flip(honest, context):
    log(f"attack {context.channel}")
    return -honest.mean(dim=0, keepdim=True).expand(context.f, -1)


@register_scheme("logged-naive")
class LoggedNaive(Naive):
    def bn_pass(self, step, channel):
        log("scheme pass")
        return super().bn_pass(step, channel)
'''


@pytest.fixture(scope="module")
def plugin_file(tmp_path_factory):
    """The plugin file, its names taken out of the registries again after this module's tests."""
    from byzbn.attacks import ATTACKS
    from byzbn.defenses import AGGREGATORS, PRE_AGGREGATORS
    from byzbn.schemes import SCHEMES

    registries = (ATTACKS, AGGREGATORS, PRE_AGGREGATORS, SCHEMES)
    before = [set(r) for r in registries]
    loaded = set(plugins._files)
    path = tmp_path_factory.mktemp("plugin") / "my_rules.py"
    path.write_text(PLUGIN)
    yield path
    for registry, names in zip(registries, before):
        for name in set(registry) - names:
            del registry[name]
    for key in set(plugins._files) - loaded:
        del plugins._files[key]


@pytest.fixture
def calls(tmp_path, monkeypatch):
    """Read the plugin's call log of this test."""
    log = tmp_path / "calls.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    return lambda: log.read_text().splitlines() if log.exists() else []


def tiny(npz: Path, out: Path, *extra: str) -> list[str]:
    return ["--dataset", f"npz:{npz}", "--out", str(out), "--clients", "6", "--byzantine", "2", "--width", "0.125",
            "--batch-size", "4", "--steps", "2", "--eval-every", "2", "--quiet", *extra]


@pytest.mark.parametrize("algorithm", [["--algorithm", "dsgd"], ["--algorithm", "fedavg", "--local-steps", "2"]])
def test_a_plugin_rule_pre_aggregator_and_attack_are_selected_by_name_and_called(tiny_npz, tmp_path, capsys,
                                                                                  plugin_file, calls, algorithm):
    # --plugin comes last: it is imported before the options naming its rule, pre-aggregator and attack are checked.
    argv = tiny(tiny_npz, tmp_path / "out", "--schemes", "fbn", "--target", "both", "--attack", "logged-flip",
                "--defense", "logged-median", "--pre", "nnm,logged-pre", *algorithm, "--plugin", str(plugin_file))
    assert attack_eval.main(argv) == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["plugins"] == [str(plugin_file)] and "plugin" not in config
    assert (config["attack"], config["defense"], config["pre"]) == ("logged-flip", "logged-median", "nnm,logged-pre")
    log = calls()
    # Both channels attacked in the attack and attack+defense runs; the rule and the pre-aggregator (after NNM,
    # which keeps the n = 6 rows) aggregate the attacked channels of attack+defense only.
    assert {"attack stats", "attack grads", "pre 6", "rule 6"} <= set(log)
    assert log.count("pre 6") == log.count("rule 6")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["fbn"]) == {"no-attack", "attack", "attack+defense"}
    assert summary["fbn"]["attack+defense"]["status"] == "ok"
    # Importing twice in one process runs the file once: a second command does not register the names again.
    assert attack_eval.main(tiny(tiny_npz, tmp_path / "again", "--schemes", "fbn", "--attack", "none",
                                 "--plugin", str(plugin_file))) == 0


def test_a_plugin_scheme_is_selected_by_name_and_trained(tiny_npz, tmp_path, capsys, plugin_file, calls):
    argv = tiny(tiny_npz, tmp_path / "out", "--plugin", str(plugin_file), "--schemes", "naive,logged-naive")
    assert attack_eval.main(argv) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["logged-naive"]) == {"no-attack", "attack", "attack+defense"}
    assert "scheme pass" in calls()  # the runner trains with the plugin's class
    # The same seed, the same algorithm: the subclass trains exactly as the scheme it extends.
    assert summary["logged-naive"]["no-attack"]["final_acc"] == summary["naive"]["no-attack"]["final_acc"]


def test_a_dotted_module_is_a_plugin(tiny_npz, tmp_path, monkeypatch, capsys, plugin_file, calls, request):
    package = tmp_path / "lab_rules_for_byzbn_test"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "rules.py").write_text(PLUGIN.replace('"logged-', '"module-'))
    monkeypatch.syspath_prepend(str(tmp_path))
    request.addfinalizer(lambda: [sys.modules.pop(name, None) for name in
                                  ("lab_rules_for_byzbn_test", "lab_rules_for_byzbn_test.rules")])
    argv = tiny(tiny_npz, tmp_path / "out", "--schemes", "naive", "--defense", "module-median", "--plugin",
                "lab_rules_for_byzbn_test.rules")
    assert attack_eval.main(argv) == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["plugins"] == ["lab_rules_for_byzbn_test.rules"] and config["defense"] == "module-median"
    assert "rule 6" in calls()


BROKEN = {
    "raises.py": ("x = 1\nraise RuntimeError('boom')\n", "raises.py:2: RuntimeError: boom"),
    "syntax.py": ("def f(:\n", "syntax.py:1: SyntaxError"),
    "twice.py": ("from byzbn.defenses import register_aggregator\n@register_aggregator('median')\n"
                 "class Median:\n    def __init__(self, f): pass\n    def __call__(self, x): return x[0]\n",
                 "aggregator name 'median' is already registered"),
}


@pytest.mark.parametrize("command", ["attack_eval", "reproduce"])
@pytest.mark.parametrize("name", ["missing.py", "no_such_module_for_byzbn", "1-not-a-module", *BROKEN])
def test_an_unimportable_plugin_is_a_bad_argument(tiny_npz, tmp_path, monkeypatch, capsys, command, name):
    monkeypatch.chdir(tmp_path)
    plugin = name
    if name in BROKEN:
        (tmp_path / "plugins").mkdir()
        (tmp_path / "plugins" / name).write_text(BROKEN[name][0])
        plugin = str(tmp_path / "plugins" / name)
    expected = {"missing.py": "--plugin missing.py: no such file",
                "no_such_module_for_byzbn": "no such file or importable module",
                "1-not-a-module": "no such file, and not a dotted module name"}.get(name) or BROKEN[name][1]
    if command == "attack_eval":
        code = attack_eval.main(tiny(tiny_npz, tmp_path / "out", "--plugin", plugin))
    else:
        code = reproduce.main(["fig3", "--dataset", f"npz:{tiny_npz}", "--out", str(tmp_path / "out"),
                               "--plugin", plugin])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and expected in captured.err, captured.err
    assert sorted(os.listdir(tmp_path)) == (["plugins"] if name in BROKEN else [])


def test_a_trailing_plugin_flag_without_a_value_is_a_bad_argument(capsys):
    assert attack_eval.main(["--plugin"]) == 2
    assert "expected one argument" in capsys.readouterr().err


def _flags(parser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def test_reproduce_takes_every_attack_eval_option_it_does_not_sweep_or_fix():
    shared = _flags(attack_eval.build_parser()) - {"--resume", "--heterogeneity", "--seed"}
    figures = reproduce.build_parser()._subparsers._group_actions[0].choices
    assert _flags(figures["fig4"]) == shared - {"--defense"} | {"--gammas", "--seeds", "--defenses", "--jobs"}
    assert _flags(figures["fig3"]) == shared - set(ATTACK_FLAGS) | {"--gammas", "--seeds", "--jobs"}
    assert {"--algorithm", "--target", "--pre", "--attack-param", "--plugin", "--groups"} <= _flags(figures["fig4"])


def _defended_run(out: Path, defense: str) -> dict:
    """The identity of the attack+defense run with `defense` in a reproduction's store (OUT/runs)."""
    runs = [json.loads(p.read_text())["run"] for p in (out / "runs").glob("*/config.json")]
    (run,) = [r for r in runs if r["scenario"] == "attack+defense" and r["defense"] == defense]
    return run


def test_fig4_passes_attack_eval_options_and_plugins_to_its_cells(tiny_npz, tmp_path, capsys, plugin_file, calls):
    out = tmp_path / "fig4"
    argv = ["fig4", "--dataset", f"npz:{tiny_npz}", "--out", str(out), "--clients", "5", "--byzantine", "1",
            "--width", "0.125", "--batch-size", "4", "--steps", "4", "--eval-every", "2", "--gammas", "0",
            "--schemes", "fbn", "--attack", "logged-flip", "--target", "both", "--pre", "logged-pre,nnm",
            "--defenses", "logged-median,median", "--algorithm", "fedavg", "--local-steps", "2", "--quiet",
            "--seeds", "1", "--plugin", str(plugin_file)]
    code, stdout = reproduce.main(argv), capsys.readouterr().out
    assert code == 0
    cell = _defended_run(out, "logged-median")
    assert (cell["attack"], cell["target"], cell["pre"], cell["defense"]) == \
           ("logged-flip", "both", "logged-pre,nnm", "logged-median")
    assert (cell["algorithm"], cell["local_steps"]) == ("fedavg", 2)
    assert json.loads((out / "reproduce.json").read_text())["plugins"] == [str(plugin_file)]
    labels = {r["label"] for r in json.loads((out / "summary.json").read_text())["aggregate"]}
    assert labels == {"no attack", "no defense", "logged-pre∘nnm∘logged-median", "logged-pre∘nnm∘median"}
    assert "logged-flip on the gradients and the BN mean" in stdout
    assert {"attack stats", "attack grads", "pre 5", "rule 5"} <= set(calls())
    # --attack-param reaches the cells too: alie's z.
    out = tmp_path / "alie"
    argv = argv[:argv.index("--out") + 1] + [str(out)] + argv[argv.index("--out") + 2:]
    argv[argv.index("logged-flip")] = "alie"
    assert reproduce.main(argv + ["--attack-param", "z=0.5"]) == 0
    assert _defended_run(out, "median")["attack_params"] == {"z": 0.5}


def test_a_bad_value_of_a_registered_object_names_its_flag(tiny_npz, tmp_path, capsys):
    assert attack_eval.main(tiny(tiny_npz, tmp_path / "out", "--attack", "alie", "--attack-param", "zz=1")) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m byzbn.attack_eval: error: --attack alie: unknown parameter(s) ['zz']"), err
    assert attack_eval.main(tiny(tiny_npz, tmp_path / "out", "--pre", "nnm,nope")) == 2
    assert "--pre: unknown pre-aggregator 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _internal_error(*args, **kwargs):
    raise ValueError("an internal error, not an argument")


@pytest.mark.parametrize("where", ["plan", "run"])
def test_an_internal_value_error_is_not_reported_as_a_bad_argument(tiny_npz, tmp_path, monkeypatch, capsys, where):
    # While planning, after the arguments were checked (which runs are made); or inside a run.
    if where == "plan":
        monkeypatch.setattr(validate, "runs_attacked", _internal_error)
    else:
        monkeypatch.setattr(runner, "build_federation", _internal_error)
    with pytest.raises(ValueError, match="an internal error"):
        attack_eval.main(tiny(tiny_npz, tmp_path / "out", "--schemes", "fbn"))
    with pytest.raises(ValueError, match="an internal error"):
        reproduce.main(["fig4", "--dataset", f"npz:{tiny_npz}", "--out", str(tmp_path / "fig4"), "--clients", "5",
                        "--byzantine", "1", "--batch-size", "4", "--steps", "2", "--gammas", "0", "--quiet"])
    assert "error:" not in capsys.readouterr().err


def test_the_entry_point_exits_1_with_a_traceback_on_an_internal_error(tiny_npz, tmp_path):
    # The plugin's rule raises a ValueError inside the run: a real error, not a bad argument. (It passes
    # the validator's call on a few narrow test rows, byzbn.runs.dry_call, and fails on the run's rows.)
    rule = tmp_path / "failing_rule.py"
    rule.write_text("from byzbn.defenses import register_aggregator\n\n@register_aggregator('failing')\n"
                    "class Failing:\n    def __init__(self, f):\n        self.f = f\n\n"
                    "    def __call__(self, x):\n        if x.shape[1] <= 6:\n            return x.mean(dim=0)\n"
                    "        raise ValueError('the rule failed inside the run')\n")
    cmd = [sys.executable, "-m", "byzbn.attack_eval", *tiny(tiny_npz, tmp_path / "out", "--schemes", "naive",
                                                              "--defense", "failing", "--plugin", str(rule))]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" in proc.stderr and "ValueError: the rule failed inside the run" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "ValueError: the rule failed inside the run"
    assert "byzbn.attack_eval: error:" not in proc.stderr
    assert (tmp_path / "out" / "config.json").is_file()  # it got past the arguments and started running


def test_defense_and_pre_aggregator_parameters_reach_the_defense_and_config_json(tiny_npz, tmp_path, capsys):
    from byzbn.cli.attack_eval import build_parser
    from byzbn.defenses import make_defense

    argv = tiny(tiny_npz, tmp_path / "out", "--schemes", "fbn", "--defense", "geomed", "--defense-param", "T=2",
                "--defense-param", "nu=0.5", "--pre", "bucketing,clipping", "--pre-param", "bucketing.s=2",
                "--pre-param", "clipping.c=5.0", "--pre-param", "bucketing.seed=3")
    plan = validate.validate_run(build_parser().parse_args(argv))
    expected = make_defense("geomed", 2, pre=[("bucketing", {"s": 2, "seed": 3}), ("clipping", {"c": 5.0})],
                            T=2, nu=0.5)
    assert repr(plan.defense) == repr(expected) == "bucketing(s=2, seed=3)∘clipping(c=5.0)∘geomed(f=2, nu=0.5, T=2, tol=1e-06)"
    assert attack_eval.main(argv) == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["defense_params"] == {"T": 2, "nu": 0.5}
    assert config["pre_params"] == {"bucketing": {"s": 2, "seed": 3}, "clipping": {"c": 5.0}}
    assert config["pre"] == "bucketing,clipping" and not {"defense_param", "pre_param"} & set(config)
    # --resume with another parameter is refused: it changes what the attack+defense run computes.
    argv[argv.index("T=2")] = "T=3"
    assert attack_eval.main(argv + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "arguments differ" in err and "in ['defense_params']" in err, err


@pytest.mark.parametrize("extra, message", [
    (["--defense", "geomed", "--defense-param", "TT=2"],
     "--defense geomed (--pre nnm): unknown parameter(s) ['TT'] for aggregator 'geomed': valid parameters are "
     "['nu', 'T', 'tol']"),
    (["--defense", "geomed", "--defense-param", "T=-1"], "--defense geomed (--pre nnm): T=-1 is out of range"),
    (["--defense-param", "T"], "--defense-param 'T' is malformed: expected K=V"),
    (["--pre", "nnm", "--pre-param", "bucketing.s=2"],
     "--pre-param 'bucketing.s=2': 'bucketing' is not in --pre (nnm)"),
    (["--pre", "bucketing", "--pre-param", "bucketing.k=2"],
     "unknown parameter(s) ['k'] for pre-aggregator 'bucketing': valid parameters are ['s', 'seed']"),
    (["--pre", "bucketing", "--pre-param", "s=2"], "--pre-param 's=2' is malformed: expected NAME.K=V"),
    (["--pre", "bucketing", "--pre-param", "bucketing.=2"], "--pre-param '=2' is malformed: expected K=V"),
])
def test_bad_defense_and_pre_parameters_are_one_line_errors(tiny_npz, tmp_path, capsys, extra, message):
    assert attack_eval.main(tiny(tiny_npz, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_reproduce_checks_defense_and_pre_parameters_in_every_cell(tiny_npz, tmp_path, capsys):
    argv = ["fig4", "--dataset", f"npz:{tiny_npz}", "--out", str(tmp_path / "fig4"), "--clients", "5",
            "--byzantine", "1", "--gammas", "0", "--defenses", "median,geomed", "--defense-param", "T=2"]
    assert reproduce.main(argv) == 2   # median takes no T
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown parameter(s) ['T'] for aggregator 'median'" in err, err
    assert reproduce.main(argv[:-2] + ["--pre", "bucketing", "--pre-param", "bucketing.s=0"]) == 2
    assert "s=0 is out of range: valid >= 1" in capsys.readouterr().err
