"""Robust-DSGD over a federation of n clients, f of them Byzantine, run as one batched pass (DESIGN.md §1–§2).

The h = n − f honest clients hold the data (one equal-size partition each). Every step t:

1. each honest client draws a batch of B samples from its partition (seeded by (seed, t): the same
   batches in every scheme and scenario, and nothing to save for an exact resume);
2. the scheme sets the BN layers' mode; the h batches are stacked into [h·B, C, H, W] and go through
   ONE forward/backward, every FederatedBatchNorm computing per-client statistics;
3. gradient channel: clients keep momentums m_i ← β·m_i + (1 − β)·g_i and the server steps
   θ ← θ − lr·aggregate(m_1 … m_n). When the scenario attacks the gradients, the n rows are the h
   honest momentums plus the attack's f rows through the scenario's aggregator, so per-client
   gradients are needed (`per_client_grads`): "vmap" runs the forward once under torch.func.vmap
   with the parameters stacked per client (convolutions become grouped convolutions) and one
   backward of the summed client losses gives every client's gradient; "loop" runs one
   forward/backward per client. "auto" picks vmap on CUDA and the loop on CPU, where the loop
   measured faster (benchmarks/test_bench_dsgd.py); schemes that couple the clients' batches (FedTAN)
   get them from one stacked forward/backward split by client (byzbn.client_grads, `split_pass`).
   Otherwise the Byzantine rows are the no-op honest mean, the mean of the
   n rows is the mean honest momentum, and since momentum is linear that is the momentum of the mean
   gradient, which the single backward of the stacked batch gives (loss = mean over all h·B samples =
   mean of the client losses): no per-client gradients at all;
4. statistics channel: the scheme's server_update (byzbn.schemes) with the scenario's StatsChannel.

The server applies the scenario's aggregator (the mean, or the defense in "attack+defense") to the
channels the attack targets; a channel the attack leaves alone carries honest rows and no-op rows
only, and the server averages it. This isolates the effect of the attacked channel.

`step(engine="loop")` is the reference: a Python loop over the clients, each a separate
forward/backward on its own batch with plain-torch statistics. Tests check that it produces the same
update as the batched engine. (A scheme that couples the clients has no per-client loop: its
reference is the stacked pass with plain-torch statistics.)

FedAvg (E local steps between communications) is byzbn.fedavg.FedAvgFederation, a subclass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from byzbn import stats as bnstats
from byzbn._checks import check_int
from byzbn.norm import configure, federated_bn_layers
from byzbn.schemes import Scheme, StatsChannel

SCENARIOS = ("no-attack", "attack", "attack+defense")
TARGETS = {"stats": frozenset({"stats"}), "grads": frozenset({"grads"}), "both": frozenset({"stats", "grads"})}
ENGINES = ("batched", "loop")
PER_CLIENT_GRADS = ("auto", "vmap", "loop")
_BATCH_STREAM, _DROPOUT_STREAM = 0, 1


def step_seed(seed: int, step: int, stream: int) -> int:
    """A 63-bit seed for (run seed, step, stream), independent across steps and streams."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class Scenario:
    """One column of the comparison: who attacks what, and how the server aggregates.

    no-attack: the Byzantine clients submit the no-op honest mean, the server averages;
    attack: the attack on `targets`, the server averages (no defense);
    attack+defense: the attack on `targets`, the server aggregates those channels with `defense`.
    """

    name: str
    n: int
    f: int
    attack: Optional[Callable]
    aggregator: Callable[[torch.Tensor], torch.Tensor]  # for the attacked channels
    mean: Callable[[torch.Tensor], torch.Tensor]        # for the others
    targets: frozenset
    fields: str = "both"

    def attacks(self, channel: str) -> bool:
        return self.attack is not None and channel in self.targets

    def channel_aggregator(self, channel: str) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.aggregator if self.attacks(channel) else self.mean

    def stats_channel(self) -> StatsChannel:
        return StatsChannel(self.n, self.f, self.attack if self.attacks("stats") else None, self.fields,
                            self.channel_aggregator("stats"))


