"""Batch-norm statistics maths (DESIGN.md §3): the one statistics core of byzbn.

- merge_moments: THE law-of-total-variance merge of groups (count, mean, biased var); merge_stats,
  merge_steps and the kernels' tile merges all call it.
- unbiased: N/(N−1)·var, the variance running_var tracks.
- merge_stats (exact, count-weighted) and robust_merge_stats (two phases, a defense replaces the
  averages; differentiable) turn the clients' submissions into the server's GlobalStats.
- client_stats, merge_steps, concat_stats / split_stats, update_running.

Pure functions over tensors; device- and dtype-agnostic: moments accumulate in fp32 for fp16/bf16/fp32
and in fp64 for fp64, counts in int64 (weights formed in float64), whatever the input dtype.
These are the references that the Triton kernels and the runner are tested against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from byzbn._checks import FLOAT_DTYPES


def _is_int_tensor(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


@dataclass(frozen=True)
class ClientStats:
    """What the clients submit for one or more BN layers: one row per client.

    mean: [n, C] batch means; var: [n, C] biased batch variances; count: integer [n] elements per
    channel (the same for every channel) or [n, C] (per channel: layers of different sizes concatenated).
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
        if not _is_int_tensor(self.count):
            raise ValueError(f"count must have an integer dtype, got {self.count.dtype}")
        if self.mean.dim() != 2 or self.var.shape != self.mean.shape:
            raise ValueError(
                f"mean and var must both have shape [n, C]; got mean {tuple(self.mean.shape)}, var {tuple(self.var.shape)}")
        n, c = self.mean.shape
        if self.count.shape not in ((n,), (n, c)):
            raise ValueError(f"count must have shape [n]={n} or [n, C]={[n, c]}, got {tuple(self.count.shape)}")

    @property
    def n(self) -> int:
        return self.mean.shape[0]

    def channel_counts(self) -> torch.Tensor:
        """count as an int64 [n, C] tensor (a broadcast view when count is [n])."""
        count = self.count.to(torch.int64)
        return count if count.dim() == 2 else count[:, None].expand(self.mean.shape)


