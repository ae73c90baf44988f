"""What every federated algorithm shares: one run's state, what a step sees, evaluation and checkpoints.

FederationBase holds the global model (its BN buffers are the server's statistics), the scheme, the
scenario, the clients' data and the server's aggregation state of both channels; the algorithms
(byzbn.fl.dsgd.Federation, byzbn.fl.fedavg.FedAvgFederation) add their momentums and their own
`step`. The h = n − f honest clients hold the data (one share each); under a data-poisoning attack the
f Byzantine clients hold data too (the last f shares).

With partial participation (participation < 1, byzbn.fl.participation) every step (FedAvg: round)
first samples its participants (`take_part`): the step's scenario (`step_scenario`) has n = the sampled
count, f = the sampled Byzantine count and the defense of `step_defense`, and only the sampled clients
that hold data (`active`, honest first) draw batches and train; the clients keep per-client momentums
and those not sampled keep theirs untouched. At participation 1 every client takes part and nothing is
drawn. The centralized reference has no clients to sample: it always trains on every share.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from byzbn._checks import check_int
from byzbn.aggregation import AggregationState
from byzbn.attacks import AttackContext, poisons_data
from byzbn.fl import seeds
from byzbn.fl.aggregation import CHANNELS, aggregate_updates, honest_update, stats_channel
from byzbn.fl.client import client_batch_indices
from byzbn.fl.participation import Participants, check_defense_f, check_participation, sample_participants, \
    step_scenario
from byzbn.fl.evaluation import evaluate_model, non_finite_state
from byzbn.fl.scenario import Scenario, incompatibility
from byzbn.nn import BNStats, federated_bn_layers
from byzbn.schemes import Scheme, StatsChannel
from byzbn.stats import ClientStats


@dataclass(frozen=True)
class LastStep:
    """What the step (FedAvg: round) just taken leaves for the diagnostics (byzbn.runs.diagnostics_run).

    bn: the honest clients' per-layer statistics of each (local) step that recorded them; stats: per
    statistics-channel merge, (aggregate, the same rule's aggregate without the Byzantine rows' attack);
    grads: that pair for the gradient channel (None: not aggregated, the honest mean); channel: the
    step's statistics channel (its rule, fields and context).
    """

    step: int
    bn: tuple
    stats: tuple
    grads: Optional[tuple]
    channel: StatsChannel


class FederationBase:
    """One run's state; subclasses set `momentum` (a tensor or a list of tensors) and define `step()`."""

    momentum: object

    def __init__(self, model: nn.Module, scheme: Scheme, scenario: Scenario, x_train: torch.Tensor,
                 y_train: torch.Tensor, client_indices: torch.Tensor, *, batch_size: int, lr: float,
                 momentum: float = 0.9, seed: int = 0, participation: float = 1.0, defense_f: str = "run"):
        h = scenario.n - scenario.f
        self.poisoning = poisons_data(scenario.attack)
        clients = scenario.n if self.poisoning else h
        if client_indices.dim() != 2 or client_indices.shape[0] not in (h, scenario.n) \
                or client_indices.shape[0] < clients:
            need = f"n = {scenario.n} (the Byzantine clients hold data under {scenario.attack!r})" if self.poisoning \
                else f"h = n - f = {h} (or n = {scenario.n})"
            raise ValueError(f"client_indices must have shape [{need}, m], got {tuple(client_indices.shape)}")
        check_int("batch_size", batch_size, 1, client_indices.shape[1], why="at most the samples per client")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if scenario.name != "no-attack" and not scheme.attackable:
            raise ValueError(f"scheme {scheme.name!r} has no Byzantine clients: it runs only the no-attack scenario")
        reason = incompatibility(scheme, scenario.attack, scenario.targets)
        if reason is not None:
            raise ValueError(reason)
        self.model, self.scheme, self.scenario = model, scheme, scenario
        self.x_train, self.y_train = x_train, y_train
        self.client_indices = client_indices[:clients].cpu()
        self.h, self.clients = h, clients
        self.batch_size, self.lr, self.beta, self.seed = batch_size, float(lr), float(momentum), seed
        self.layers = federated_bn_layers(model)
        self.params = list(model.parameters())
        self.num_classes = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
        self.participation, self.defense_f = check_participation(participation), check_defense_f(defense_f)
        self.samples = self.participation < 1.0 and scheme.attackable
        # the gradient channel needs per-client rows; so do momentums of clients that skip steps
        self.per_client = scenario.attacks("grads") or self.samples
        self.participants: Optional[Participants] = None
        self.step_scenario, self.step_h, self.active = scenario, h, list(range(clients))
        self.aggregates = {channel: AggregationState() for channel in CHANNELS}
        self.step_count, self.comm_rounds, self.stats_clamped = 0, 0, 0
        # Diagnostics of clipping rules (centered clipping): the sum and count of the fractions of rows
        # their calls clipped, over the finished steps.
        self.clipped_sum, self.clipped_calls = 0.0, 0
        # Diagnostics only: keep a LastStep after every step (the honest-only references cost one more
        # aggregation per channel and step; nothing the run computes changes).
        self.keep_last_step, self.last_step = False, None
        self._grads_pair: Optional[tuple] = None

    # ---------------------------------------------------------------- what a step sees
    def take_part(self, step: int) -> None:
        """Sample the participants of `step` (FedAvg: round) and set what the step sees: `step_scenario`,
        `step_h` (its honest clients) and `active` (the client indices that hold data and train, honest
        first). Without sampling, every client and the run's scenario, nothing drawn."""
        if not self.samples:
            return
        part = sample_participants(self.seed, step, self.scenario.n, self.scenario.f, self.participation)
        self.participants, self.step_h = part, part.h
        self.step_scenario = step_scenario(self.scenario, part, self.defense_f)
        self.active = list(part.honest) + (list(part.byzantine) if self.poisoning else [])

    @property
    def active_rows(self):
        """The active clients' rows of a per-client tensor: all of them (a view) without sampling."""
        return self.participants.index()[: len(self.active)] if self.samples else slice(None)

    def client_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The stacked batches of the clients at `step`: x [clients·B, C, H, W], y [clients·B] (client-major).

        Client i draws B of its samples without replacement from its own generator (seed, step, i), so a
        client that runs anywhere else (a Flower node) draws exactly the same batch. Data-poisoning
        Byzantine clients (the last f) get their labels poisoned by the attack.
        """
        idx = torch.cat([client_batch_indices(self.client_indices[i], self.batch_size,
                                              seeds.generator(self.seed, step, seeds.BATCH_STREAM, i))
                         for i in self.active]).to(self.x_train.device)
        x, y = self.x_train[idx], self.y_train[idx]
        if self.poisoning:
            honest_rows = self.step_h * self.batch_size
            y = torch.cat([y[:honest_rows], self.scenario.attack.poison(y[honest_rows:], self.num_classes)])
        return x, y

    def attack_context(self, step: int, channel: str, batches: tuple[torch.Tensor, torch.Tensor],
                       scenario: Optional[Scenario] = None) -> AttackContext:
        """The attack's view of `channel` at `step`: n, f, the channel's rule, a seeded generator, the model and
        the honest batches (the rule is bound to the step when the channel aggregates). scenario: the step's
        (default) or another, e.g. the run's for a pass over every honest client."""
        scenario = self.step_scenario if scenario is None else scenario
        rows = (scenario.n - scenario.f) * self.batch_size
        return AttackContext(scenario.n, scenario.f, defense=scenario.channel_aggregator(channel),
                             generator=seeds.generator(self.seed, step, seeds.ATTACK_STREAMS[channel]), step=step,
                             channel=channel, model=self.model, batches=(batches[0][:rows], batches[1][:rows]))

    def start_step(self) -> None:
        """Every channel's aggregation state as a new step starts from it."""
        for state in self.aggregates.values():
            self.clipped_sum += sum(state.clipped)
            self.clipped_calls += len(state.clipped)
        self.aggregates = {channel: state.next_step() for channel, state in self.aggregates.items()}

    @property
    def clipped_fraction(self) -> Optional[float]:
        """The mean fraction of rows a clipping rule (centered clipping) clipped per call, over every call of
        the run so far; None when no rule of the run reports one."""
        total, calls = self._clipped_totals()
        return total / calls if calls else None

    def _clipped_totals(self) -> tuple[float, int]:
        states = self.aggregates.values()
        return (self.clipped_sum + sum(sum(state.clipped) for state in states),
                self.clipped_calls + sum(len(state.clipped) for state in states))

    def stats_channel(self, step: int, batches: tuple[torch.Tensor, torch.Tensor]) -> StatsChannel:
        """The step's statistics channel (the runner keeps its state after the server update)."""
        channel = stats_channel(self.step_scenario, self.aggregates["stats"], self.attack_context(step, "stats", batches),
                                seed=self.seed)
        if self.keep_last_step:
            channel.references = []
        return channel

    def aggregate_updates(self, step: int, rows: torch.Tensor, batches) -> torch.Tensor:
        """The server's aggregate [d] of the gradient channel from the active clients' rows [active, d] (honest
        first)."""
        h, scenario = self.step_h, self.step_scenario
        own = rows[h:] if self.poisoning else None
        context = self.attack_context(step, "grads", batches)
        reference = None
        if self.keep_last_step:
            reference = honest_update(scenario, self.aggregates["grads"], rows[:h], context, seed=self.seed)
        aggregate, self.aggregates["grads"] = aggregate_updates(
            scenario, self.aggregates["grads"], rows[:h], context, seed=self.seed, own=own)
        if self.keep_last_step:
            self._grads_pair = (aggregate.detach().clone(), reference)
        return aggregate

    def remember_step(self, step: int, recorded: list, channel: StatsChannel) -> None:
        """Keep the LastStep of `step` (only when keep_last_step): `recorded` is each local step's BNStats of
        every client (None where nothing was recorded); the honest rows are kept."""
        if not self.keep_last_step:
            return
        h = self.step_h
        honest = tuple(BNStats([ClientStats(s.mean[:h], s.var[:h], s.count[:h]) for s in bn.clients], bn.merged)
                       for bn in recorded if bn is not None)
        self.last_step = LastStep(step, honest, tuple(channel.references or ()), self._grads_pair, channel)
        self._grads_pair = None

    # ---------------------------------------------------------------- health, evaluation, state
    def non_finite(self) -> Optional[str]:
        """Why the server's state is broken (non-finite parameters or statistics), or None."""
        return non_finite_state(self.model)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> tuple[float, float]:
        """(accuracy, mean NLL) of the global model in eval mode (the server's running statistics)."""
        return evaluate_model(self.model, x, y, batch_size)

    def state_dict(self) -> dict:
        """Everything that evolves during a run (batches, dropout and attack noise are re-derived from the seed)."""
        return {"model": self.model.state_dict(), "momentum": self.momentum, "step": self.step_count,
                "comm_rounds": self.comm_rounds, "stats_clamped": self.stats_clamped,
                "clipped": self._clipped_totals(),
                "aggregates": {channel: state.state_dict() for channel, state in self.aggregates.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if isinstance(self.momentum, torch.Tensor):
            self.momentum.copy_(state["momentum"])
        else:
            for m, saved in zip(self.momentum, state["momentum"]):
                m.copy_(saved)
        self.step_count, self.comm_rounds = int(state["step"]), int(state["comm_rounds"])
        self.stats_clamped = int(state["stats_clamped"])
        self.clipped_sum, self.clipped_calls = state.get("clipped", (0.0, 0))
        for channel, previous in state.get("aggregates", {}).items():
            self.aggregates[channel] = AggregationState.from_state_dict(previous)


__all__ = ["LastStep", "FederationBase"]
