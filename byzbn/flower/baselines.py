"""Flower's own robust strategies on the full state_dict: the baseline docs/FLOWER.md measures byzbn against.

    python -m byzbn.flower.baselines --flower-strategy fedmedian [python -m byzbn.flower's options]

What a Flower user gets without byzbn: the FBN paper's CNN with ordinary BatchNorm2d layers (every client
normalizes with its own batch statistics and updates its own running statistics, i.e. naive BN), trained
for --local-steps steps per round exactly as byzbn's clients train (byzbn.fl.client.local_steps: the same
batches, dropout and client momentum), replying with its whole state_dict — weights, BN running means and
variances and num_batches_tracked — which Flower's FedMedian, FedTrimmedAvg (beta = f/n) or Krum
(num_malicious_nodes = f) aggregate like weights. The server evaluates the aggregate as it is.

The Byzantine clients h … n − 1 are omniscient, as in byzbn: their replies are replaced by the attack's rows
computed from the honest replies (byzbn.attacks.byzantine_rows with the run's generator), on the model
update θ_i − θ for weights (target grads/both) and on the running statistics themselves (target
stats/both; --attack-fields picks means and/or variances); in the no-attack scenario they send the
honest mean. Runs are named flower-<strategy>; the outputs are attack_eval's.
"""
from __future__ import annotations

import sys
import time
from typing import Optional

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum

from byzbn._threads import one_cpu_thread
from byzbn.attacks import AttackContext, byzantine_rows
from byzbn.fl import seeds
from byzbn.fl.client import client_batch, flat_parameters, load_flat_parameters, local_steps
from byzbn.fl.evaluation import evaluate_model
from byzbn.fl.scenario import make_scenario
from byzbn.flower import records
from byzbn.flower.client import MOMENTUM_STATE, RUN_STATE, client_index, data_share, node_momentum, query
from byzbn.flower.spec import ClientSpec, client_spec
from byzbn.flower.server import discover
from byzbn.flower.strategy import due
from byzbn.nn import BNPass, plain_model
from byzbn.runs import results

PROG = "python -m byzbn.flower.baselines"
STRATEGIES = {"fedavg": FedAvg, "fedmedian": FedMedian, "fedtrimmedavg": FedTrimmedAvg, "krum": Krum}
SCENARIOS = ("no-attack", "attack")
STATS_KEYS = {"mean": ("running_mean",), "var": ("running_var",), "both": ("running_mean", "running_var")}


def _plain(data, width: float, model: str) -> torch.nn.Module:
    return plain_model(model, data.input_shape, data.num_classes, width)  # ordinary BN: what a Flower user trains


def baseline_round(content: RecordDict, context: Context) -> RecordDict:
    """A baseline client's round: E local steps of naive BN on its share; replies its whole state_dict."""
    spec = ClientSpec.from_config(content["config"])
    client, r = client_index(context), int(content["config"]["server-round"]) - 1
    reply_metrics = {"client": client, "num-examples": spec.batch_size * spec.local_steps}
    if client >= spec.honest:  # omniscient Byzantine: the server replaces its reply (Flower wants the same keys)
        return RecordDict({"arrays": content["arrays"], "metrics": MetricRecord({**reply_metrics, "train-loss": 0.0})})
    data, indices = data_share(spec, client)
    model = _plain(data, spec.width, spec.model)
    model.load_state_dict(content["arrays"].to_torch_state_dict())
    model.train()
    E = spec.local_steps
    batches = [client_batch(data.x_train, data.y_train, indices, spec.batch_size, spec.seed, r * E + e, client)
               for e in range(E)]
    theta = flat_parameters(model)
    momentum = node_momentum(context, spec, theta.numel())
    with one_cpu_thread(theta.device):
        losses, _ = local_steps(model, theta, momentum, batches, [BNPass()] * E, seed=spec.seed, round=r,
                                client=client, lr=spec.lr, beta=spec.momentum)
    load_flat_parameters(model, theta)  # the BN buffers were updated in place by the forwards
    context.state[MOMENTUM_STATE] = records.tensor_record(momentum)
    context.state[RUN_STATE] = ConfigRecord({"run": spec.run})
    return RecordDict({"arrays": ArrayRecord(model.state_dict()),
                       "metrics": MetricRecord({**reply_metrics, "train-loss": sum(losses) / E})})


def make_baseline_client_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return Message(baseline_round(message.content, context), reply_to=message)

    app.query()(query)  # who this node is (byzbn.flower.server.discover)
    return app


def forged_states(honest: list[dict], global_state: dict, scenario, fields: str, seed: int, r: int) -> list[dict]:
    """The f Byzantine state_dicts: per entry, the attack's rows on the honest updates θ_i − θ (weights) or
    on the honest running statistics (the fields attacked); the honest mean elsewhere (num_batches_tracked)."""
    forged: list[dict] = [{} for _ in range(scenario.f)]
    for key, value in global_state.items():
        buffer = key.rsplit(".", 1)[-1]
        column = torch.stack([s[key].reshape(-1).double() for s in honest])
        if buffer in ("running_mean", "running_var", "num_batches_tracked"):
            base, channel = torch.zeros_like(column[0]), "stats" if buffer in STATS_KEYS[fields] else None
        else:
            base, channel = value.reshape(-1).double(), "grads"
        context = AttackContext(scenario.n, scenario.f, generator=seeds.generator(seed, r, seeds.ATTACK_STREAMS[
            channel or "stats"]), step=r, channel=channel or "stats")
        rows = byzantine_rows(column - base, scenario.channel_attack(channel) if channel else None, context) + base
        for j in range(scenario.f):
            forged[j][key] = rows[j].reshape(value.shape).to(value.dtype)
    return forged


