"""byzbn's Flower strategy: FedAvg rounds with robust update aggregation and FBN's robust statistics merge.

One strategy object is one run (a scheme × scenario of attack_eval's comparison). It holds the server's
state as byzbn's in-process FedAvg does: a model built exactly as byzbn.runs.build builds it (same seed,
same initial weights), whose parameters are the global weights and whose BN buffers are the server's
running statistics. Each round r (Flower's server_round − 1):

- configure_train sends the parameters ("arrays", parameters only), the running statistics
  ("bn-running") and the client spec to the round's clients;
- aggregate_train orders the replies by client index and
  * aggregates the updates Δθ_i as byzbn.fl.fedavg does: their mean when the scenario leaves the
    gradient channel alone, else the honest rows plus the attack's f rows (byzbn.attacks.byzantine_rows,
    omniscient, its generator seeded by (seed, round, "grads")) through the scenario's defense;
  * hands each local step's per-client BN statistics to the scheme's own server logic
    (Scheme.server_round on the model's BN layers, with the scenario's statistics channel: the attack
    on the submission, the two-phase robust merge, the running-statistics update), so the merge maths
    is byzbn.stats' and nothing else. BN buffers never enter the weight aggregation: the update rows
    hold parameters only;
- evaluate (the evaluate_fn given to Strategy.start) scores the model on the server's test split in eval
  mode — the server's running statistics — at attack_eval's evaluation points.

Byzantine rows. byzantine_mode "simulated": the designated clients h … n − 1 are sent nothing and the
strategy forges their rows (under a data-poisoning attack they train and their rows are their own).
"self": every client trains and replies; the rows are aggregated as they arrive (Byzantine nodes
transform their own replies, byzbn.flower.client), the server not knowing who is Byzantine.
Sampling (fraction < 1) keeps the Byzantine share fixed: round(fraction·h) honest and round(fraction·f)
designated clients per round, drawn from (seed, round), so every round has the same n and f.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from logging import INFO
from typing import Iterable, Optional

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from byzbn.attacks import AttackContext, byzantine_rows, poisons_data
from byzbn.defenses import make_defense
from byzbn.fl import seeds
from byzbn.fl.client import client_batch, flat_parameters, load_flat_parameters
from byzbn.fl.evaluation import evaluate_model, non_finite_state
from byzbn.fl.passes import concat_rows
from byzbn.fl.scenario import make_scenario
from byzbn.flower import records
from byzbn.flower.spec import ClientSpec, client_spec
from byzbn.nn import BNStats, federated_bn_layers, make_cnn
from byzbn.runs import results
from byzbn.runs.build import scheme_params, scheme_steps
from byzbn.schemes import StatsChannel, make_scheme

NODE_SAMPLE_STREAM = 1 << 33   # seeds stream of the per-round client sample (far from byzbn.fl.seeds' streams)


class AsSubmitted(StatsChannel):
    """The statistics channel when the server cannot tell Byzantine rows apart: the n rows as they arrived."""

    def submit(self, rows, noop="union"):
        return rows


@dataclass
class FlowerRun:
    """What one run needs: the validated configuration (attack_eval's config.json keys) and what was loaded."""

    config: dict
    scheme: str
    scenario: str
    dataset: object                 # byzbn.data.Dataset: the test split, and (simulated mode) the batches' data
    client_indices: torch.Tensor    # the partition, for the attack context's batches in the simulated mode
    attack: object
    defense: object
    nodes: dict                     # client index -> Flower node id
    byzantine_mode: str = "simulated"
    fraction: float = 1.0
    shares: int = 0                 # partition shares the clients use (0: client_indices' rows)


def due(before: int, after: int, every: int) -> bool:
    """Whether going from step `before` to `after` passed a multiple of `every` (attack_eval's rule)."""
    return after // every > before // every


class RobustBNStrategy(Strategy):
    """FedAvg with byzbn's defenses on the updates and the scheme's robust merge of the BN statistics."""

    def __init__(self, run: FlowerRun):
        c = self.config = run.config
        self.run = run
        self.E, self.steps = int(c["local_steps"]), int(c["steps"])
        self.rounds = self.steps // self.E
        self.scheme = make_scheme(run.scheme, scheme_steps(run.scheme, c), **scheme_params(run.scheme, c))
        n, f = int(c["clients"]), int(c["byzantine"])
        self.h = n - f
        self.sample_h, self.sample_f = self._sample_sizes(n, f, run.fraction)
        defense = run.defense
        if run.fraction < 1.0:  # the round's f differs from the run's: the same rule and parameters, built for it
            pre, pre_params = [p for p in c["pre"].split(",") if p and p != "none"], c.get("pre_params") or {}
            defense = make_defense(c["defense"], self.sample_f, pre=[(p, pre_params.get(p, {})) for p in pre] or None,
                                   **(c.get("defense_params") or {}))
        self.scenario = make_scenario(run.scenario, self.sample_h + self.sample_f, self.sample_f, run.attack, defense,
                                      target=c["target"], fields=c["attack_fields"])
        torch.manual_seed(c["seed"])  # the same initial model as byzbn.runs.build.build_federation's
        self.model = make_cnn(run.dataset.input_shape, run.dataset.num_classes, c["width"], norm=self.scheme.make_norm)
        self.layers = federated_bn_layers(self.model)
        self.poisoning = poisons_data(self.scenario.attack)
        self.byzantine_train = run.byzantine_mode == "self" or self.poisoning
        shares = run.shares or int(run.client_indices.shape[0])
        attack_name = c["attack"] if self.scenario.attack is not None else "none"
        self.spec: ClientSpec = client_spec(c, run.scheme, run.scenario, self.scheme.steps, shares, attack_name,
                                            run.byzantine_mode)
        self.step_count = self.comm_rounds = self.stats_clamped = 0
        self.records: list[dict] = []
        self.window: list[float] = []
        self.status, self.problem, self.stopped = "ok", None, False
        self.round_clients: list[int] = []

    # ------------------------------------------------------------------ who takes part
    @staticmethod
    def _sample_sizes(n: int, f: int, fraction: float) -> tuple[int, int]:
        if fraction >= 1.0:
            return n - f, f
        return max(1, round(fraction * (n - f))), round(fraction * f)

    def participants(self, r: int) -> list[int]:
        """The round's client indices, honest first (ascending), then the designated Byzantine ones."""
        if self.sample_h == self.h and self.sample_f == self.config["byzantine"]:
            return list(range(int(self.config["clients"])))
        gen = seeds.generator(int(self.config["seed"]), r, NODE_SAMPLE_STREAM)
        honest = sorted(torch.randperm(self.h, generator=gen)[: self.sample_h].tolist())
        byz = sorted((self.h + torch.randperm(int(self.config["byzantine"]), generator=gen)[: self.sample_f]).tolist())
        return honest + byz

    # ------------------------------------------------------------------ Flower's Strategy
    def summary(self) -> None:
        log(INFO, "\t├──> byzbn %s / %s: %s rounds of %s local steps, n=%s f=%s, mode %s", self.run.scheme,
            self.run.scenario, self.rounds, self.E, self.config["clients"], self.config["byzantine"],
            self.run.byzantine_mode)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.stopped:
            return []
        self.round_clients = self.participants(server_round - 1)
        content = self.train_content(server_round, arrays)
        return [Message(content=content, message_type=MessageType.TRAIN, dst_node_id=self.run.nodes[c])
                for c in self.senders()]

    def senders(self) -> list[int]:
        """The round's clients that train: the honest ones, and the Byzantine ones when they hold data."""
        return [c for c in self.round_clients if c < self.h or self.byzantine_train]

    def train_content(self, server_round: int, arrays: ArrayRecord) -> RecordDict:
        """A train message's content: the parameters and, apart, the running statistics; the client spec."""
        return RecordDict({records.PARAMETERS: arrays, records.RUNNING: records.running_record(self.model),
                           records.CONFIG: self.spec.to_config(server_round)})

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        replies = list(replies)
        if self.stopped:
            return None, None
        failed = [m for m in replies if m.has_error()]
        if failed:
            raise RuntimeError(f"round {server_round}: {len(failed)} client(s) failed, e.g. node "
                               f"{failed[0].metadata.src_node_id}: {failed[0].error.reason}")
        contents = {int(m.content[records.METRICS]["client"]): m.content for m in replies}
        if sorted(contents) != sorted(self.senders()):
            raise RuntimeError(f"round {server_round}: replies from clients {sorted(contents)}, expected "
                               f"{self.senders()}")
        loss = self.apply_round(server_round - 1, contents)
        return records.parameters_record(self.model), MetricRecord({"train-loss": loss})

    def configure_evaluate(self, server_round, arrays, config, grid) -> Iterable[Message]:
        return []  # the server evaluates (evaluate)

    def aggregate_evaluate(self, server_round, replies) -> Optional[MetricRecord]:
        return None

    # ------------------------------------------------------------------ one round on the server
    def apply_round(self, r: int, contents: dict) -> float:
        """Aggregate one round's replies (client index -> reply content) into the server's state; the loss."""
        honest = [c for c in self.round_clients if c < self.h]
        byzantine = [c for c in self.round_clients if c >= self.h]
        rows = {c: records.record_flat(content[records.UPDATE], self.model) for c, content in contents.items()}
        losses = [0.0] * self.E
        for c in honest:  # byzbn.fl.fedavg's order: client by client, each step's mean over the honest clients
            for e, value in enumerate(contents[c][records.METRICS]["train-loss"]):
                losses[e] += float(value) / len(honest)
        loss = sum(losses) / self.E

        batches = None if self.run.byzantine_mode == "self" else self._honest_batches(r, honest)
        theta0 = flat_parameters(self.model)
        deltas = torch.stack([rows[c] for c in honest])
        with torch.no_grad():
            if self.run.byzantine_mode == "self":
                aggregate = self.scenario.channel_aggregator("grads")(torch.stack([rows[c] for c in self.round_clients]))
            elif not self.scenario.attacks("grads"):
                aggregate = deltas.mean(dim=0)  # the no-op Byzantine rows leave the mean of the honest updates
            else:
                own = torch.stack([rows[c] for c in byzantine]) if self.poisoning else None
                context = self._context(r, "grads", batches, own)
                aggregate = context.defense(torch.cat([deltas, byzantine_rows(deltas, self.scenario.channel_attack("grads"),
                                                                              context)]))
            load_flat_parameters(self.model, theta0 + aggregate)
            steps = self._round_stats(contents, honest + (byzantine if self.byzantine_train else []))
            if self.layers and steps and self.scheme.submits_stats(r):
                self.stats_clamped += self.scheme.server_round(self.layers, steps, self._stats_channel(r, batches), r)
        self.comm_rounds += self.scheme.exchanges(r, len(self.layers))
        self.step_count += self.E
        self.window.append(loss)
        self.problem = (f"non-finite training loss ({loss}) at step {self.step_count}" if not math.isfinite(loss)
                        else non_finite_state(self.model))
        return loss

    def _round_stats(self, contents: dict, clients: list[int]) -> list[BNStats]:
        """Per local step that recorded statistics, the clients' per-layer ClientStats (rows in client order)."""
        names = records.bn_layer_names(self.model)
        per_client = {c: records.record_stats(contents[c].get(records.STATS), self.E, names) for c in clients}
        steps = []
        for e in range(self.E):
            if any(per_client[c][e] is None for c in clients):
                continue
            steps.append(BNStats([concat_rows([per_client[c][e][k] for c in clients]) for k in range(len(names))]))
        return steps

    def _honest_batches(self, r: int, honest: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The honest clients' stacked batches of the round's first local step (what adaptive attacks see)."""
        data, c = self.run.dataset, self.config
        parts = [client_batch(data.x_train, data.y_train, self.run.client_indices[i], int(c["batch_size"]),
                              int(c["seed"]), r * self.E, i) for i in honest]
        return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])

    def _context(self, r: int, channel: str, batches, own_rows=None) -> AttackContext:
        extra = {} if own_rows is None else {"own_rows": own_rows}
        return AttackContext(self.scenario.n, self.scenario.f, defense=self.scenario.channel_aggregator(channel),
                             generator=seeds.generator(int(self.config["seed"]), r, seeds.ATTACK_STREAMS[channel]),
                             step=r, channel=channel, model=self.model, batches=batches, **extra)

    def _stats_channel(self, r: int, batches) -> StatsChannel:
        if self.run.byzantine_mode == "self":
            return AsSubmitted(None, self.scenario.fields, self.scenario.channel_aggregator("stats"),
                               self._context(r, "stats", None))
        return self.scenario.stats_channel(self._context(r, "stats", batches))

    # ------------------------------------------------------------------ evaluation and the run's record
    def evaluate(self, server_round: int, arrays: ArrayRecord) -> Optional[MetricRecord]:
        """Strategy.start's evaluate_fn: test accuracy at step 0, every eval-every steps, at the end, at divergence."""
        if self.stopped:
            return None
        if server_round > 0 and self.problem is not None:
            self.status = f"diverged: {self.problem}" + ("" if "step" in self.problem else f" after step {self.step_count}")
            self.stopped = True
        elif server_round > 0 and not (due(self.step_count - self.E, self.step_count, int(self.config["eval_every"]))
                                       or self.step_count == self.steps):
            return None
        acc, loss = evaluate_model(self.model, self.run.dataset.x_test, self.run.dataset.y_test)
        window = self.window
        self.records.append({"scheme": self.run.scheme, "scenario": self.run.scenario, "step": self.step_count,
                             "test_acc": acc, "test_loss": results.finite_or_none(loss),
                             "train_loss": results.finite_or_none(sum(window) / len(window)) if window else None,
                             "comm_rounds": self.comm_rounds, "stats_clamped": self.stats_clamped})
        self.window = []
        return MetricRecord({"test-acc": acc, "step": self.step_count})

    def summary_entry(self, wall_s: float) -> dict:
        """The run's summary.json entry, as attack_eval writes it."""
        accs = [r["test_acc"] for r in self.records]
        return {"scheme": self.run.scheme, "scenario": self.run.scenario, "final_acc": accs[-1], "best_acc": max(accs),
                "status": self.status, "steps_done": self.step_count, "comm_rounds": self.comm_rounds,
                "stats_clamped": self.stats_clamped, "wall_s": round(wall_s, 3)}


__all__ = ["NODE_SAMPLE_STREAM", "AsSubmitted", "FlowerRun", "due", "RobustBNStrategy"]