def make_scenario(name: str, n: int, f: int, attack: Optional[Callable], defense: Callable,
                  target: str = "stats", fields: str = "both") -> Scenario:
    """The scenario `name` (one of SCENARIOS) for n clients with the f last ones Byzantine."""
    from byzbn.defenses import make_defense

    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}: valid scenarios are {list(SCENARIOS)}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {sorted(TARGETS)}, got {target!r}")
    check_int("n", n, 2)
    check_int("f", f, 0, (n - 1) // 2, why="f < n/2")
    mean = make_defense("mean", f, pre=None)
    if name == "no-attack":
        return Scenario(name, n, f, None, mean, mean, TARGETS[target], fields)
    if attack is None:
        raise ValueError(f"scenario {name!r} needs an attack, got None")
    return Scenario(name, n, f, attack, mean if name == "attack" else defense, mean, TARGETS[target], fields)


@dataclass
class Pass:
    """What one training pass of the federation produced."""

    loss: torch.Tensor                          # scalar, mean of the client losses
    mean_grads: Optional[list[torch.Tensor]]    # gradient of the mean loss, per parameter
    client_grads: Optional[torch.Tensor]        # [k, d] flattened per-client gradients
    stats: Optional[list[bnstats.ClientStats]]  # per BN layer, the h honest rows


class Federation:
    """One run's state: the global model (its BN buffers are the server's statistics) and momentums."""

    def __init__(self, model: nn.Module, scheme: Scheme, scenario: Scenario, x_train: torch.Tensor,
                 y_train: torch.Tensor, client_indices: torch.Tensor, *, batch_size: int, lr: float,
                 momentum: float = 0.9, seed: int = 0, per_client_grads: str = "auto"):
        h = scenario.n - scenario.f
        if client_indices.dim() != 2 or client_indices.shape[0] != h:
            raise ValueError(f"client_indices must have shape [h = n - f = {h}, m], got {tuple(client_indices.shape)}")
        check_int("batch_size", batch_size, 1, client_indices.shape[1], why="at most the samples per client")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if per_client_grads not in PER_CLIENT_GRADS:
            raise ValueError(f"per_client_grads must be one of {list(PER_CLIENT_GRADS)}, got {per_client_grads!r}")
        if scenario.name != "no-attack" and not scheme.attackable:
            raise ValueError(f"scheme {scheme.name!r} has no Byzantine clients: it runs only the no-attack scenario")
        self.model, self.scheme, self.scenario = model, scheme, scenario
        self.x_train, self.y_train, self.client_indices = x_train, y_train, client_indices.cpu()
        self.h, self.batch_size, self.lr, self.beta, self.seed = h, batch_size, float(lr), float(momentum), seed
        self.layers = federated_bn_layers(model)
        self.names = [name for name, _ in model.named_parameters()]
        self.params = [p for _, p in model.named_parameters()]
        self.per_client = scenario.attacks("grads")
        if per_client_grads == "auto":
            per_client_grads = "vmap" if self.params[0].is_cuda else "loop"
        self.per_client_grads = per_client_grads
        if self.per_client and scheme.couples_clients and not scheme.sync_layers:
            raise ValueError(f"scheme {scheme.name!r} couples the clients' batches: its gradients cannot be attacked per client")
        scheme.bind(scenario.stats_channel(), self.layers)
        d = sum(p.numel() for p in self.params)
        self.momentum = (torch.zeros(h, d, device=self.params[0].device, dtype=self.params[0].dtype)
                         if self.per_client else [torch.zeros_like(p) for p in self.params])
        self.step_count, self.comm_rounds, self.stats_clamped = 0, 0, 0

    # ---------------------------------------------------------------- data
    def client_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The stacked batches of the h clients at `step`: x [h·B, C, H, W], y [h·B] (client-major)."""
        gen = torch.Generator().manual_seed(step_seed(self.seed, step, _BATCH_STREAM))
        m = self.client_indices.shape[1]
        picks = torch.rand(self.h, m, generator=gen).argsort(dim=1)[:, : self.batch_size]
        idx = self.client_indices.gather(1, picks).reshape(-1).to(self.x_train.device)
        return self.x_train[idx], self.y_train[idx]

    # ---------------------------------------------------------------- passes
    def _collect(self, sink: list, clients: int) -> list[bnstats.ClientStats]:
        out = []
        for layer, (mean, var) in zip(self.layers, sink):
            count = torch.full((clients,), layer.last_count, dtype=torch.int64, device=mean.device)
            out.append(bnstats.ClientStats(mean.reshape(clients, -1), var.reshape(clients, -1), count))
        return out

    def _stats_or_none(self, sink: list, clients: int) -> Optional[list[bnstats.ClientStats]]:
        return self._collect(sink, clients) if sink else None

    def batched_pass(self, x: torch.Tensor, y: torch.Tensor) -> Pass:
        """One forward/backward of the stacked batch: the mean gradient and per-client statistics."""
        sink: list = []
        configure(self.layers, clients=self.h, stats_backend="kernel", sink=sink)
        loss = F.cross_entropy(self.model(x), y)
        grads = torch.autograd.grad(loss, self.params)
        return Pass(loss.detach(), list(grads), None, self._stats_or_none(sink, self.h))

    def vmap_pass(self, x: torch.Tensor, y: torch.Tensor) -> Pass:
        """Per-client gradients [h, d]: a vmap'd forward with per-client copies of the parameters, one backward.

        The summed client losses depend on client i's copy only through loss_i, so the gradient of
        the sum with respect to copy i is client i's gradient.
        """
        from torch.func import functional_call, vmap

        stacked = {name: p.detach().unsqueeze(0).expand(self.h, *p.shape).clone().requires_grad_(True)
                   for name, p in zip(self.names, self.params)}
        buffers = dict(self.model.named_buffers())
        configure(self.layers, clients=1, stats_backend="torch")  # the kernel is not vmappable

        def client_loss(p, xb, yb):
            sink: list = []
            configure(self.layers, sink=sink)
            return F.cross_entropy(functional_call(self.model, (p, buffers), (xb,)), yb), sink

        losses, sink = vmap(client_loss, randomness="different")(stacked, x.view(self.h, -1, *x.shape[1:]),
                                                                  y.view(self.h, -1))
        configure(self.layers, sink=[])
        grads = torch.autograd.grad(losses.sum(), [stacked[name] for name in self.names])
        flat = torch.cat([g.reshape(self.h, -1) for g in grads], dim=1)
        return Pass(losses.detach().mean(), None, flat, self._stats_or_none(sink, self.h))

    def split_pass(self, x: torch.Tensor, y: torch.Tensor, stats_backend: str = "kernel") -> Pass:
        """Per-client gradients [h, d] of a coupled scheme: one stacked forward/backward split by client."""
        from byzbn.client_grads import client_split_grads

        sink: list = []
        configure(self.layers, clients=self.h, stats_backend=stats_backend, sink=sink)
        loss, flat = client_split_grads(self.model, self.params, lambda: F.cross_entropy(self.model(x), y), self.h)
        return Pass(loss, None, flat, self._stats_or_none(sink, self.h))

    def loop_pass(self, x: torch.Tensor, y: torch.Tensor) -> Pass:
        """Reference: each client's own forward/backward (the union as one batch if the scheme couples them)."""
        if self.scheme.couples_clients and self.per_client:
            return self.split_pass(x, y, stats_backend="torch")
        chunks = 1 if self.scheme.couples_clients else self.h
        # Layers synchronized by client (FedTAN) need the h clients' rows even in the one union chunk.
        clients = self.h if self.scheme.sync_layers else 1
        losses, grads, sinks = [], [], []
        for xi, yi in zip(x.chunk(chunks), y.chunk(chunks)):
            sink: list = []
            configure(self.layers, clients=clients, stats_backend="torch", sink=sink)
            loss = F.cross_entropy(self.model(xi), yi)
            grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, self.params)]))
            losses.append(loss.detach())
            sinks.append(sink)
        stats = None
        if sinks[0]:
            stats = self._collect([(torch.cat([s[k][0] for s in sinks]), torch.cat([s[k][1] for s in sinks]))
                                   for k in range(len(self.layers))], chunks * clients)
        return Pass(torch.stack(losses).mean(), None, torch.stack(grads), stats)

    # ---------------------------------------------------------------- the step
    def step(self, engine: str = "batched") -> float:
        """One Robust-DSGD step; returns the honest clients' mean training loss (a float)."""
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
        t = self.step_count
        x, y = self.client_batch(t)
        self.model.train()
        self.scheme.prepare(self.layers, t)
        torch.manual_seed(step_seed(self.seed, t, _DROPOUT_STREAM))
        if engine == "loop":
            result = self.loop_pass(x, y)
        elif self.per_client and self.scheme.couples_clients:
            result = self.split_pass(x, y)
        elif self.per_client:
            result = self.vmap_pass(x, y) if self.per_client_grads == "vmap" else self.loop_pass(x, y)
        else:
            result = self.batched_pass(x, y)
        with torch.no_grad():
            self._gradient_step(result)
            if self.layers and self.scheme.submits_stats(t):
                self.stats_clamped += self.scheme.server_update(self.layers, result.stats,
                                                                self.scenario.stats_channel(), t)
        self.comm_rounds += self.scheme.exchanges(t)
        self.step_count += 1
        return float(result.loss)

    def _gradient_step(self, result: Pass) -> None:
        if self.per_client:
            self.momentum.mul_(self.beta).add_(result.client_grads, alpha=1 - self.beta)
            from byzbn.attacks import byzantine_rows

            agg = self.scenario.channel_aggregator("grads")
            rows = torch.cat([self.momentum, byzantine_rows(self.momentum, self.scenario.attack,
                                                            self.scenario.n, self.scenario.f, defense=agg)])
            update = agg(rows).split([p.numel() for p in self.params])
            update = [u.view_as(p) for u, p in zip(update, self.params)]
        else:
            grads = result.mean_grads
            if grads is None:  # the loop engine: the mean of the per-client gradients
                grads = [g.view_as(p) for g, p in zip(result.client_grads.mean(dim=0).split(
                    [p.numel() for p in self.params]), self.params)]
            for m, g in zip(self.momentum, grads):
                m.mul_(self.beta).add_(g, alpha=1 - self.beta)
            update = self.momentum
        for p, u in zip(self.params, update):
            p.sub_(u, alpha=self.lr)

    # ---------------------------------------------------------------- health, evaluation, state
    def non_finite(self) -> Optional[str]:
        """Why the server's state is broken (non-finite parameters or statistics), or None."""
        if not all(bool(torch.isfinite(p).all()) for p in self.params):
            return "non-finite parameters"
        if not all(bool(torch.isfinite(b).all()) for b in self.model.buffers() if b.is_floating_point()):
            return "non-finite running statistics"
        return None

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> tuple[float, float]:
        """(accuracy, mean NLL) of the global model in eval mode (the server's running statistics).

        Predictions from non-finite outputs count as wrong; the loss is then NaN.
        """
        self.model.eval()
        correct, loss_sum = 0, 0.0
        for start in range(0, len(x), batch_size):
            out = self.model(x[start: start + batch_size])
            target = y[start: start + batch_size]
            ok = torch.isfinite(out).all(dim=1)
            correct += int(((out.argmax(dim=1) == target) & ok).sum())
            loss_sum += float(F.cross_entropy(out, target, reduction="sum"))
        self.model.train()
        return correct / len(x), loss_sum / len(x)

    def state_dict(self) -> dict:
        """Everything that evolves during a run (batches and dropout are re-derived from the seed)."""
        return {"model": self.model.state_dict(), "momentum": self.momentum, "step": self.step_count,
                "comm_rounds": self.comm_rounds, "stats_clamped": self.stats_clamped}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.per_client:
            self.momentum.copy_(state["momentum"])
        else:
            for m, saved in zip(self.momentum, state["momentum"]):
                m.copy_(saved)
        self.step_count, self.comm_rounds = int(state["step"]), int(state["comm_rounds"])
        self.stats_clamped = int(state["stats_clamped"])


__all__ = ["SCENARIOS", "TARGETS", "ENGINES", "PER_CLIENT_GRADS", "step_seed", "Scenario", "make_scenario", "Pass", "Federation"]
