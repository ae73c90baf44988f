"""The training passes of one federation step, behind one dispatch (DESIGN.md §2).

Every pass runs the clients' stacked batch x [clients·B, C, H, W] (client-major) through the global
model inside one BN pass and returns a PassResult: the mean loss of the first `honest` clients (all by
default; data-poisoning Byzantine clients come last), the gradient, and what the BN layers returned
(per-layer ClientStats of every client, FedTAN's merged statistics).

- batched: ONE forward/backward of the stacked batch, per-client statistics from the fused kernel; the
  gradient of the mean loss (the mean of the client gradients) — no per-client gradients.
- vmap: per-client gradients [h, d]: the forward under torch.func.vmap with the parameters stacked per
  client (convolutions become grouped convolutions), one backward of the summed client losses.
- split: per-client gradients of a scheme that couples the clients (FedTAN): one stacked
  forward/backward split by client (byzbn.fl.client_grads).
- loop: the reference: one forward/backward per client with plain-torch statistics (a coupled scheme's
  reference is one chunk holding the union).

`choose_pass` picks one from the engine, whether per-client gradients are needed and the scheme.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from byzbn.fl.client_grads import client_split_grads
from byzbn.nn import BNPass, BNStats, LayerOutput, run_bn_pass, federated_bn_layers
from byzbn.stats import ClientStats

ENGINES = ("batched", "loop")
PER_CLIENT_GRADS = ("auto", "vmap", "loop")


@dataclass(frozen=True)
class PassResult:
    """What one training pass of the federation produced."""

    loss: torch.Tensor                          # scalar, mean of the honest client losses
    mean_grads: Optional[list[torch.Tensor]]    # gradient of that mean loss, per parameter
    client_grads: Optional[torch.Tensor]        # [clients, d] flattened per-client gradients
    bn: Optional[BNStats]                       # what the BN layers returned (None when not recorded)


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def batched_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: BNPass, clients: int,
                 honest: Optional[int] = None) -> PassResult:
    """One forward/backward of the stacked batch: the honest mean gradient and per-client statistics.

    Clients' statistics are their own in every mode but "union"/"sync", so rows of clients beyond
    `honest` only add their statistics (the loss, and so the gradient, is the honest clients').
    """
    params = list(model.parameters())
    rows = x.shape[0] // clients * (clients if honest is None else honest)
    with run_bn_pass(federated_bn_layers(model), spec.replace(clients=clients, backend="kernel")) as record:
        loss = F.cross_entropy(model(x)[:rows], y[:rows])
    grads = torch.autograd.grad(loss, params)
    return PassResult(loss.detach(), list(grads), None, record.bn_stats(clients))


def vmap_client_losses(model: nn.Module, stacked: dict, x: torch.Tensor, y: torch.Tensor, spec: BNPass,
                       clients: int) -> tuple[torch.Tensor, Optional[BNStats]]:
    """Every client's loss on its own batch with its own parameters, under torch.func.vmap.

    stacked: {parameter name: [clients, *shape]} (the clients' copies, differentiable); x [clients·B, …]
    and y [clients·B] client-major. Returns the losses [clients] and the per-client statistics the BN
    layers recorded (None when `spec` records nothing). The kernel is not vmappable: torch statistics.
    """
    from torch.func import functional_call, vmap

    buffers = dict(model.named_buffers())
    layers = federated_bn_layers(model)
    client_spec = spec.replace(clients=1, backend="torch")
    counts: list[int] = []

    def client_loss(p, xb, yb):
        with run_bn_pass(layers, client_spec) as record:
            loss = F.cross_entropy(functional_call(model, (p, buffers), (xb,)), yb)
        outputs = record.outputs() if client_spec.record else []
        counts[:] = [o.count for o in outputs]
        return loss, [(o.mean, o.var) for o in outputs]

    losses, moments = vmap(client_loss, randomness="different")(stacked, x.view(clients, -1, *x.shape[1:]),
                                                                y.view(clients, -1))
    bn = None
    if moments:
        bn = BNStats([LayerOutput(m, v, c).client_stats(clients) for (m, v), c in zip(moments, counts)])
    return losses, bn


def vmap_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: BNPass, clients: int,
              honest: Optional[int] = None) -> PassResult:
    """Per-client gradients [h, d]: a vmap'd forward with per-client copies of the parameters, one backward.

    The summed client losses depend on client i's copy only through loss_i, so the gradient of the sum
    with respect to copy i is client i's gradient.
    """
    names = [name for name, _ in model.named_parameters()]
    stacked = {name: p.detach().unsqueeze(0).expand(clients, *p.shape).clone().requires_grad_(True)
               for name, p in model.named_parameters()}
    losses, bn = vmap_client_losses(model, stacked, x, y, spec, clients)
    grads = torch.autograd.grad(losses.sum(), [stacked[name] for name in names])
    flat = torch.cat([g.reshape(clients, -1) for g in grads], dim=1)
    return PassResult(losses.detach()[:honest].mean(), None, flat, bn)


def split_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: BNPass, clients: int,
               honest: Optional[int] = None, backend: str = "kernel") -> PassResult:
    """Per-client gradients [h, d] of a coupled scheme: one stacked forward/backward split by client.

    Every client is honest here: clients that hold poisoned data cannot join a coupled pass.
    """
    if honest not in (None, clients):
        raise ValueError("a pass that couples the clients (FedTAN) cannot hold data-poisoning clients")
    params = list(model.parameters())
    loss, flat, record = client_split_grads(model, params, lambda: F.cross_entropy(model(x), y), clients,
                                            spec.replace(clients=clients, backend=backend))
    return PassResult(loss, None, flat, record.bn_stats(clients))


def loop_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: BNPass, clients: int,
              honest: Optional[int] = None, chunks: Optional[int] = None, clients_per_chunk: int = 1) -> PassResult:
    """Reference: a forward/backward per chunk of the stacked batch (default: per client), torch statistics."""
    chunks = clients if chunks is None else chunks
    params = list(model.parameters())
    layers = federated_bn_layers(model)
    chunk_spec = spec.replace(clients=clients_per_chunk, backend="torch")
    losses, grads, per_chunk = [], [], []
    for xi, yi in zip(x.chunk(chunks), y.chunk(chunks)):
        with run_bn_pass(layers, chunk_spec) as record:
            loss = F.cross_entropy(model(xi), yi)
        grads.append(_flat(torch.autograd.grad(loss, params)))
        losses.append(loss.detach())
        per_chunk.append(record.bn_stats(clients_per_chunk))
    bn = None
    if per_chunk[0] is not None:
        bn = BNStats([concat_rows([chunk.clients[k] for chunk in per_chunk]) for k in range(len(layers))],
                     per_chunk[0].merged if chunks == 1 else None)
    honest_chunks = chunks if honest is None else honest // clients_per_chunk
    return PassResult(torch.stack(losses)[:honest_chunks].mean(), None, torch.stack(grads), bn)


def concat_rows(parts: list[ClientStats]) -> ClientStats:
    """ClientStats of several groups of clients, stacked row-wise (client order kept)."""
    return ClientStats(torch.cat([p.mean for p in parts]), torch.cat([p.var for p in parts]),
                       torch.cat([p.count for p in parts]))


def choose_pass(engine: str, per_client: bool, per_client_grads: str, couples_clients: bool, sync_layers: bool,
                clients: int) -> Callable[..., PassResult]:
    """The pass one step runs: (model, x, y, spec, clients, honest=None) -> PassResult.

    engine "loop" is the reference of engine "batched"; per_client: the gradient channel is attacked, so
    per-client gradients are needed (per_client_grads: "vmap" or "loop"; "auto" is resolved by the caller).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    if engine == "loop":
        if couples_clients and per_client:
            return partial(split_pass, backend="torch")
        if couples_clients:  # Layers synchronized by client (FedTAN) need the h clients' rows in the one chunk.
            return partial(loop_pass, chunks=1, clients_per_chunk=clients if sync_layers else 1)
        return loop_pass
    if per_client and couples_clients:
        return split_pass
    if per_client:
        return vmap_pass if per_client_grads == "vmap" else loop_pass
    return batched_pass


__all__ = ["ENGINES", "PER_CLIENT_GRADS", "PassResult", "batched_pass", "vmap_client_losses", "vmap_pass", "split_pass",
           "loop_pass",
           "concat_rows", "choose_pass"]