def attacked(cls):
    """Flower strategy class `cls`, its Byzantine replies replaced by the omniscient attack's rows first."""

    class Attacked(cls):
        def setup(self, scenario, global_state: dict, h: int, seed: int, fields: str):
            self.scenario, self.global_state, self.h, self.seed, self.fields = scenario, global_state, h, seed, fields

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            client = lambda m: int(m.content["metrics"]["client"])  # noqa: E731
            honest = sorted((m for m in replies if client(m) < self.h), key=client)
            byz = [m for m in replies if client(m) >= self.h]
            states = forged_states([m.content["arrays"].to_torch_state_dict() for m in honest], self.global_state,
                                   self.scenario, self.fields, self.seed, server_round - 1)
            for m, state in zip(byz, states):
                m.content["arrays"] = ArrayRecord({k: Array(v.numpy()) for k, v in state.items()})
            return super().aggregate_train(server_round, honest + byz)

    return Attacked


def run_baselines(grid: Grid, experiment, strategy_name: str) -> list[dict]:
    """Flower's `strategy_name` in the no-attack and attack scenarios; attack_eval's outputs (runs flower-<name>)."""
    plan, c = experiment.plan, experiment.plan.config
    n, f = c.clients, c.byzantine
    kwargs = {"fraction_evaluate": 0.0, "min_train_nodes": n, "min_available_nodes": n}
    if strategy_name == "krum":
        kwargs["num_malicious_nodes"] = f
    if strategy_name == "fedtrimmedavg":
        kwargs["beta"] = f / n
    label = f"flower-{strategy_name}"
    discover(grid, n)  # every node up (and its actor started) before the first run's clock starts
    plan.out.mkdir(parents=True, exist_ok=True)
    results.atomic_write_text(plan.out / "config.json", c.text())
    summary, metrics = [], []
    scenarios = [s for s in SCENARIOS if s in plan.scenarios]
    E, steps = c.local_steps, c.steps
    for scenario_name in scenarios:
        strategy = attacked(STRATEGIES[strategy_name])(**kwargs)
        scenario = make_scenario(scenario_name, n, f, plan.attack, plan.defense, target=c.target,
                                 fields=c.attack_fields)
        torch.manual_seed(c.seed)  # byzbn's initial model, with BatchNorm2d layers
        model = _plain(plan.dataset, c.width, c.model)
        strategy.setup(scenario, {k: v.clone() for k, v in model.state_dict().items()}, n - f, c.seed,
                       c.attack_fields)
        spec = client_spec(c, label, scenario_name, steps // E, int(plan.client_indices.shape[0]),
                           c.attack if scenario.attack is not None else "none", "simulated")
        run_records: list[dict] = []

        def evaluate(server_round: int, arrays: ArrayRecord) -> Optional[MetricRecord]:
            model.load_state_dict(arrays.to_torch_state_dict())
            strategy.global_state = {k: v.clone() for k, v in model.state_dict().items()}  # next round's θ
            step = server_round * E
            if server_round and not (due(step - E, step, c.eval_every) or step == steps):
                return None
            acc, loss = evaluate_model(model, plan.dataset.x_test, plan.dataset.y_test)
            run_records.append({"scheme": label, "scenario": scenario_name, "step": step, "test_acc": acc,
                                "test_loss": results.finite_or_none(loss), "train_loss": None,
                                "comm_rounds": server_round, "stats_clamped": 0})
            return MetricRecord({"test-acc": acc})

        start = time.perf_counter()
        strategy.start(grid, ArrayRecord(model.state_dict()), num_rounds=steps // E, train_config=spec.to_config(),
                       evaluate_fn=evaluate)
        accs = [r["test_acc"] for r in run_records]
        summary.append({"scheme": label, "scenario": scenario_name, "final_acc": accs[-1], "best_acc": max(accs),
                        "status": "ok", "steps_done": steps, "comm_rounds": steps // E, "stats_clamped": 0,
                        "wall_s": round(time.perf_counter() - start, 3)})
        metrics.extend(run_records)
        results.write_metrics(plan.out / "metrics.jsonl", metrics)
        results.write_summary(plan.out, summary, [label], scenarios)
        if not plan.quiet:
            print(f"{label:>20} / {scenario_name:<10} final {100 * accs[-1]:5.1f}%  ({summary[-1]['wall_s']:.1f} s)",
                  flush=True)
    results.plot_curves(plan.out / "curves.png", metrics, [label], scenarios,
                        title=f"Flower {strategy_name} on the full state_dict: {c['dataset']}, n={n}, f={f}")
    experiment.summary = summary
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    import logging

    from byzbn.cli.errors import ArgumentError, report
    from byzbn.cli.plugins import load_plugins
    from byzbn.flower.experiment import build_parser, experiment_from_args
    from byzbn.flower.server import flower_logs
    from byzbn.flower.simulation import backend_config, offline

    parser = build_parser()
    parser.prog = PROG
    parser.add_argument("--flower-strategy", default="fedmedian", choices=sorted(STRATEGIES),
                        help="Flower's strategy aggregating the whole state_dict (BN buffers included)")
    try:
        load_plugins(argv)
        args = parser.parse_args(argv)
        experiment = experiment_from_args(args)
    except ArgumentError as error:
        return report(PROG, error)
    offline()
    from flwr.simulation import run_simulation

    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_baselines(grid, experiment, args.flower_strategy)

    with flower_logs(logging.ERROR):
        run_simulation(server_app=app, client_app=make_baseline_client_app(), num_supernodes=experiment.supernodes,
                       backend_config=backend_config(experiment.client_cpus))
    label = f"flower-{args.flower_strategy}"
    print(results.format_table(experiment.summary, [label], [s["scenario"] for s in experiment.summary]), end="")
    print(f"outputs in {experiment.plan.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
