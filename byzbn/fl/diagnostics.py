"""BN diagnostics under federation (DESIGN.md §13): pure functions over what a step already computed.

Per BN layer ℓ, honest clients i with nᵢ samples per channel, μ = Σ nᵢμᵢ / Σ nᵢ:

- between-client share  Σᵢ nᵢ‖μᵢ − μ‖² / (Σᵢ nᵢ‖μᵢ − μ‖² + Σᵢ nᵢ Σ_c σ²ᵢ,c) ∈ [0, 1]: the part of the
  union's variance that averaging the clients' variances (naive BN) loses; 0 for identical clients,
  1 when every client's batch is constant and the clients differ;
- statistics mismatch   ‖running − exact‖ / ‖exact‖ per field (mean, unbiased var), where exact are
  the statistics of a fixed probe batch of the honest union: how far what evaluation normalizes with
  is from what it should be;
- gradient deviation    ‖g_scheme − g_union‖ / ‖g_union‖ (FixBN's notion): the honest mean gradient
  the scheme computes against the one with the exact union statistics on the same batches;
- attack reach          ‖agg(honest ∪ Byzantine) − agg(honest)‖ / ‖agg(honest)‖ per channel.

Every function returns Python floats (what metrics.jsonl records); `layer_mean` averages per-layer
values. A relative distance whose reference has norm 0 is 0 when the two are equal and inf otherwise.
`--diagnostics` measures them in every run at each evaluation (byzbn.runs.diagnostics_run: the probe,
the honest-only shadow statistics and references; the gradient deviation under DSGD only).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from byzbn.stats import ClientStats


def relative_distance(value: torch.Tensor, reference: torch.Tensor) -> float:
    """‖value − reference‖ / ‖reference‖ in float64 (0 if both are equal, inf if only the reference is 0)."""
    value, reference = value.detach().double().flatten(), reference.detach().double().flatten()
    if value.shape != reference.shape:
        raise ValueError(f"value and reference must have the same number of elements, got "
                         f"{value.numel()} and {reference.numel()}")
    gap = float(torch.linalg.vector_norm(value - reference))
    scale = float(torch.linalg.vector_norm(reference))
    if scale == 0.0:
        return 0.0 if gap == 0.0 else math.inf
    return gap / scale


def between_client_share(stats: ClientStats) -> float:
    """The between-client share of one layer's honest batch statistics (rows = clients)."""
    count = stats.channel_counts().double()
    mean, var = stats.mean.detach().double(), stats.var.detach().double()
    union_mean = (count * mean).sum(0) / count.sum(0)
    between = float((count * (mean - union_mean) ** 2).sum())
    within = float((count * var).sum())
    total = between + within
    return 0.0 if total == 0.0 else between / total


def statistics_mismatch(running_mean: torch.Tensor, running_var: torch.Tensor, exact_mean: torch.Tensor,
                        exact_var: torch.Tensor) -> dict[str, float]:
    """{"mean": ..., "var": ...}: relative distance of the running statistics to the probe's exact ones."""
    return {"mean": relative_distance(running_mean, exact_mean), "var": relative_distance(running_var, exact_var)}


def gradient_deviation(scheme_grad: Sequence[torch.Tensor] | torch.Tensor,
                       union_grad: Sequence[torch.Tensor] | torch.Tensor) -> float:
    """‖g_scheme − g_union‖ / ‖g_union‖ over all parameters (lists of per-parameter tensors or flat)."""
    return relative_distance(_flat(scheme_grad), _flat(union_grad))


def attack_reach(with_byzantine: torch.Tensor, honest_only: torch.Tensor) -> float:
    """‖agg(honest ∪ Byzantine) − agg(honest)‖ / ‖agg(honest)‖: how far the Byzantine rows moved the aggregate."""
    return relative_distance(with_byzantine, honest_only)


def layer_mean(values: Sequence[float]) -> float:
    """The mean of per-layer values (nan for no layer)."""
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def _flat(grads) -> torch.Tensor:
    if isinstance(grads, torch.Tensor):
        return grads.reshape(-1)
    return torch.cat([g.reshape(-1) for g in grads])


__all__ = ["relative_distance", "between_client_share", "statistics_mismatch", "gradient_deviation", "attack_reach",
           "layer_mean"]
