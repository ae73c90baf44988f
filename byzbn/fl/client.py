"""One client's part of a FedAvg round, wherever the client runs: its batches and its E local steps.

The in-process FedAvg loop (byzbn.fl.fedavg) and a Flower ClientApp (byzbn.flower) call the same two
functions, so a client computes bit for bit the same thing in both engines:

    x, y = client_batch(x_train, y_train, indices, batch_size, seed, step, client)
    losses, stats = local_steps(model, theta, momentum, batches, specs, seed=..., round=r, client=i, lr=..., beta=...)

`local_steps` runs local steps first … E − 1 of round r on `model` (its parameters are overwritten with
the client's flat parameters `theta` before each step, so one module serves every client in turn):
dropout seeded by (seed, t, CLIENT_DROPOUT_STREAM + client), the BN layers doing `specs[e]` for one
client, gradient g, client momentum m ← β·m + (1 − β)·g, θ ← θ − lr·m. `theta` and `momentum` are
updated in place (rows of the loop's [h, d] matrices, or a Flower node's own vectors).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from byzbn.fl import seeds
from byzbn.nn import BNPass, BNStats, run_bn_pass, federated_bn_layers


def client_batch_indices(indices: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """B of one client's sample indices, drawn without replacement."""
    return indices[torch.rand(indices.shape[0], generator=generator).argsort()[:batch_size]]


def client_batch(x_train: torch.Tensor, y_train: torch.Tensor, indices: torch.Tensor, batch_size: int, seed: int,
                 step: int, client: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Client `client`'s batch at `step`: B of its samples `indices`, drawn from its generator (seed, step, client)."""
    idx = client_batch_indices(indices, batch_size, seeds.generator(seed, step, seeds.BATCH_STREAM, client))
    idx = idx.to(x_train.device)
    return x_train[idx], y_train[idx]


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """The model's parameters as one flat vector, in model.parameters() order (a copy)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@torch.no_grad()
def load_flat_parameters(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy a flat vector (flat_parameters' layout) into the model's parameters."""
    params = list(model.parameters())
    for p, chunk in zip(params, flat.split([p.numel() for p in params])):
        p.copy_(chunk.view_as(p))


def local_steps(model: nn.Module, theta: torch.Tensor, momentum: torch.Tensor,
                batches: Sequence[Optional[tuple[torch.Tensor, torch.Tensor]]], specs: Sequence[BNPass], *, seed: int,
                round: int, client: int, lr: float, beta: float, first: int = 0) -> tuple[list[float], list]:
    """Local steps first … len(specs) − 1 of `round` for one client; updates theta and momentum [d] in place.

    batches[e] is the client's batch (x [B, C, H, W], y [B]) at local step e (entries before `first` are
    not read). Returns the losses of those steps (floats) and what the BN layers recorded at each of
    them (a one-row BNStats, or None when the pass records nothing).
    """
    E = len(specs)
    layers = federated_bn_layers(model)
    params = list(model.parameters())
    losses: list[float] = []
    recorded: list[Optional[BNStats]] = []
    for e in range(first, E):
        t = round * E + e
        x, y = batches[e]
        load_flat_parameters(model, theta)
        with seeds.seeded_torch_rng(seeds.step_seed(seed, t, seeds.CLIENT_DROPOUT_STREAM + client), x.device):
            with run_bn_pass(layers, specs[e].replace(clients=1, backend="kernel")) as record:
                loss = F.cross_entropy(model(x), y)
            grads = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
        with torch.no_grad():
            momentum.mul_(beta).add_(grads, alpha=1 - beta)
            theta.sub_(momentum, alpha=lr)
        losses.append(float(loss.detach()))
        recorded.append(record.bn_stats(1))
    return losses, recorded


__all__ = ["client_batch_indices", "client_batch", "flat_parameters", "load_flat_parameters", "local_steps"]
