"""Robust-DSGD over a federation of n clients, f of them Byzantine, run as one batched pass (DESIGN.md §1–§2).

The h = n − f honest clients hold the data (one equal-size partition each). Every step t:

1. each honest client draws a batch of B samples from its partition (seeded by (seed, t): the same
   batches in every scheme and scenario, and nothing to save for an exact resume);
2. the scheme says what the BN layers do (`scheme.bn_pass`); the h batches are stacked into
   [h·B, C, H, W] and go through ONE forward/backward (byzbn.fl.passes), every FederatedBatchNorm
   returning per-client statistics;
3. gradient channel (with partial participation: the step's sampled clients only, see
   byzbn.fl.federation): clients keep momentums m_i ← β·m_i + (1 − β)·g_i and the server steps
   θ ← θ − lr·aggregate(m_1 … m_n). When the scenario attacks the gradients, the n rows are the h
   honest momentums plus the attack's f rows through the scenario's aggregator (byzbn.fl.aggregation,
   the attack-then-aggregate path every engine shares), so per-client
   gradients are needed ("vmap" on CUDA, the per-client "loop" on CPU, where it measured faster:
   benchmarks/test_bench_dsgd.py; FedTAN's coupled clients split one stacked pass). Otherwise the
   Byzantine rows are the no-op honest mean, the mean of the n rows is the mean honest momentum, and
   since momentum is linear that is the momentum of the mean gradient, which the single backward of
   the stacked batch gives: no per-client gradients at all;
4. statistics channel: the scheme's server_update with this step's StatsChannel, whose aggregation
   state the federation keeps (byzbn.fl.federation).

The server applies the scenario's aggregator (the mean, or the defense in "attack+defense") to the
channels the attack targets; a channel the attack leaves alone carries honest rows and no-op rows
only, and the server averages it. Attacks see an AttackContext with a generator seeded from (seed,
step, channel): fresh draws every step, the same in every run with the same seed.

`step(engine="loop")` is the reference: one forward/backward per client with plain-torch statistics;
tests check that it produces the same update as the batched engine.
"""
from __future__ import annotations

import torch
from torch import nn

from byzbn.fl import seeds
from byzbn.fl.federation import FederationBase
from byzbn.fl.passes import ENGINES, PER_CLIENT_GRADS, PassResult, choose_pass
from byzbn.fl.scenario import Scenario
from byzbn.schemes import Scheme

step_seed = seeds.step_seed


class Federation(FederationBase):
    """Robust-DSGD: the global model (its BN buffers are the server's statistics) and the clients' momentums."""

    def __init__(self, model: nn.Module, scheme: Scheme, scenario: Scenario, x_train: torch.Tensor,
                 y_train: torch.Tensor, client_indices: torch.Tensor, *, batch_size: int, lr: float,
                 momentum: float = 0.9, seed: int = 0, per_client_grads: str = "auto", participation: float = 1.0,
                 defense_f: str = "run"):
        if per_client_grads not in PER_CLIENT_GRADS:
            raise ValueError(f"per_client_grads must be one of {list(PER_CLIENT_GRADS)}, got {per_client_grads!r}")
        super().__init__(model, scheme, scenario, x_train, y_train, client_indices, batch_size=batch_size, lr=lr,
                         momentum=momentum, seed=seed, participation=participation, defense_f=defense_f)
        if per_client_grads == "auto":
            per_client_grads = "vmap" if self.params[0].is_cuda else "loop"
        self.per_client_grads = per_client_grads
        if self.per_client and scheme.couples_clients and not scheme.sync_layers:
            raise ValueError(f"scheme {scheme.name!r} couples the clients' batches: its gradients cannot be attacked per client")
        d = sum(p.numel() for p in self.params)
        self.momentum = (torch.zeros(self.clients, d, device=self.params[0].device, dtype=self.params[0].dtype)
                         if self.per_client else [torch.zeros_like(p) for p in self.params])

    def step(self, engine: str = "batched") -> float:
        """One Robust-DSGD step; returns the honest clients' mean training loss (a float)."""
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
        t = self.step_count
        self.start_step()
        self.take_part(t)   # partial participation: this step's clients and scenario
        x, y = self.client_batch(t)
        channel = self.stats_channel(t, (x, y))
        spec = self.scheme.bn_pass(t, channel)
        clients = len(self.active)
        run_pass = choose_pass(engine, self.per_client, self.per_client_grads, self.scheme.couples_clients,
                               self.scheme.sync_layers, clients)
        self.model.train()
        with seeds.seeded_torch_rng(seeds.step_seed(self.seed, t, seeds.DROPOUT_STREAM), x.device):
            result = run_pass(self.model, x, y, spec, clients, honest=self.step_h)
        with torch.no_grad():
            self._gradient_step(result, t, (x, y))
            if self.layers and self.scheme.submits_stats(t):
                self.stats_clamped += self.scheme.server_update(self.layers, result.bn, channel, t)
        self.aggregates["stats"] = channel.state   # FedTAN's in-forward merges and the server update's
        self.remember_step(t, [result.bn], channel)
        self.comm_rounds += self.scheme.exchanges(t, len(self.layers))
        self.step_count += 1
        return float(result.loss)

    def _gradient_step(self, result: PassResult, step: int, batches) -> None:
        if self.per_client:  # the active clients' momentums (every client's, in place, without sampling)
            rows = self.momentum[self.active_rows]
            rows.mul_(self.beta).add_(result.client_grads, alpha=1 - self.beta)
            if self.samples:
                self.momentum[self.active_rows] = rows
            update = self._unflatten(self.aggregate_updates(step, rows, batches))
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


__all__ = ["ENGINES", "PER_CLIENT_GRADS", "step_seed", "Federation"]