@dataclass(frozen=True)
class GlobalStats:
    """The server's estimate of the union's statistics for C channels.

    var is biased; var_unbiased = N/(N−1)·var is what running_var tracks; count is N, an int64 tensor of
    shape [] (one N for every channel) or [C] (an int is accepted and stored as a tensor); clamped
    counts the coordinates the robust merge's sanitizer raised to 0.
    """

    mean: torch.Tensor
    var: torch.Tensor
    var_unbiased: torch.Tensor
    count: torch.Tensor
    clamped: int = 0

    def __post_init__(self):
        for name in ("mean", "var", "var_unbiased"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        if self.mean.dim() != 1 or self.var.shape != self.mean.shape or self.var_unbiased.shape != self.mean.shape:
            raise ValueError(f"mean, var and var_unbiased must all have shape [C]; got {tuple(self.mean.shape)}, "
                             f"{tuple(self.var.shape)} and {tuple(self.var_unbiased.shape)}")
        count = self.count
        if isinstance(count, int) and not isinstance(count, bool):
            count = torch.tensor(count, dtype=torch.int64, device=self.mean.device)
        if not isinstance(count, torch.Tensor) or not _is_int_tensor(count):
            got = count.dtype if isinstance(count, torch.Tensor) else type(count).__name__
            raise ValueError(f"count must be an int or an integer tensor, got {got}")
        if count.shape not in ((), self.mean.shape):
            raise ValueError(f"count must have shape [] or [C]={list(self.mean.shape)}, got {tuple(count.shape)}")
        object.__setattr__(self, "count", count.to(torch.int64))
        if isinstance(self.clamped, bool) or not isinstance(self.clamped, int) or self.clamped < 0:
            raise ValueError(f"clamped must be an int >= 0, got {self.clamped!r}")


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def merge_moments(count, mean: torch.Tensor, var: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, biased var) of the union of groups along `dim`, from each group's count, mean and biased var.

        μ = Σ n_i μ_i / N,   σ²_b = Σ n_i (v_i + (μ_i − μ)²) / N        (law of total variance)

    count: integer (or floating) tensor, or a number, broadcastable to mean; counts are summed in int64
    (float64 for floating counts) and the weights n_i / N formed in float64, so counts beyond the
    input dtype's range (fp16 stops at 65504) are exact. Two passes: the deviations use the merged μ,
    never E[x²] − E[x]². Results in the accumulation dtype of mean (fp32 for fp16/bf16/fp32, fp64 for
    fp64); differentiable in mean and var. Counts must be >= 0 with a positive sum (not checked here:
    the public merges check their ClientStats).
    """
    acc = _accumulation_dtype(mean.dtype)
    count = torch.as_tensor(count, device=mean.device)
    count = count.double() if count.is_floating_point() else count.to(torch.int64)
    count = count.expand(torch.broadcast_shapes(count.shape, mean.shape))
    total = count.sum(dim, keepdim=True)
    weight = (count.double() / total.double()).to(acc)
    m, v = mean.to(acc), var.to(acc)
    merged = (weight * m).sum(dim, keepdim=True)
    merged_var = (weight * (v + (m - merged) ** 2)).sum(dim)
    return merged.squeeze(dim), merged_var


def unbiased(var: torch.Tensor, total) -> torch.Tensor:
    """N/(N−1)·var: the unbiased variance of a union of N elements from its biased variance.

    total: an int or an integer tensor broadcastable to var (per-channel N); every N must be >= 2.
    """
    if isinstance(total, torch.Tensor):
        if (total < 2).any():
            raise ValueError(f"the total count N must be >= 2 to form the unbiased variance N/(N-1)·var, "
                             f"got N={total.tolist()}")
        n = total.double()
        return var * (n / (n - 1)).to(device=var.device, dtype=var.dtype)
    if isinstance(total, bool) or not isinstance(total, int):
        raise ValueError(f"total must be an int or an integer tensor, got {type(total).__name__}")
    if total < 2:
        raise ValueError(f"the total count N must be >= 2 to form the unbiased variance N/(N-1)·var, got N={total}")
    return var * (total / (total - 1))


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


def _check_counts(name: str, stats: ClientStats) -> None:
    if (stats.count < 1).any():
        raise ValueError(f"{name} must be >= 1 for every client, got {stats.count.tolist()}")


def merge_steps(steps: Sequence[ClientStats]) -> ClientStats:
    """Per client, the exact statistics of its batches over several local steps (one ClientStats per step,
    the same n clients and C channels in each): row i merges row i of every step."""
    if not steps:
        raise ValueError("steps must hold at least one ClientStats")
    for s in steps:
        if not isinstance(s, ClientStats):
            raise ValueError(f"steps must hold byzbn.stats.ClientStats, got {type(s).__name__}")
        _check_counts("count", s)
    shape = steps[0].mean.shape
    if any(s.mean.shape != shape for s in steps):
        raise ValueError(f"steps must all have the shape [n, C] of the first, {list(shape)}; "
                         f"got {[list(s.mean.shape) for s in steps]}")
    acc = _accumulation_dtype(steps[0].mean.dtype)
    if len(steps) == 1:
        s = steps[0]
        return ClientStats(s.mean.to(acc), s.var.to(acc), s.count)
    if all(s.count.dim() == 1 for s in steps):
        counts = torch.stack([s.count.to(torch.int64) for s in steps])       # [E, n]
        mean, var = merge_moments(counts[:, :, None], torch.stack([s.mean for s in steps]),
                                  torch.stack([s.var for s in steps]), dim=0)
    else:
        counts = torch.stack([s.channel_counts() for s in steps])            # [E, n, C]
        mean, var = merge_moments(counts, torch.stack([s.mean for s in steps]),
                                  torch.stack([s.var for s in steps]), dim=0)
    return ClientStats(mean, var, counts.sum(dim=0))


def concat_stats(parts: Sequence[ClientStats]) -> ClientStats:
    """One submission row holding the statistics of several BN layers concatenated along channels.

    Each layer keeps its own counts: count stays [n] when every part has the same [n] counts, and
    becomes [n, C] (each layer's count repeated over its channels) when they differ.
    """
    if not parts:
        raise ValueError("parts must hold at least one ClientStats")
    n = parts[0].n
    if any(p.n != n for p in parts):
        raise ValueError(f"parts must all hold the same n clients, got {[p.n for p in parts]}")
    first = parts[0].count
    if all(p.count.dim() == 1 and torch.equal(p.count, first) for p in parts):
        count = first
    else:
        count = torch.cat([p.channel_counts() for p in parts], dim=1)
    return ClientStats(mean=torch.cat([p.mean for p in parts], dim=1),
                       var=torch.cat([p.var for p in parts], dim=1), count=count)


def split_stats(g: GlobalStats, sizes: Sequence[int]) -> list[GlobalStats]:
    """Undo concat_stats on the server's estimate: one GlobalStats per layer of the given widths.

    Each part keeps its own layer's N: a [] count when it is the same over the part's channels (one
    layer), its [C_k] slice otherwise. clamped is not attributed to layers: each part reports 0.
    """
    sizes = list(sizes)
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes) or sum(sizes) != g.mean.shape[0]:
        raise ValueError(f"sizes must be positive ints summing to the channel count {g.mean.shape[0]}, got {sizes}")
    ms, vs, us = (t.split(sizes) for t in (g.mean, g.var, g.var_unbiased))
    if g.count.dim() == 0:
        counts = [g.count] * len(sizes)
    else:
        counts = [c[0] if bool((c == c[0]).all()) else c for c in g.count.split(sizes)]
    return [GlobalStats(m, v, u, c, 0) for m, v, u, c in zip(ms, vs, us, counts)]


def merge_stats(stats: ClientStats) -> GlobalStats:
    """The exact statistics of the union of the clients' batches (law of total variance, count-weighted)."""
    _check_counts("count", stats)
    count = stats.count.to(torch.int64)
    weights = count[:, None] if count.dim() == 1 else count
    mean, var = merge_moments(weights, stats.mean, stats.var, dim=0)
    total = count.sum(dim=0)
    return GlobalStats(mean=mean, var=var, var_unbiased=unbiased(var, total), count=total)


def robust_merge_stats(stats: ClientStats, defense: Callable[[torch.Tensor], torch.Tensor],
                       clients: Optional[int] = None) -> GlobalStats:
    """Two-phase robust merge (DESIGN.md §3): the defense aggregates the means, then v_i + (μ_i − μ̂)².

    Clients weigh equally. N estimates the element count of the union the merge describes: `clients`
    (default: all n rows) times the median claimed count (per channel when count is [n, C]). The server
    knows n, the bound f its rule is built for, and each row's claimed count, never who is Byzantine,
    so the runner passes clients = n − f: the honest clients' union (the f Byzantine clients hold no
    data, or data the merge must not describe), and f < n/2 clients lying about their counts cannot
    move the median; with equal honest counts m it is (n − f)·m, the exact union's N.
    Negative variance estimates are clamped to 0 and counted in `clamped`.
    Differentiable: a non-finite deviation μ_i − μ̂ (a NaN/Inf row, which a robust defense keeps out of
    the aggregate, so its gradient is 0) enters as a constant, because the backward of its square
    would multiply that 0 by ±Inf.
    """
    _check_counts("count", stats)
    mean = defense(stats.mean)
    deviation = stats.mean - mean
    deviation = torch.where(torch.isfinite(deviation), deviation, deviation.detach())
    var = defense(stats.var + deviation ** 2)
    negative = var < 0
    clamped = int(negative.sum())
    var = torch.where(negative, torch.zeros_like(var), var)
    clients = stats.n if clients is None else clients
    if isinstance(clients, bool) or not isinstance(clients, int) or not 1 <= clients <= stats.n:
        raise ValueError(f"clients must be an int in [1, n={stats.n}], got {clients!r}")
    count = stats.count.to(torch.int64)
    median = count.median() if count.dim() == 1 else count.median(dim=0).values
    total = clients * median
    return GlobalStats(mean=mean, var=var, var_unbiased=unbiased(var, total), count=total, clamped=clamped)


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
