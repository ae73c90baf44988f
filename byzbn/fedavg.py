"""FedAvg over a federation of n clients, f of them Byzantine: E local steps between communications.

`FedAvgFederation.step()` runs one communication round r, i.e. the local steps t = r·E … r·E + E − 1
(`step_count` counts local steps, so a run of S steps has S / E rounds and draws exactly the batches
DSGD would):

1. every honest client starts from the broadcast model θ; with its own copy θ_i it takes E local
   steps on its own batches (the same seeded batches as DSGD's steps t): gradient g_i, client
   momentum m_i ← β·m_i + (1 − β)·g_i, θ_i ← θ_i − lr·m_i. The momentums are kept across rounds
   (FixBN's finding) unless `reset_client_momentum`, which zeroes them at the start of every round;
2. BN layers normalize as the scheme says for each local step (`scheme.prepare_local`): with the
   server's running statistics of the round's start (constants during the round), with the client's
   own batch statistics, or, for FedTAN's synchronized first local step, with the global batch
   statistics of all clients (one stacked pass split by client, byzbn.client_grads);
3. the server aggregates the model updates Δθ_i = θ_i − θ: with the scenario's aggregator when the
   attack targets the gradient channel (`--target grads`: under FedAvg the updates), else their mean
   (the Byzantine rows being the no-op honest mean), and sets θ ← θ + aggregate;
4. the scheme updates the server's statistics from the round's recorded statistics
   (`scheme.server_round`, see byzbn.schemes) and counts the round's exchanges.

With E = 1 and the mean this is DSGD's update (the mean of the clients' momentums is the momentum of
the mean gradient). Local steps run either as a per-client Python loop ("loop": each client its E
steps on the shared module, kernel statistics) or all clients at once with the parameters stacked
per client under torch.func.vmap ("vmap": per-client grouped convolutions, torch statistics);
"auto" picks the loop on CPU, where it measured faster, and vmap on CUDA. Dropout masks differ
between the two (the loop seeds each client, vmap each step). On CPU the local steps run on one
intra-op thread: they are many small per-client ops, and on a shared 2-core machine a second OpenMP
thread made a round 20-90x slower (every op ends in a barrier waiting for a busy core).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from byzbn._checks import check_int
from byzbn._threads import one_cpu_thread
from byzbn.federation import _DROPOUT_STREAM, Federation, step_seed
from byzbn.norm import configure

LOCAL_ENGINES = ("auto", "vmap", "loop")
_CLIENT_DROPOUT_STREAM = 2  # + client index: the loop engine's dropout seeds


class FedAvgFederation(Federation):
    """A Federation whose step() is one FedAvg round of `local_steps` local steps per client."""

    def __init__(self, model, scheme, scenario, x_train, y_train, client_indices, *, batch_size: int, lr: float,
                 momentum: float = 0.9, seed: int = 0, local_steps: int = 5, reset_client_momentum: bool = False,
                 local_engine: str = "auto"):
        if not scheme.attackable:
            raise ValueError(f"scheme {scheme.name!r} is the one-machine reference: it has no clients to average, "
                             f"run it with DSGD (Federation)")
        if local_engine not in LOCAL_ENGINES:
            raise ValueError(f"local_engine must be one of {list(LOCAL_ENGINES)}, got {local_engine!r}")
        super().__init__(model, scheme, scenario, x_train, y_train, client_indices, batch_size=batch_size, lr=lr,
                         momentum=momentum, seed=seed, per_client_grads="loop")
        self.local_steps = check_int("local_steps", local_steps, 1)
        self.reset_client_momentum = bool(reset_client_momentum)
        if local_engine == "auto":
            local_engine = "vmap" if self.params[0].is_cuda else "loop"
        self.local_engine = local_engine
        self.sizes = [p.numel() for p in self.params]
        d = sum(self.sizes)
        self.momentum = torch.zeros(self.h, d, device=self.params[0].device, dtype=self.params[0].dtype)

    # ---------------------------------------------------------------- flat parameters
    def _flat_params(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    @torch.no_grad()
    def _load_flat(self, flat: torch.Tensor) -> None:
        for p, chunk in zip(self.params, flat.split(self.sizes)):
            p.copy_(chunk.view_as(p))

    def _local_update(self, theta: torch.Tensor, grads: torch.Tensor, rows=slice(None)) -> None:
        with torch.no_grad():
            self.momentum[rows].mul_(self.beta).add_(grads, alpha=1 - self.beta)
            theta[rows].sub_(self.momentum[rows], alpha=self.lr)

    # ---------------------------------------------------------------- local steps
    def _loop_steps(self, theta, batches, r, first, recorded, losses) -> None:
        """Each client runs local steps first … E − 1 on the shared module, one client after another."""
        sinks = {e: [] for e in range(first, self.local_steps)}
        for i in range(self.h):
            for e in range(first, self.local_steps):
                t = r * self.local_steps + e
                x, y = batches[e]
                xi, yi = x.view(self.h, -1, *x.shape[1:])[i], y.view(self.h, -1)[i]
                self.scheme.prepare_local(self.layers, r, e)
                sink: list = []
                configure(self.layers, clients=1, stats_backend="kernel", sink=sink)
                self._load_flat(theta[i])
                torch.manual_seed(step_seed(self.seed, t, _CLIENT_DROPOUT_STREAM + i))
                loss = F.cross_entropy(self.model(xi), yi)
                grads = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, self.params)])
                self._local_update(theta, grads, i)
                losses[e] += float(loss.detach()) / self.h
                sinks[e].append(sink)
        for e, per_client in sinks.items():
            if per_client[0]:
                recorded[e] = self._collect([(torch.cat([s[k][0] for s in per_client]),
                                              torch.cat([s[k][1] for s in per_client]))
                                             for k in range(len(self.layers))], self.h)

    def _vmap_steps(self, theta, batches, r, first, recorded, losses) -> None:
        """All clients at once per local step: parameters stacked per client, one vmap'd forward, one backward."""
        from torch.func import functional_call, vmap

        offsets = torch.tensor([0] + self.sizes).cumsum(0).tolist()
        buffers = dict(self.model.named_buffers())
        for e in range(first, self.local_steps):
            t = r * self.local_steps + e
            x, y = batches[e]
            self.scheme.prepare_local(self.layers, r, e)
            configure(self.layers, clients=1, stats_backend="torch")  # the kernel is not vmappable
            flat = theta.detach().clone().requires_grad_(True)
            stacked = {name: flat[:, a:b].view(self.h, *p.shape)
                       for name, p, a, b in zip(self.names, self.params, offsets, offsets[1:])}

            def client_loss(p, xb, yb):
                sink: list = []
                configure(self.layers, sink=sink)
                return F.cross_entropy(functional_call(self.model, (p, buffers), (xb,)), yb), sink

            torch.manual_seed(step_seed(self.seed, t, _DROPOUT_STREAM))
            client_losses, sink = vmap(client_loss, randomness="different")(
                stacked, x.view(self.h, -1, *x.shape[1:]), y.view(self.h, -1))
            configure(self.layers, sink=[])
            (grads,) = torch.autograd.grad(client_losses.sum(), flat)
            self._local_update(theta, grads)
            losses[e] = float(client_losses.detach().mean())
            recorded[e] = self._stats_or_none(sink, self.h)

    # ---------------------------------------------------------------- the round
    def step(self, engine: Optional[str] = None) -> float:
        """One FedAvg round (local_steps local steps per client); returns the mean honest training loss."""
        engine = self.local_engine if engine is None else engine
        if engine not in LOCAL_ENGINES[1:]:
            raise ValueError(f"engine must be one of {list(LOCAL_ENGINES[1:])}, got {engine!r}")
        E = self.local_steps
        r = self.step_count // E
        self.model.train()
        if self.reset_client_momentum:
            self.momentum.zero_()
        for layer in self.layers:
            layer.sync_stats = None
        theta0 = self._flat_params()
        theta = theta0.unsqueeze(0).repeat(self.h, 1)
        batches = [self.client_batch(r * E + e) for e in range(E)]
        recorded: list = [None] * E
        losses = [0.0] * E
        first = 0
        with one_cpu_thread(theta.device):
            if self.scheme.sync_layers:  # FedTAN: every client holds θ, so the first local step runs stacked
                self.scheme.prepare_local(self.layers, r, 0)
                torch.manual_seed(step_seed(self.seed, r * E, _DROPOUT_STREAM))
                result = self.split_pass(*batches[0])
                self._local_update(theta, result.client_grads)
                recorded[0], losses[0], first = result.stats, float(result.loss), 1
            if first < E:
                (self._vmap_steps if engine == "vmap" else self._loop_steps)(theta, batches, r, first, recorded,
                                                                             losses)
        with torch.no_grad():
            self._load_flat(theta0 + self._aggregate_updates(theta - theta0))
            steps_stats = [s for s in recorded if s is not None]
            if self.layers and steps_stats and self.scheme.submits_stats(r):
                self.stats_clamped += self.scheme.server_round(self.layers, steps_stats,
                                                               self.scenario.stats_channel(), r)
        self.comm_rounds += self.scheme.exchanges(r)
        self.step_count += E
        return sum(losses) / E

    def _aggregate_updates(self, deltas: torch.Tensor) -> torch.Tensor:
        if not self.per_client:
            return deltas.mean(dim=0)  # the no-op Byzantine rows leave the mean of the honest updates
        from byzbn.attacks import byzantine_rows

        agg = self.scenario.channel_aggregator("grads")
        rows = torch.cat([deltas, byzantine_rows(deltas, self.scenario.attack, self.scenario.n, self.scenario.f,
                                                 defense=agg)])
        return agg(rows)

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.momentum.copy_(state["momentum"])
        self.step_count, self.comm_rounds = int(state["step"]), int(state["comm_rounds"])
        self.stats_clamped = int(state["stats_clamped"])


__all__ = ["LOCAL_ENGINES", "FedAvgFederation"]
