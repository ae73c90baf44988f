"""byzbn.flower: the Flower app (flwr 1.42) — a simulation that writes attack_eval's outputs and equals byzbn's
in-process FedAvg, the strategy's statistics against byzbn.stats, BN buffers kept out of the weight
aggregator, a Byzantine node's own attack, the options and the app's pyproject.toml section.

Skipped when flwr is not importable (the flower extra: pip install -c constraints.txt ".[flower]").
"""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason='byzbn.flower needs the flower extra: pip install -c constraints.txt ".[flower]"')

from flwr.app import ArrayRecord, Context, MetricRecord, RecordDict  # noqa: E402

from byzbn import stats as bnstats  # noqa: E402
from byzbn.attacks import AttackContext, attack_stats, make_attack  # noqa: E402
from byzbn.defenses import make_defense  # noqa: E402
from byzbn.fl import seeds  # noqa: E402
from byzbn.flower import records  # noqa: E402
from byzbn.flower.client import local_round  # noqa: E402
from byzbn.flower.command import main  # noqa: E402
from byzbn.flower.experiment import (argv_from_run_config, experiment_from_run_config,  # noqa: E402
                                     run_config_defaults)
from byzbn.flower.spec import client_spec  # noqa: E402
from byzbn.flower.strategy import FlowerRun, RobustBNStrategy  # noqa: E402
from byzbn.nn import BNStats  # noqa: E402
from byzbn.runs.errors import ArgumentError  # noqa: E402
from byzbn.stats import ClientStats  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUTPUTS = ("config.json", "metrics.jsonl", "summary.json", "summary.csv", "curves.png")


def tiny_options(npz: Path) -> list[str]:
    """5 clients, 1 Byzantine, 4 local steps a round, both channels attacked; accuracy moves within 2 rounds."""
    return ["--dataset", f"npz:{npz}", "--clients", "5", "--byzantine", "1", "--width", "0.25", "--batch-size", "8",
            "--local-steps", "4", "--eval-every", "4", "--lr", "0.3", "--heterogeneity", "iid",
            "--schemes", "naive,fbn", "--target", "both", "--quiet"]


@pytest.fixture(scope="module")
def flower_run(tiny_npz, tmp_path_factory):
    """One Simulation Engine run (5 SuperNodes, 2 rounds, sign-flip on the updates and the statistics)."""
    out = tmp_path_factory.mktemp("flower") / "out"
    assert main(tiny_options(tiny_npz) + ["--rounds", "2", "--out", str(out)]) == 0
    return out


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_simulation_runs_offline_and_writes_attack_evals_outputs(flower_run):
    for name in OUTPUTS:
        assert (flower_run / name).is_file(), name
    config = json.loads((flower_run / "config.json").read_text())
    assert config["engine"] == "flower" and config["algorithm"] == "fedavg" and config["rounds"] == 2
    summary = json.loads((flower_run / "summary.json").read_text())
    runs = [(scheme, scenario) for scheme, cells in summary.items() for scenario in cells]
    assert sorted(runs) == sorted((s, sc) for s in ("naive", "fbn") for sc in ("no-attack", "attack", "attack+defense"))
    for cells in summary.values():
        for entry in cells.values():
            assert entry["status"] == "ok" and entry["steps_done"] == 8 and entry["comm_rounds"] == 2
    assert {r["step"] for r in _records(flower_run)} == {0, 4, 8}


def test_flower_and_byzbn_fedavg_give_the_same_accuracy_round_by_round(flower_run, tiny_npz, tmp_path):
    from byzbn.attack_eval import main as attack_eval

    out = tmp_path / "attack_eval"
    assert attack_eval(tiny_options(tiny_npz) + ["--algorithm", "fedavg", "--steps", "8", "--out", str(out)]) == 0
    flower, byzbn = _records(flower_run), _records(out)
    key = lambda r: (r["scheme"], r["scenario"], r["step"])  # noqa: E731
    assert sorted(map(key, flower)) == sorted(map(key, byzbn))
    accuracy = {key(r): r["test_acc"] for r in byzbn}
    for r in flower:
        assert abs(r["test_acc"] - accuracy[key(r)]) <= 0.005  # within 0.5 points
    # One RNG design in both engines (per-client generators from (seed, step, client)): identical records.
    assert sorted(flower, key=key) == sorted(byzbn, key=key)
    assert len({r["test_acc"] for r in flower}) > 2  # the accuracies moved: the comparison means something


