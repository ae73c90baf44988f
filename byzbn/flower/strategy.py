"""byzbn's Flower strategy: FedAvg rounds with robust update aggregation and FBN's robust statistics merge.

One strategy object is one run (a scheme × scenario of attack_eval's comparison). It holds the server's
state as byzbn's in-process FedAvg does: a model built exactly as byzbn.runs.build builds it (same seed,
same initial weights), whose parameters are the global weights and whose BN buffers are the server's
running statistics. Each round r (Flower's server_round − 1):

- configure_train sends the parameters ("arrays", parameters only), the running statistics
  ("bn-running") and the client spec to the round's clients;
- aggregate_train maps each reply to its sender node's client, checks every reply against the round's
  contract (byzbn.flower.replies: a reply that fails, errs or is missing is a silent client, logged
  once per round and counted in rejected_replies), then
  * aggregates the updates Δθ_i through byzbn.fl.aggregation, the path byzbn.fl.fedavg takes: their
    mean when the scenario leaves the gradient channel alone, else the honest rows plus the attack's f
    rows (omniscient, its generator seeded by (seed, round, "grads")) through the scenario's defense,
    random rules drawing from (seed, round), stateful ones starting from the state the strategy carries;
  * hands each local step's per-client BN statistics to the scheme's own server logic
    (Scheme.server_round on the model's BN layers, with the round's statistics channel: the attack
    on the submission, the two-phase robust merge, the running-statistics update), so the merge maths
    is byzbn.stats' and nothing else. BN buffers never enter the weight aggregation: the update rows
    hold parameters only;
- evaluate (the evaluate_fn given to Strategy.start) scores the model on the server's test split in eval
  mode — the server's running statistics — at attack_eval's evaluation points.

Byzantine rows. byzantine_mode "simulated": the designated clients h … n − 1 are sent nothing and the
strategy forges their rows (under a data-poisoning attack they train and their rows are their own).
"self": every client trains and replies; the rows are aggregated as they arrive (Byzantine nodes
transform their own replies, byzbn.flower.client), the server not knowing who is Byzantine.
Sampling (fraction < 1, the run's participation) draws max(1, ⌊fraction·n⌋) clients per round as DSGD and
FedAvg sample theirs (byzbn.fl.participation, from (seed, round)): the designated Byzantine clients are
sampled like the others, so a round's Byzantine count varies, and the round's scenario has the sampled
n and f and the defense the run's --defense-f asks for (`step_scenario`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Iterable, Optional

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from byzbn.aggregation import AggregationState
from byzbn.attacks import AttackContext, poisons_data
from byzbn.fl import seeds
from byzbn.fl.aggregation import CHANNELS, aggregate_updates, stats_channel
from byzbn.fl.client import client_batch, flat_parameters, load_flat_parameters
from byzbn.fl.evaluation import evaluate_model, non_finite_state
from byzbn.fl.participation import Participants, sample_participants, step_scenario
from byzbn.fl.passes import concat_rows
from byzbn.fl.scenario import make_scenario
from byzbn.flower import records, replies
from byzbn.flower.spec import ClientSpec, client_spec
from byzbn.nn import BNStats, build_model, federated_bn_layers
from byzbn.runs import results
from byzbn.runs.build import scheme_params, scheme_steps
from byzbn.runs.run_config import RunConfig
from byzbn.schemes import make_scheme

# seeds stream of an earlier per-round client sample (now byzbn.fl.seeds.PARTICIPATION_STREAM's): kept
# reserved, so that no other draw reuses it
NODE_SAMPLE_STREAM = 1 << 33


@dataclass
class FlowerRun:
    """What one run needs: the validated configuration (attack_eval's config.json keys) and what was loaded."""

    config: RunConfig
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
        self.E, self.steps = c.local_steps, c.steps
        self.rounds = self.steps // self.E
        self.scheme = make_scheme(run.scheme, scheme_steps(run.scheme, c), **scheme_params(run.scheme, c))
        n, f = c.clients, c.byzantine
        self.h = n - f
        self.run_scenario = make_scenario(run.scenario, n, f, run.attack, run.defense, target=c.target,
                                          fields=c.attack_fields)
        self.scenario = self.run_scenario   # the round's (apply_round): the run's at full participation
        torch.manual_seed(c.seed)  # the same initial model as byzbn.runs.build.build_federation's
        self.model = build_model(c.model, run.dataset.input_shape, run.dataset.num_classes, c.width, self.scheme)
        self.layers = federated_bn_layers(self.model)
        self.poisoning = poisons_data(self.scenario.attack)
        self.byzantine_train = run.byzantine_mode == "self" or self.poisoning
        shares = run.shares or int(run.client_indices.shape[0])
        attack_name = c.attack if self.scenario.attack is not None else "none"
        self.spec: ClientSpec = client_spec(c, run.scheme, run.scenario, self.scheme.steps, shares, attack_name,
                                            run.byzantine_mode)
        self.step_count = self.comm_rounds = self.stats_clamped = self.rejected_replies = 0
        self.aggregates = {channel: AggregationState() for channel in CHANNELS}   # stateful rules' memory
        per_sample = replies.elements_per_sample(self.model, run.dataset.input_shape)
        self.layer_widths = tuple((name, layer.num_features) for name, layer in
                                  zip(records.bn_layer_names(self.model), self.layers))
        self.counts = tuple(c.batch_size * k for k in per_sample)
        self.max_counts = tuple(int(run.client_indices.shape[1]) * k for k in per_sample)
        self.records: list[dict] = []
        self.window: list[float] = []
        self.status, self.problem, self.stopped = "ok", None, False
        self.round_clients: list[int] = []

    # ------------------------------------------------------------------ who takes part
    def participants(self, r: int) -> list[int]:
        """The round's client indices, honest first (ascending), then the designated Byzantine ones."""
        if self.run.fraction >= 1.0:
            return list(range(self.config.clients))
        c = self.config
        return list(sample_participants(c.seed, r, c.clients, c.byzantine, self.run.fraction).clients)

    # ------------------------------------------------------------------ Flower's Strategy
    def summary(self) -> None:
        log(INFO, "\t├──> byzbn %s / %s: %s rounds of %s local steps, n=%s f=%s, mode %s", self.run.scheme,
            self.run.scenario, self.rounds, self.E, self.config.clients, self.config.byzantine,
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
        contents, rejected = self.by_sender(replies)
        loss = self.apply_round(server_round - 1, contents, rejected)
        return records.parameters_record(self.model), MetricRecord({"train-loss": loss})

    def by_sender(self, messages: list[Message]) -> tuple[dict, dict]:
        """({client: reply content}, {client or "node N": why rejected}): each reply is its sender node's client's.

        An error reply, two replies from one node, and a reply from a node that is no client of the
        round are rejected; the client index a reply states is not read here (check_reply compares it).
        """
        clients = {self.run.nodes[c]: c for c in self.senders()}
        contents, rejected, seen = {}, {}, set()
        for m in messages:
            node = m.metadata.src_node_id
            c = clients.get(node)
            if c is None:
                rejected[f"node {node}"] = "not a client of this round"
            elif node in seen:
                rejected[c] = "more than one reply"
                contents.pop(c, None)
            elif m.has_error():
                rejected[c] = f"error reply: {m.error.reason}"
            else:
                contents[c] = m.content
            seen.add(node)
        return contents, rejected

    def configure_evaluate(self, server_round, arrays, config, grid) -> Iterable[Message]:
        return []  # the server evaluates (evaluate)

    def aggregate_evaluate(self, server_round, replies) -> Optional[MetricRecord]:
        return None

    # ------------------------------------------------------------------ one round on the server
    def contract(self, r: int) -> replies.Contract:
        """What every reply of round r must hold (byzbn.flower.replies)."""
        recorded = tuple(e for e in range(self.E) if self.layers and self.scheme.local_bn_pass(r, e, None).record)
        return replies.Contract(self.layer_widths, self.E, recorded, self.counts, self.max_counts)

    def apply_round(self, r: int, contents: dict, rejected: Optional[dict] = None) -> float:
        """Validate, then aggregate one round's replies (client index -> reply content); the honest loss.

        A client whose reply breaks the round's contract (or is missing) counts as a silent client
        (byzbn.flower.replies); the rejections are logged once and counted in the summary.
        """
        honest = [c for c in self.round_clients if c < self.h]
        byzantine = [c for c in self.round_clients if c >= self.h]
        if self.run.fraction < 1.0:  # the round's n, f and defense
            self.scenario = step_scenario(self.run_scenario, Participants(tuple(honest), tuple(byzantine)),
                                          self.config.defense_f)
        checked, rejected = replies.check_round(contents, self.senders(), self.contract(r), self.model, rejected)
        self._report(r, rejected)
        accepted = [c for c in honest if not checked[c].silent]
        losses = [0.0] * self.E
        for c in accepted:  # byzbn.fl.fedavg's order: client by client, each step's mean over the honest clients
            for e, value in enumerate(checked[c].losses):
                losses[e] += value / len(accepted)
        loss = sum(losses) / self.E if accepted else math.nan
        self.aggregates = {channel: state.next_step() for channel, state in self.aggregates.items()}
        self_mode = self.run.byzantine_mode == "self"
        batches = None if self_mode else self._honest_batches(r, honest)
        submitting = self.round_clients if self_mode else honest   # the rows the server takes as they come
        theta0 = flat_parameters(self.model)
        with torch.no_grad():
            own = torch.stack([checked[c].update for c in byzantine]) if self.poisoning and not self_mode else None
            aggregate, self.aggregates["grads"] = aggregate_updates(
                self.scenario, self.aggregates["grads"], torch.stack([checked[c].update for c in submitting]),
                self._context(r, "grads", batches), seed=self.config.seed, own=own)
            load_flat_parameters(self.model, theta0 + aggregate)
            steps = self._round_stats(checked, honest + (byzantine if self.byzantine_train else []))
            if self.layers and steps and self.scheme.submits_stats(r):
                channel = stats_channel(self.scenario, self.aggregates["stats"], self._context(r, "stats", batches),
                                        seed=self.config.seed)
                self.stats_clamped += self.scheme.server_round(self.layers, steps, channel, r)
                self.aggregates["stats"] = channel.state
        self.comm_rounds += self.scheme.exchanges(r, len(self.layers))
        self.step_count += self.E
        self.window.append(loss)
        self.problem = (f"non-finite training loss ({loss}) at step {self.step_count}" if not math.isfinite(loss)
                        else non_finite_state(self.model))
        return loss

    def _report(self, r: int, rejected: dict) -> None:
        if rejected:
            self.rejected_replies += len(rejected)
            log(WARNING, "byzbn round %s: %s repl%s rejected (a silent client instead): %s", r + 1, len(rejected),
                "y" if len(rejected) == 1 else "ies",
                "; ".join(f"{'client ' if isinstance(k, int) else ''}{k}: {why}" for k, why in rejected.items()))

    def _round_stats(self, checked: dict, clients: list[int]) -> list[BNStats]:
        """Per local step that records statistics, the clients' per-layer ClientStats (rows in client order)."""
        steps = []
        for e in range(self.E):
            rows = [checked[c].stats[e] for c in clients]
            if rows and rows[0] is not None:
                steps.append(BNStats([concat_rows([row[k] for row in rows]) for k in range(len(self.layers))]))
        return steps

    def _honest_batches(self, r: int, honest: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The honest clients' stacked batches of the round's first local step (what adaptive attacks see)."""
        data, c = self.run.dataset, self.config
        parts = [client_batch(data.x_train, data.y_train, self.run.client_indices[i], c.batch_size,
                              c.seed, r * self.E, i) for i in honest]
        return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])

    def _context(self, r: int, channel: str, batches) -> AttackContext:
        """The attack's view of `channel` at round r; in the self mode f = 0: the n rows are as they arrived."""
        f = 0 if self.run.byzantine_mode == "self" else self.scenario.f
        return AttackContext(self.scenario.n, f, defense=self.scenario.channel_aggregator(channel),
                             generator=seeds.generator(self.config.seed, r, seeds.ATTACK_STREAMS[channel]),
                             step=r, channel=channel, model=self.model, batches=batches)

    # ------------------------------------------------------------------ evaluation and the run's record
    def evaluate(self, server_round: int, arrays: ArrayRecord) -> Optional[MetricRecord]:
        """Strategy.start's evaluate_fn: test accuracy at step 0, every eval-every steps, at the end, at divergence."""
        if self.stopped:
            return None
        if server_round > 0 and self.problem is not None:
            self.status = f"diverged: {self.problem}" + ("" if "step" in self.problem else f" after step {self.step_count}")
            self.stopped = True
        elif server_round > 0 and not (due(self.step_count - self.E, self.step_count, self.config.eval_every)
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
                "stats_clamped": self.stats_clamped, "rejected_replies": self.rejected_replies,
                "wall_s": round(wall_s, 3)}


__all__ = ["NODE_SAMPLE_STREAM", "FlowerRun", "due", "RobustBNStrategy"]
