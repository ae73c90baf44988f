"""Pre-aggregators: bucketing (random buckets of s rows), static clipping (norm c) and ARC (adaptive clipping).

Non-finite rows stay confined to the rows they touch, for the rule after them to discard: clipping and
ARC leave a row holding a NaN/±Inf unchanged (it has no finite norm to scale by), bucketing spoils only
that row's bucket (so at most f of the ⌈n/s⌉ buckets).
"""
from __future__ import annotations

import copy
from typing import ClassVar, Optional

import torch

from byzbn._checks import check_int, check_matrix
from byzbn._threads import one_cpu_thread
from byzbn.defenses.chunked_rows import sq_distances
from byzbn.defenses.iterative_rules import check_real
from byzbn.defenses.registry import PreAggregator, register_pre_aggregator
from byzbn.kernels import _backend


@register_pre_aggregator("bucketing")
class Bucketing(PreAggregator):
    """Bucketing (Karimireddy, He and Jaggi, ICLR 2022): shuffle the n rows, return the means of consecutive
    buckets of s rows (the last one holds the n mod s left over): ⌈n/s⌉ rows (ByzFL's Bucketing).

    The permutation comes from a torch.Generator: with_generator(gen) returns a copy drawing from gen
    (a run passes each step's generator); stand-alone, every call draws from a fresh generator seeded
    with `seed`, so a call is reproducible.
    """

    randomized: ClassVar[bool] = True

    def __init__(self, f: int, s: int = 1, seed: int = 0):
        super().__init__(f)
        self.s = check_int("s", s, 1)
        self.seed = check_int("seed", seed, 0)
        self.generator: Optional[torch.Generator] = None

    def with_generator(self, generator: Optional[torch.Generator]) -> "Bucketing":
        """A copy drawing its permutations from `generator` (None: from `seed` again); self is unchanged."""
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        pre = copy.copy(self)
        pre.generator = generator
        return pre

    def output_rows(self, n: int) -> int:
        return -(-n // self.s)

    def permutation(self, n: int) -> torch.Tensor:
        """The row order of this call: torch.randperm(n) from the generator (CPU or CUDA, as the generator)."""
        gen = self.generator if self.generator is not None else torch.Generator().manual_seed(self.seed)
        return torch.randperm(n, generator=gen, device=gen.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_matrix("x", x)
        n = x.shape[0]
        self.check_n(n)
        buckets = self.permutation(n).split(self.s)
        if _backend.needs_grad(x):
            return torch.stack([x.index_select(0, rows.to(x.device)).mean(dim=0) for rows in buckets])
        # Row by row into the output: one read of x, no gathered copy. Each bucket sums its own rows
        # in the permutation's order, so a NaN/±Inf row spoils that bucket alone.
        out = torch.empty(len(buckets), x.shape[1], dtype=x.dtype, device=x.device)
        with one_cpu_thread(x.device):
            for b, rows in enumerate(buckets):
                first, *others = rows.tolist()
                if others:
                    torch.add(x[first], x[others[0]], out=out[b])
                    for r in others[1:]:
                        out[b].add_(x[r])
                    out[b].div_(len(others) + 1)
                else:
                    out[b].copy_(x[first])
        return out


def _scaled_rows(x: torch.Tensor, sq_norms: torch.Tensor, threshold) -> torch.Tensor:
    """Every row with norm > threshold scaled to norm threshold; rows with a non-finite norm left as they are."""
    norms = sq_norms.detach().sqrt()     # compared as norms: threshold² could underflow
    clip = torch.isfinite(norms) & (norms > threshold)
    safe = torch.where(clip, sq_norms, torch.ones_like(sq_norms))   # keeps the unused branch's gradient finite
    scale = torch.where(clip, threshold / safe.sqrt(), torch.ones_like(sq_norms))
    with one_cpu_thread(x.device):
        return x * scale.to(x.dtype)[:, None]


def _row_sq_norms(x: torch.Tensor) -> torch.Tensor:
    with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad), one_cpu_thread(x.device):
        return sq_distances(x)


@register_pre_aggregator("clipping")
class Clipping(PreAggregator):
    """Static clipping: x_i ← min(1, c/‖x_i‖₂)·x_i (ByzFL's Clipping; c >= 0). A row holding a NaN/±Inf is
    left unchanged; f is not used."""

    def __init__(self, f: int, c: float = 2.0):
        super().__init__(f)
        self.c = check_real("c", c, 0.0, low_inclusive=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_matrix("x", x)
        self.check_n(x.shape[0])
        return _scaled_rows(x, _row_sq_norms(x), self.c)


def arc_clipped_count(n: int, f: int) -> int:
    """k = ⌊2·(f/n)·(n − f)⌋, in integers (a float product can land just below an integer)."""
    return (2 * f * (n - f)) // n


@register_pre_aggregator("arc")
class AdaptiveRobustClipping(PreAggregator):
    """ARC (Allouah et al. 2024): clip the k = ⌊2(f/n)(n − f)⌋ largest rows to the norm of the (k+1)-th
    largest (ByzFL's ARC; no parameter besides f). Rows holding a NaN/±Inf rank as the largest and are
    left unchanged; with 2f <= n there are at least f of the k, so at most f such rows leave the
    threshold finite."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_matrix("x", x)
        n = x.shape[0]
        self.check_n(n)
        k = arc_clipped_count(n, self.f)
        sq = _row_sq_norms(x)
        if k == 0:
            return x.clone()
        # torch.sort puts NaN last: a row with a NaN norm ranks as the largest.
        threshold = torch.sort(sq).values[n - k - 1].sqrt()
        return _scaled_rows(x, sq, threshold)


__all__ = ["Bucketing", "Clipping", "AdaptiveRobustClipping", "arc_clipped_count"]
