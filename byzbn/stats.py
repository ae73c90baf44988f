"""Batch-norm statistics maths (DESIGN.md §3): per-client stats, exact merge, robust merge, running update.

Pure functions over tensors; device- and dtype-agnostic (fp16/bf16 inputs are accumulated in fp32).
These are the references that the Triton kernels and the runner are tested against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from byzbn._checks import FLOAT_DTYPES


@dataclass(frozen=True)
class ClientStats:
    """What the clients submit for one or more BN layers: one row per client.

    mean: [n, C] batch means; var: [n, C] biased batch variances; count: [n] elements per channel.
    """

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor

    def __post_init__(self):
        for name in ("mean", "var", "count"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        if not self.mean.is_floating_point() or self.var.dtype != self.mean.dtype:
            raise ValueError(f"mean and var must share a floating dtype; got mean {self.mean.dtype}, var {self.var.dtype}")
        if self.count.is_floating_point() or self.count.is_complex() or self.count.dtype == torch.bool:
            raise ValueError(f"count must have an integer dtype, got {self.count.dtype}")
        if self.mean.dim() != 2 or self.var.shape != self.mean.shape:
            raise ValueError(
                f"mean and var must both have shape [n, C]; got mean {tuple(self.mean.shape)}, var {tuple(self.var.shape)}")
        if self.count.shape != (self.mean.shape[0],):
            raise ValueError(f"count must have shape [n]={self.mean.shape[0]}, got {tuple(self.count.shape)}")

    @property
    def n(self) -> int:
        return self.mean.shape[0]


@dataclass(frozen=True)
class GlobalStats:
    """The server's estimate of the union's statistics for C channels.

    var is biased; var_unbiased = N/(N-1)·var is what running_var tracks; clamped counts the
    coordinates the robust merge's sanitizer raised to 0.
    """

    mean: torch.Tensor
    var: torch.Tensor
    var_unbiased: torch.Tensor
    count: int
    clamped: int = 0


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def client_stats(x: torch.Tensor) -> ClientStats:
    """Per-client, per-channel batch mean and biased variance of x with shape [n, B, C, *spatial]."""
    if not isinstance(x, torch.Tensor) or x.dim() < 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape [n, B, C, *spatial], got {got}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"x must have a floating dtype in {[str(d) for d in FLOAT_DTYPES]}, got {x.dtype}")
    n, b, c = x.shape[:3]
    if n < 1 or b < 1 or c < 1 or x.numel() == 0:
        raise ValueError(f"x must have n >= 1 clients, B >= 1 samples, C >= 1 channels and no empty dims, got {tuple(x.shape)}")
    xa = x.to(_accumulation_dtype(x.dtype))
    dims = (1,) + tuple(range(3, x.dim()))
    var, mean = torch.var_mean(xa, dim=dims, correction=0)  # two-pass inside torch, not E[x²]−E[x]²
    per_client = x.numel() // (n * c)
    count = torch.full((n,), per_client, dtype=torch.int64, device=x.device)
    return ClientStats(mean=mean, var=var, count=count)


def concat_stats(parts: Sequence[ClientStats]) -> ClientStats:
    """One submission row holding the statistics of several BN layers concatenated along channels."""
    if not parts:
        raise ValueError("parts must hold at least one ClientStats")
    return ClientStats(mean=torch.cat([p.mean for p in parts], dim=1),
                       var=torch.cat([p.var for p in parts], dim=1),
                       count=parts[0].count)


def split_stats(g: GlobalStats, sizes: Sequence[int]) -> list[GlobalStats]:
    """Undo concat_stats on the server's estimate: one GlobalStats per layer of the given widths."""
    if sum(sizes) != g.mean.shape[0]:
        raise ValueError(f"sizes must sum to the channel count {g.mean.shape[0]}, got {list(sizes)}")
    ms, vs, us = (t.split(list(sizes)) for t in (g.mean, g.var, g.var_unbiased))
    return [GlobalStats(m, v, u, g.count, 0) for m, v, u in zip(ms, vs, us)]


def _unbiased(var: torch.Tensor, total: int) -> torch.Tensor:
    if total < 2:
        raise ValueError(f"the total count N must be >= 2 to form the unbiased variance N/(N-1)·var, got N={total}")
    return var * (total / (total - 1))


def merge_stats(stats: ClientStats) -> GlobalStats:
    """The exact statistics of the union of the clients' batches (law of total variance, count-weighted)."""
    if (stats.count < 1).any():
        raise ValueError(f"count must be >= 1 for every client, got {stats.count.tolist()}")
    w = stats.count.to(stats.mean.dtype)[:, None]
    total = int(stats.count.sum())
    mean = (w * stats.mean).sum(0) / total
    var = (w * stats.var).sum(0) / total + (w * (stats.mean - mean) ** 2).sum(0) / total
    return GlobalStats(mean=mean, var=var, var_unbiased=_unbiased(var, total), count=total)


def robust_merge_stats(stats: ClientStats, defense: Callable[[torch.Tensor], torch.Tensor]) -> GlobalStats:
    """Two-phase robust merge (DESIGN.md §3): the defense aggregates the means, then v_i + (μ_i − μ̂)².

    Clients weigh equally. N is n times the median claimed count, so f < n/2 clients lying about their
    counts cannot move it; with honest equal counts it is Σ n_i. Negative variance estimates are
    clamped to 0 and counted in `clamped`.
    """
    if (stats.count < 1).any():
        raise ValueError(f"count must be >= 1 for every client, got {stats.count.tolist()}")
    mean = defense(stats.mean)
    var = defense(stats.var + (stats.mean - mean) ** 2)
    negative = var < 0
    clamped = int(negative.sum())
    var = torch.where(negative, torch.zeros_like(var), var)
    total = stats.n * int(stats.count.median())
    return GlobalStats(mean=mean, var=var, var_unbiased=_unbiased(var, total), count=total, clamped=clamped)


def update_running(running_mean: torch.Tensor, running_var: torch.Tensor, g: GlobalStats,
                   momentum: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """running ← (1 − m)·running + m·stat, as F.batch_norm does (running_var tracks the unbiased var)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if running_mean.shape != g.mean.shape or running_var.shape != g.var_unbiased.shape:
        raise ValueError(f"running_mean and running_var must have the statistics' shape {tuple(g.mean.shape)}, "
                         f"got {tuple(running_mean.shape)} and {tuple(running_var.shape)}")
    new_mean = (1 - momentum) * running_mean + momentum * g.mean.to(running_mean.dtype)
    new_var = (1 - momentum) * running_var + momentum * g.var_unbiased.to(running_var.dtype)
    return new_mean, new_var
