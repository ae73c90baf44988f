"""byzbn's ServerApp: attack_eval's comparison (every scheme × scenario run) on one set of SuperNodes.

`run_experiment(grid, experiment)` is what the ServerApp's main does, whether it runs in-process
(`python -m byzbn.flower`, byzbn.flower.simulation) or under `flwr run .` (byzbn.flower.app, which
reads the experiment from the run config): it maps the nodes to client indices (one query message per
node), runs every run of the plan as a RobustBNStrategy through Flower's Strategy.start, and writes
attack_eval's outputs — config.json, metrics.jsonl, summary.json/.csv, curves.png — with byzbn.runs.results.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from byzbn.flower import records
from byzbn.flower.experiment import Experiment
from byzbn.flower.strategy import FlowerRun, RobustBNStrategy
from byzbn.runs import results

NODE_WAIT_S = 600.0        # how long to wait for the federation's n SuperNodes to connect
ROUND_TIMEOUT_S = 3600.0   # Strategy.start's timeout for one round's replies


@contextmanager
def flower_logs(level: int) -> Iterator[None]:
    """Flower's logger at `level` for the enclosed block (its per-round lines are INFO)."""
    logger = logging.getLogger("flwr")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def discover(grid: Grid, n: int, wait_s: float = NODE_WAIT_S) -> dict[int, int]:
    """{client index: node id} for clients 0 … n − 1, asking every connected node its partition-id."""
    deadline = time.monotonic() + wait_s
    while len(node_ids := list(grid.get_node_ids())) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(node_ids)} SuperNode(s) connected after {wait_s:.0f} s, the run needs n = {n} "
                               "(one per client): start more, or lower --clients")
        time.sleep(0.5)
    messages = [Message(content=RecordDict({records.CONFIG: ConfigRecord()}), message_type=MessageType.QUERY,
                        dst_node_id=node) for node in node_ids]
    replies = list(grid.send_and_receive(messages, timeout=wait_s))
    failed = [m for m in replies if m.has_error()]
    if failed:
        raise RuntimeError(f"node {failed[0].metadata.src_node_id} failed to say its client index: "
                           f"{failed[0].error.reason}")
    nodes: dict[int, int] = {}
    for m in replies:
        client = int(m.content[records.METRICS]["client"])
        if client in nodes:
            raise RuntimeError(f"nodes {nodes[client]} and {m.metadata.src_node_id} both have partition-id {client}")
        nodes[client] = m.metadata.src_node_id
    missing = sorted(set(range(n)) - set(nodes))
    if missing:
        raise RuntimeError(f"no node has partition-id {missing[:10]}: the run's clients are 0 … {n - 1}")
    return {c: nodes[c] for c in range(n)}


def run_experiment(grid: Grid, experiment: Experiment) -> list[dict]:
    """Train every run of the experiment on the grid's nodes and write the outputs; returns the summary."""
    plan, c = experiment.plan, experiment.plan.config
    nodes = discover(grid, c.clients)
    plan.out.mkdir(parents=True, exist_ok=True)
    results.atomic_write_text(plan.out / "config.json", c.text())
    summary, metrics = [], []
    for scheme, scenario in plan.runs:
        strategy = RobustBNStrategy(FlowerRun(
            c, scheme, scenario, plan.dataset, plan.client_indices, plan.attack, plan.defense, nodes,
            byzantine_mode=experiment.byzantine_mode, fraction=experiment.fraction_train, shares=experiment.shares))
        start = time.perf_counter()
        with flower_logs(logging.INFO if experiment.flower_logs else logging.WARNING):
            strategy.start(grid, records.parameters_record(strategy.model), num_rounds=strategy.rounds,
                           timeout=ROUND_TIMEOUT_S, train_config=ConfigRecord(), evaluate_fn=strategy.evaluate)
        entry = strategy.summary_entry(time.perf_counter() - start)
        summary.append(entry)
        metrics.extend(strategy.records)
        results.write_metrics(plan.out / "metrics.jsonl", metrics)
        results.write_summary(plan.out, summary, plan.schemes, plan.scenarios)
        if not plan.quiet:
            print(results.entry_line(scheme, scenario, entry), flush=True)
    results.plot_curves(plan.out / "curves.png", metrics, plan.schemes, plan.scenarios,
                        title=f"Flower: {results.curves_title(c)}")
    experiment.summary = summary
    return summary


def make_server_app(experiment: Experiment) -> ServerApp:
    """A ServerApp running this (already validated) experiment: the in-process command's."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context) -> None:
        run_experiment(grid, experiment)

    return app


__all__ = ["NODE_WAIT_S", "ROUND_TIMEOUT_S", "flower_logs", "discover", "run_experiment", "make_server_app"]