# ---------------------------------------------------------------------------------------------------- strategy
def _experiment(npz: Path, *extra: str):
    return experiment_from_run_config({"dataset": f"npz:{npz}", "clients": 5, "byzantine": 1, "width": 0.25,
                                       "batch-size": 8, "local-steps": 2, "rounds": 2, "schemes": "fbn",
                                       "quiet": True, **dict(zip(extra[::2], extra[1::2]))})


def _strategy(experiment, scenario: str, defense=None) -> RobustBNStrategy:
    plan = experiment.plan
    return RobustBNStrategy(FlowerRun(plan.config, "fbn", scenario, plan.dataset, plan.client_indices, plan.attack,
                                      defense or plan.defense, nodes={c: 100 + c for c in range(5)}))


def _replies(strategy: RobustBNStrategy, seed: int = 0) -> dict:
    """What the 4 honest clients could reply: random updates and per-step statistics of every BN layer."""
    gen = torch.Generator().manual_seed(seed)
    names = records.bn_layer_names(strategy.model)
    widths = [layer.num_features for layer in strategy.layers]
    d = sum(p.numel() for p in strategy.model.parameters())
    contents = {}
    for c in range(strategy.h):
        steps = [BNStats([ClientStats(torch.randn(1, w, generator=gen), torch.rand(1, w, generator=gen) + 0.1,
                                      torch.tensor([16 + c])) for w in widths]) for _ in range(strategy.E)]
        contents[c] = RecordDict({
            records.UPDATE: records.flat_record(0.01 * torch.randn(d, generator=gen), strategy.model),
            records.STATS: records.stats_record(steps, names),
            records.METRICS: MetricRecord({"client": c, "train-loss": [1.0] * strategy.E}),
        })
    return contents


