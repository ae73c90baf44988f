"""Robust-DSGD over a federation of n clients, f of them Byzantine, run as one batched pass (DESIGN.md §1–§2).

The h = n − f honest clients hold the data (one equal-size partition each). Every step t:

1. each honest client draws a batch of B samples from its partition (seeded by (seed, t): the same
   batches in every scheme and scenario, and nothing to save for an exact resume);
2. the scheme says what the BN layers do (`scheme.bn_pass`); the h batches are stacked into
   [h·B, C, H, W] and go through ONE forward/backward (byzbn.fl.passes), every FederatedBatchNorm
   returning per-client statistics;
3. gradient channel: clients keep momentums m_i ← β·m_i + (1 − β)·g_i and the server steps
   θ ← θ − lr·aggregate(m_1 … m_n). When the scenario attacks the gradients, the n rows are the h
   honest momentums plus the attack's f rows through the scenario's aggregator, so per-client
   gradients are needed ("vmap" on CUDA, the per-client "loop" on CPU, where it measured faster:
   benchmarks/test_bench_dsgd.py; FedTAN's coupled clients split one stacked pass). Otherwise the
   Byzantine rows are the no-op honest mean, the mean of the n rows is the mean honest momentum, and
   since momentum is linear that is the momentum of the mean gradient, which the single backward of
   the stacked batch gives: no per-client gradients at all;
4. statistics channel: the scheme's server_update with this step's StatsChannel.

The server applies the scenario's aggregator (the mean, or the defense in "attack+defense") to the
channels the attack targets; a channel the attack leaves alone carries honest rows and no-op rows
only, and the server averages it. Attacks see an AttackContext with a generator seeded from (seed,
step, channel): fresh draws every step, the same in every run with the same seed.

`step(engine="loop")` is the reference: one forward/backward per client with plain-torch statistics;
tests check that it produces the same update as the batched engine.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from byzbn._checks import check_int
from byzbn.attacks import AttackContext, byzantine_rows, poisons_data
from byzbn.fl import seeds
from byzbn.fl.aggregation import ChannelAggregation
from byzbn.fl.client import client_batch_indices
from byzbn.fl.evaluation import evaluate_model, non_finite_state
from byzbn.fl.passes import ENGINES, PER_CLIENT_GRADS, PassResult, choose_pass
from byzbn.fl.scenario import Scenario, incompatibility
from byzbn.nn import federated_bn_layers
from byzbn.schemes import Scheme, StatsChannel

step_seed = seeds.step_seed


class Federation:
    """One run's state: the global model (its BN buffers are the server's statistics) and momentums."""

    def __init__(self, model: nn.Module, scheme: Scheme, scenario: Scenario, x_train: torch.Tensor,
                 y_train: torch.Tensor, client_indices: torch.Tensor, *, batch_size: int, lr: float,
                 momentum: float = 0.9, seed: int = 0, per_client_grads: str = "auto"):
        h = scenario.n - scenario.f
        # Under a data-poisoning attack the f Byzantine clients hold data too (the last f shares).
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
        if per_client_grads not in PER_CLIENT_GRADS:
            raise ValueError(f"per_client_grads must be one of {list(PER_CLIENT_GRADS)}, got {per_client_grads!r}")
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
        self.per_client = scenario.attacks("grads")
        if per_client_grads == "auto":
            per_client_grads = "vmap" if self.params[0].is_cuda else "loop"
        self.per_client_grads = per_client_grads
        if self.per_client and scheme.couples_clients and not scheme.sync_layers:
            raise ValueError(f"scheme {scheme.name!r} couples the clients' batches: its gradients cannot be attacked per client")
        d = sum(p.numel() for p in self.params)
        self.momentum = (torch.zeros(clients, d, device=self.params[0].device, dtype=self.params[0].dtype)
                         if self.per_client else [torch.zeros_like(p) for p in self.params])
        self.aggregation = {channel: ChannelAggregation(scenario.channel_aggregator(channel))
                            for channel in ("stats", "grads")}
        self.step_count, self.comm_rounds, self.stats_clamped = 0, 0, 0

    # ---------------------------------------------------------------- what a step sees
    def client_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The stacked batches of the clients at `step`: x [clients·B, C, H, W], y [clients·B] (client-major).

        Client i draws B of its samples without replacement from its own generator (seed, step, i), so a
        client that runs anywhere else (a Flower node) draws exactly the same batch. Data-poisoning
        Byzantine clients (the last f) get their labels poisoned by the attack.
        """
        idx = torch.cat([client_batch_indices(self.client_indices[i], self.batch_size,
                                              seeds.generator(self.seed, step, seeds.BATCH_STREAM, i))
                         for i in range(self.clients)]).to(self.x_train.device)
        x, y = self.x_train[idx], self.y_train[idx]
        if self.poisoning:
            honest_rows = self.h * self.batch_size
            y = torch.cat([y[:honest_rows], self.scenario.attack.poison(y[honest_rows:], self.num_classes)])
        return x, y

    def attack_context(self, step: int, channel: str, batches: tuple[torch.Tensor, torch.Tensor],
                       own_rows: Optional[torch.Tensor] = None, defense=None) -> AttackContext:
        """The attack's view of `channel` at `step`: n, f, the server's aggregator, a seeded generator, the
        model, the honest batches, and (data poisoning) the rows the Byzantine clients computed."""
        rows = self.h * self.batch_size
        defense = self.scenario.channel_aggregator(channel) if defense is None else defense
        return AttackContext(self.scenario.n, self.scenario.f, defense=defense,
                             generator=seeds.generator(self.seed, step, seeds.ATTACK_STREAMS[channel]), step=step,
                             channel=channel, model=self.model, batches=(batches[0][:rows], batches[1][:rows]),
                             own_rows=own_rows)

    def aggregators(self, step: int, channel: str):
        """(the server's aggregator of `channel` at `step`, the defense an attack optimises against)."""
        return self.aggregation[channel].for_step(seeds.generator(self.seed, step, seeds.AGGREGATION_STREAMS[channel]))

    def stats_channel(self, step: int, batches: tuple[torch.Tensor, torch.Tensor]) -> StatsChannel:
        server, attacked = self.aggregators(step, "stats")
        return self.scenario.stats_channel(self.attack_context(step, "stats", batches, defense=attacked), server)

    # ---------------------------------------------------------------- the step
    def step(self, engine: str = "batched") -> float:
        """One Robust-DSGD step; returns the honest clients' mean training loss (a float)."""
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
        t = self.step_count
        x, y = self.client_batch(t)
        channel = self.stats_channel(t, (x, y))
        spec = self.scheme.bn_pass(t, channel)
        run_pass = choose_pass(engine, self.per_client, self.per_client_grads, self.scheme.couples_clients,
                               self.scheme.sync_layers, self.clients)
        self.model.train()
        with seeds.seeded_torch_rng(seeds.step_seed(self.seed, t, seeds.DROPOUT_STREAM), x.device):
            result = run_pass(self.model, x, y, spec, self.clients, honest=self.h)
        with torch.no_grad():
            self._gradient_step(result, t, (x, y))
            if self.layers and self.scheme.submits_stats(t):
                self.stats_clamped += self.scheme.server_update(self.layers, result.bn, channel, t)
        self.comm_rounds += self.scheme.exchanges(t, len(self.layers))
        self.step_count += 1
        return float(result.loss)

    def _gradient_step(self, result: PassResult, step: int, batches) -> None:
        if self.per_client:
            self.momentum.mul_(self.beta).add_(result.client_grads, alpha=1 - self.beta)
            honest = self.momentum[: self.h]
            server, attacked = self.aggregators(step, "grads")
            context = self.attack_context(step, "grads", batches, self.momentum[self.h:] if self.poisoning else None,
                                          defense=attacked)
            rows = torch.cat([honest, byzantine_rows(honest, self.scenario.channel_attack("grads"), context)])
            update = self._unflatten(server(rows))
        else:
            grads = result.mean_grads
            if grads is None:  # the loop engine: the mean of the honest per-client gradients
                grads = self._unflatten(result.client_grads[: self.h].mean(dim=0))
            for m, g in zip(self.momentum, grads):
                m.mul_(self.beta).add_(g, alpha=1 - self.beta)
            update = self.momentum
        for p, u in zip(self.params, update):
            p.sub_(u, alpha=self.lr)

    def _unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [u.view_as(p) for u, p in zip(flat.split([p.numel() for p in self.params]), self.params)]

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
                "aggregates": {channel: a.state_dict() for channel, a in self.aggregation.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if isinstance(self.momentum, torch.Tensor):
            self.momentum.copy_(state["momentum"])
        else:
            for m, saved in zip(self.momentum, state["momentum"]):
                m.copy_(saved)
        self.step_count, self.comm_rounds = int(state["step"]), int(state["comm_rounds"])
        self.stats_clamped = int(state["stats_clamped"])
        for channel, previous in state.get("aggregates", {}).items():  # absent in checkpoints before 2026-11-30
            self.aggregation[channel].load_state_dict(previous)


__all__ = ["ENGINES", "PER_CLIENT_GRADS", "step_seed", "Federation"]
