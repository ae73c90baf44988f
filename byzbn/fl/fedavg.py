"""FedAvg over a federation of n clients, f of them Byzantine: E local steps between communications.

`FedAvgFederation.step()` runs one communication round r, i.e. the local steps t = r·E … r·E + E − 1
(`step_count` counts local steps, so a run of S steps has S / E rounds and draws exactly the batches
DSGD would):

With partial participation (byzbn.fl.federation) the round's sampled clients only take these steps.

1. every honest client starts from the broadcast model θ; with its own copy θ_i it takes E local
   steps on its own batches (the same seeded batches as DSGD's steps t): gradient g_i, client
   momentum m_i ← β·m_i + (1 − β)·g_i, θ_i ← θ_i − lr·m_i. The momentums are kept across rounds
   (FixBN's finding) unless `reset_client_momentum`, which zeroes them at the start of every round;
2. BN layers normalize as the scheme says for each local step (`scheme.local_bn_pass`): with the
   server's running statistics of the round's start (constants during the round), with the client's
   own batch statistics, or, for FedTAN's synchronized first local step, with the global batch
   statistics of all clients (one stacked pass split by client, byzbn.fl.client_grads);
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

from byzbn._checks import check_int
from byzbn._threads import one_cpu_thread
from byzbn.fl import seeds
from byzbn.fl.client import flat_parameters, load_flat_parameters, local_steps
from byzbn.fl.federation import FederationBase
from byzbn.fl.passes import concat_rows, split_pass, vmap_client_losses
from byzbn.nn import BNStats

LOCAL_ENGINES = ("auto", "vmap", "loop")


class FedAvgFederation(FederationBase):
    """One run of FedAvg: step() is one round of `local_steps` local steps per client."""

    def __init__(self, model, scheme, scenario, x_train, y_train, client_indices, *, batch_size: int, lr: float,
                 momentum: float = 0.9, seed: int = 0, local_steps: int = 5, reset_client_momentum: bool = False,
                 local_engine: str = "auto", participation: float = 1.0, defense_f: str = "run"):
        if not scheme.attackable:
            raise ValueError(f"scheme {scheme.name!r} is the one-machine reference: it has no clients to average, "
                             f"run it with DSGD (Federation)")
        if local_engine not in LOCAL_ENGINES:
            raise ValueError(f"local_engine must be one of {list(LOCAL_ENGINES)}, got {local_engine!r}")
        super().__init__(model, scheme, scenario, x_train, y_train, client_indices, batch_size=batch_size, lr=lr,
                         momentum=momentum, seed=seed, participation=participation, defense_f=defense_f)
        self.local_steps = check_int("local_steps", local_steps, 1)
        self.reset_client_momentum = bool(reset_client_momentum)
        if local_engine == "auto":
            local_engine = "vmap" if self.params[0].is_cuda else "loop"
        self.local_engine = local_engine
        self.names = [name for name, _ in model.named_parameters()]
        self.sizes = [p.numel() for p in self.params]
        self.momentum = torch.zeros(self.clients, sum(self.sizes), device=self.params[0].device, dtype=self.params[0].dtype)
        self.round_momentum = self.momentum   # the round's active clients' rows (all of them, the same tensor, unsampled)

    def _local_update(self, theta: torch.Tensor, grads: torch.Tensor, rows=slice(None)) -> None:
        with torch.no_grad():
            self.round_momentum[rows].mul_(self.beta).add_(grads, alpha=1 - self.beta)
            theta[rows].sub_(self.round_momentum[rows], alpha=self.lr)

    # ---------------------------------------------------------------- local steps
    def _loop_steps(self, theta, batches, specs, r, first, recorded, losses) -> None:
        """Each client runs local steps first … E − 1 on the shared module, one client after another
        (byzbn.fl.client.local_steps: what a Flower node runs too)."""
        per_step = {e: [] for e in range(first, self.local_steps)}
        clients = len(self.active)
        for i, client in enumerate(self.active):
            mine = [None if e < first else (x.view(clients, -1, *x.shape[1:])[i], y.view(clients, -1)[i])
                    for e, (x, y) in enumerate(batches)]
            client_losses, client_stats = local_steps(self.model, theta[i], self.round_momentum[i], mine, specs,
                                                      seed=self.seed, round=r, client=client, lr=self.lr,
                                                      beta=self.beta, first=first)
            for e, loss, bn in zip(range(first, self.local_steps), client_losses, client_stats):
                if i < self.step_h:  # the reported loss is the honest clients'
                    losses[e] += loss / self.step_h
                per_step[e].append(bn)
        for e, clients in per_step.items():
            if clients[0] is not None:
                recorded[e] = BNStats([concat_rows([c.clients[k] for c in clients]) for k in range(len(self.layers))])

    def _vmap_steps(self, theta, batches, specs, r, first, recorded, losses) -> None:
        """All clients at once per local step: parameters stacked per client, one vmap'd forward, one backward."""
        offsets = torch.tensor([0] + self.sizes).cumsum(0).tolist()
        clients = len(self.active)
        for e in range(first, self.local_steps):
            t = r * self.local_steps + e
            x, y = batches[e]
            flat = theta.detach().clone().requires_grad_(True)
            stacked = {name: flat[:, a:b].view(clients, *p.shape)
                       for name, p, a, b in zip(self.names, self.params, offsets, offsets[1:])}
            with seeds.seeded_torch_rng(seeds.step_seed(self.seed, t, seeds.DROPOUT_STREAM), x.device):
                client_losses, bn = vmap_client_losses(self.model, stacked, x, y, specs[e], clients)
            (grads,) = torch.autograd.grad(client_losses.sum(), flat)
            self._local_update(theta, grads)
            losses[e] = float(client_losses.detach()[: self.step_h].mean())
            if bn is not None:
                recorded[e] = bn

    # ---------------------------------------------------------------- the round
    def step(self, local_engine: Optional[str] = None) -> float:
        """One FedAvg round (local_steps local steps per client) with the local engine ("vmap" or "loop";
        default: the federation's); returns the mean honest training loss."""
        engine = self.local_engine if local_engine is None else local_engine
        if engine not in LOCAL_ENGINES[1:]:
            raise ValueError(f"local_engine must be one of {list(LOCAL_ENGINES[1:])}, got {engine!r}")
        E = self.local_steps
        r = self.step_count // E
        self.start_step()
        self.take_part(r)   # partial participation: this round's clients and scenario
        batches = [self.client_batch(r * E + e) for e in range(E)]
        channel = self.stats_channel(r, batches[0])
        specs = [self.scheme.local_bn_pass(r, e, channel) for e in range(E)]
        self.model.train()
        self.round_momentum = self.momentum[self.active_rows]   # a view of every row without sampling
        if self.reset_client_momentum:
            self.round_momentum.zero_()
        theta0 = flat_parameters(self.model)
        theta = theta0.unsqueeze(0).repeat(len(self.active), 1)
        recorded: list = [None] * E
        losses = [0.0] * E
        first = 0
        with one_cpu_thread(theta.device):
            if self.scheme.sync_layers:  # FedTAN: every client holds θ, so the first local step runs stacked
                with seeds.seeded_torch_rng(seeds.step_seed(self.seed, r * E, seeds.DROPOUT_STREAM), theta.device):
                    result = split_pass(self.model, *batches[0], specs[0], self.step_h)
                self._local_update(theta, result.client_grads)
                recorded[0], losses[0], first = result.bn, float(result.loss), 1
            if first < E:
                (self._vmap_steps if engine == "vmap" else self._loop_steps)(theta, batches, specs, r, first,
                                                                             recorded, losses)
        if self.samples:  # the sampled clients' momentums back; the others' stay as they were
            self.momentum[self.active_rows] = self.round_momentum
        self.apply_round(r, theta0, theta - theta0, recorded, batches[0], channel)
        self.step_count += E
        return sum(losses) / E

    @torch.no_grad()
    def apply_round(self, r: int, theta0: torch.Tensor, deltas: torch.Tensor, recorded: list, batches,
                    channel) -> None:
        """The server's side of round r (what the Flower strategy's apply_round does with the replies):
        θ ← θ0 + the aggregate of the clients' updates deltas [clients, d], then the scheme's update of the
        statistics from each local step's recorded BNStats (None where a step records nothing) through
        the round's statistics channel, whose aggregation state the federation keeps."""
        load_flat_parameters(self.model, theta0 + self.aggregate_updates(r, deltas, batches))
        steps = [s for s in recorded if s is not None]
        if self.layers and steps and self.scheme.submits_stats(r):
            self.stats_clamped += self.scheme.server_round(self.layers, steps, channel, r)
        self.aggregates["stats"] = channel.state
        self.remember_step(r, recorded, channel)
        self.comm_rounds += self.scheme.exchanges(r, len(self.layers))


__all__ = ["LOCAL_ENGINES", "FedAvgFederation"]