def test_strategy_statistics_equal_byzbn_stats_on_the_same_replies(tiny_npz):
    experiment = _experiment(tiny_npz, "attack-fields", "mean")
    strategy = _strategy(experiment, "attack+defense")
    strategy.round_clients = list(range(5))
    contents = _replies(strategy)
    before = [(layer.running_mean.clone(), layer.running_var.clone()) for layer in strategy.layers]
    strategy.apply_round(0, contents)

    # byzbn.stats directly: each client's E steps merged per layer, all layers in one row, the sign-flip
    # on the means with the no-op union variance, the two-phase NNM∘median merge (N: the 4 honest clients'
    # union), the running update.
    names = records.bn_layer_names(strategy.model)
    per_client = [records.record_stats(contents[c][records.STATS], strategy.E, names) for c in range(4)]
    per_layer = [bnstats.merge_steps([ClientStats(torch.cat([per_client[c][e][k].mean for c in range(4)]),
                                                  torch.cat([per_client[c][e][k].var for c in range(4)]),
                                                  torch.cat([per_client[c][e][k].count for c in range(4)]))
                                      for e in range(strategy.E)]) for k in range(len(names))]
    defense = make_defense("median", 1, pre="nnm")
    context = AttackContext(5, 1, defense=defense, generator=seeds.generator(0, 0, seeds.ATTACK_STREAMS["stats"]),
                            step=0, channel="stats")
    rows = attack_stats(bnstats.concat_stats(per_layer), make_attack("sign-flip"), context, fields="mean")
    merged = bnstats.split_stats(bnstats.robust_merge_stats(rows, defense, clients=4), [len(m) for m, _ in before])
    for layer, (mean0, var0), g in zip(strategy.layers, before, merged):
        momentum = 1 - (1 - layer.momentum) ** strategy.E
        mean, var = bnstats.update_running(mean0, var0, g, momentum)
        torch.testing.assert_close(layer.running_mean, mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(layer.running_var, var, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(layer.running_mean, m0) for layer, (m0, _) in zip(strategy.layers, before))


def test_bn_buffers_never_pass_through_the_weight_aggregator(tiny_npz):
    experiment = _experiment(tiny_npz, "target", "grads")
    seen = []
    median = make_defense("median", 1, pre="nnm")

    def spy(rows):
        seen.append(rows.shape)
        return median(rows)

    strategy = _strategy(experiment, "attack+defense", defense=spy)
    parameters = [name for name, _ in strategy.model.named_parameters()]
    buffers = [name for name, _ in strategy.model.named_buffers()]
    assert buffers and not set(buffers) & set(parameters)

    content = strategy.train_content(1, records.parameters_record(strategy.model))
    assert sorted(content[records.PARAMETERS].keys()) == sorted(parameters)   # weights: parameters only
    assert sorted(content[records.RUNNING].keys()) == sorted(buffers)         # statistics: apart

    strategy.round_clients = list(range(5))
    contents = _replies(strategy)
    strategy.apply_round(0, contents)
    d = sum(p.numel() for p in strategy.model.parameters())
    assert seen and all(shape == (5, d) for shape in seen)  # n rows of parameters, never a buffer
    for c in contents:
        assert sorted(contents[c][records.UPDATE].keys()) == sorted(parameters)
    leaked = ArrayRecord({**records.parameters_record(strategy.model), **records.running_record(strategy.model)})
    with pytest.raises(ValueError, match="exactly the model's parameters"):
        records.record_flat(leaked, strategy.model)


def test_sampling_draws_as_attack_eval_from_seed_and_round_and_the_byzantine_count_varies(tiny_npz):
    from byzbn.fl.participation import sample_participants

    experiment = experiment_from_run_config({"dataset": f"npz:{tiny_npz}", "clients": 10, "byzantine": 3,
                                             "batch-size": 8, "local-steps": 2, "rounds": 2, "schemes": "fbn",
                                             "fraction-train": 0.5, "quiet": True})
    plan = experiment.plan
    assert plan.config.participation == 0.5
    strategy = RobustBNStrategy(FlowerRun(plan.config, "fbn", "attack+defense", plan.dataset, plan.client_indices,
                                          plan.attack, plan.defense, nodes={c: c for c in range(10)}, fraction=0.5))
    draws = [strategy.participants(r) for r in range(8)]
    assert draws == [list(sample_participants(0, r, 10, 3, 0.5).clients) for r in range(8)]
    for clients in draws:  # ⌊0.5·10⌋ clients, honest first
        assert len(clients) == 5 and clients == sorted(clients) and clients[0] < 7
    assert len({sum(c >= 7 for c in clients) for clients in draws}) > 1   # the Byzantine count varies


# ---------------------------------------------------------------------------------------------------- client
def _client_content(experiment, strategy: RobustBNStrategy, mode: str, attack: str) -> RecordDict:
    spec = client_spec(experiment.plan.config, "fbn", "attack", strategy.rounds, 5, attack, mode)
    return RecordDict({records.PARAMETERS: records.parameters_record(strategy.model),
                       records.RUNNING: records.running_record(strategy.model),
                       records.CONFIG: spec.to_config(server_round=1)})


def _node(client: int, **node_config) -> Context:
    return Context(run_id=1, node_id=100 + client, node_config={"partition-id": client, **node_config},
                   state=RecordDict(), run_config={})


def test_a_byzantine_node_flips_the_sign_of_its_own_reply(tiny_npz):
    experiment = _experiment(tiny_npz, "byzantine-mode", "self", "target", "both")
    strategy = _strategy(experiment, "attack")
    quiet = _client_content(experiment, strategy, "self", "none")      # no attack in the run: client 4 is honest
    honest = local_round(quiet, _node(4))
    deployed = local_round(quiet, _node(4, **{"byzantine-attack": "sign-flip"}))   # a real deployment's node
    designated = local_round(_client_content(experiment, strategy, "self", "sign-flip"), _node(4))  # self mode
    model, names = strategy.model, records.bn_layer_names(strategy.model)
    for own in (deployed, designated):
        torch.testing.assert_close(records.record_flat(own[records.UPDATE], model),
                                   -records.record_flat(honest[records.UPDATE], model))
        for mine, true in zip(records.record_stats(own[records.STATS], strategy.E, names),
                              records.record_stats(honest[records.STATS], strategy.E, names)):
            for a, b in zip(mine, true):
                torch.testing.assert_close(a.mean, -b.mean)
                torch.testing.assert_close(a.var, -b.var)
                assert torch.equal(a.count, b.count)


def test_a_byzantine_node_refuses_attacks_that_need_the_other_clients(tiny_npz):
    experiment = _experiment(tiny_npz)
    strategy = _strategy(experiment, "attack")
    content = _client_content(experiment, strategy, "simulated", "sign-flip")
    with pytest.raises(ValueError, match="needs the other clients' rows"):
        local_round(content, _node(2, **{"byzantine-attack": "alie"}))
    with pytest.raises(ValueError, match="the server forges its rows"):
        local_round(content, _node(4))


# ---------------------------------------------------------------------------------------------------- options
BAD_OPTIONS = [
    (["--supernodes", "4", "--clients", "5"], "--supernodes=4 and --clients=5 differ"),
    (["--schemes", "fedtan"], "--schemes fedtan: cannot run on Flower"),
    (["--schemes", "centralized"], "--schemes centralized: cannot run on Flower"),
    (["--schemes", "nope"], "unknown scheme 'nope'"),
    (["--rounds", "0"], "--rounds=0 is out of range"),
    (["--rounds", "3", "--steps", "10"], "--steps=10 and --rounds=3 disagree"),
    (["--fraction-train", "0"], "--fraction-train=0.0 is out of range"),
    (["--byzantine-mode", "self", "--attack", "alie"], "needs the other clients' rows"),
    (["--algorithm", "dsgd"], "unrecognized arguments: --algorithm dsgd"),
    (["--clients", "4", "--byzantine", "2"], "--byzantine=2 is out of range"),
]


@pytest.mark.parametrize("extra,message", BAD_OPTIONS, ids=[m for _, m in BAD_OPTIONS])
def test_bad_options_exit_2_with_one_line_and_write_nothing(extra, message, tiny_npz, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--dataset", f"npz:{tiny_npz}", "--out", str(out), "--quiet", *extra])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and captured.err.startswith("python -m byzbn.flower: error:")
    assert message in captured.err
    assert not out.exists()


def test_the_module_entry_point_reports_a_bad_option(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "byzbn.flower", "--rounds", "-1", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "--rounds=-1 is out of range" in proc.stderr


# ---------------------------------------------------------------------------------------------------- the app
def test_pyproject_declares_the_app_with_the_commands_options():
    app = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "byzbn.flower.app:server_app",
                                 "clientapp": "byzbn.flower.app:client_app"}
    assert app["config"] == run_config_defaults()  # every option, at the command's default
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from byzbn.flower import app as flower_app

    assert isinstance(flower_app.server_app, ServerApp) and isinstance(flower_app.client_app, ClientApp)


def test_run_config_becomes_the_commands_arguments():
    argv = argv_from_run_config({"schemes": "fbn", "rounds": 3, "quiet": True, "download": False, "pre": "",
                                 "attack-param": "z=1.5; eps=2"})
    assert argv == ["--schemes", "fbn", "--rounds", "3", "--quiet", "--attack-param", "z=1.5", "--attack-param", "eps=2"]
    with pytest.raises(ArgumentError, match="run config key 'nope' is not an option"):
        argv_from_run_config({"nope": 1})
    with pytest.raises(ArgumentError, match="expected true or false"):
        argv_from_run_config({"quiet": "yes"})


# ---------------------------------------------------------------------------------------------------- baseline
def test_flowers_strategies_get_byzantine_state_dicts_attacked_like_byzbns_rows():
    from byzbn.fl.scenario import make_scenario
    from byzbn.flower.baselines import forged_states

    torch.manual_seed(0)
    global_state = {"conv.weight": torch.randn(3, 2), "bn.running_mean": torch.zeros(2), "bn.running_var": torch.ones(2),
                    "bn.num_batches_tracked": torch.tensor(5)}
    honest = [{"conv.weight": global_state["conv.weight"] + torch.randn(3, 2), "bn.running_mean": torch.randn(2),
               "bn.running_var": torch.rand(2) + 0.5, "bn.num_batches_tracked": torch.tensor(9)} for _ in range(3)]
    mean = {k: torch.stack([s[k].double() for s in honest]).mean(dim=0) for k in global_state}
    scenario = make_scenario("attack", 5, 2, make_attack("sign-flip"), make_defense("mean", 2), target="both",
                             fields="var")
    for state in forged_states(honest, global_state, scenario, "var", seed=0, r=0):
        # weights: θ − mean update (sign-flip on the updates); running_var: −mean (the attacked field);
        # running_mean (left alone by fields="var") and num_batches_tracked: the honest mean
        torch.testing.assert_close(state["conv.weight"].double(), 2 * global_state["conv.weight"].double()
                                   - mean["conv.weight"])
        torch.testing.assert_close(state["bn.running_var"].double(), -mean["bn.running_var"])
        torch.testing.assert_close(state["bn.running_mean"].double(), mean["bn.running_mean"])
        assert state["bn.num_batches_tracked"].dtype == torch.int64 and int(state["bn.num_batches_tracked"]) == 9
