"""DnC, Divide-and-Conquer (Shejwalkar and Houmansadr, NDSS 2021): outlier scores along the top singular
direction of a random subsample of the coordinates, the ⌊c·f⌋ highest-scoring rows removed, the rest averaged.

Per iteration (niters of them): b coordinates drawn without replacement (all d when b >= d), the
subsampled rows centred at their mean, v their top right singular vector, score_i = ⟨x_i − μ, v⟩²; the
n − ⌊c·f⌋ lowest scores are good. The output is the mean of the rows good in every iteration. The
paper's defaults: b = 10,000, niters = 1, c = 1 (Blades' DnC takes the same b and c and 5 iterations).

Cost: the scores come from the [n, n] Gram matrix of the centred [n, b] subsample (its top eigenpair
(λ, u) gives ⟨x_i − μ, v⟩² = λ·u_i², the same as the SVD's), in float64; x itself is read once to find
rows holding NaN/±Inf (its row sums: a finite sum proves a finite row) and once more for the mean of
the kept rows (byzbn.kernels.row_selection.weighted_row_mean: no copy of them). Memory O(n·b + n² + d).

Randomness: the coordinates come from a torch.Generator: with_generator(gen) returns a copy drawing
from gen (a run passes each step's generator); stand-alone, every call draws from a fresh generator
seeded with `seed` (default 0), so a call is reproducible.

Non-finite rows: a row holding a NaN/±Inf anywhere scores +inf and takes no part in the centring or the
SVD; so with at most ⌊c·f⌋ of them (every such row when c = 1 and at most f rows are bad) none is kept
and the output is finite. Ties in score keep the lower row index.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from byzbn._checks import check_int, check_matrix
from byzbn._threads import one_cpu_thread
from byzbn.defenses.iterative_rules import check_real
from byzbn.defenses.random_stage import DrawsFromGenerator
from byzbn.defenses.registry import Aggregator, register_aggregator
from byzbn.kernels.row_selection import mean_of_rows


def finite_rows(x: torch.Tensor) -> np.ndarray:
    """[n] bool numpy: rows without NaN/±Inf, from one reduction over x (only rows whose sum is not finite,
    i.e. non-finite rows and finite rows whose sum overflowed, are read again)."""
    with torch.no_grad():
        finite = torch.isfinite(x.sum(dim=1))
        suspects = (~finite).nonzero().flatten()
        if suspects.numel():
            finite[suspects] = torch.isfinite(x[suspects]).all(dim=1)
    return finite.cpu().numpy()


def outlier_scores(sub: torch.Tensor, finite: np.ndarray) -> np.ndarray:
    """float64 [n]: ⟨s_i − μ, v⟩² for the finite rows of sub [n, b] (μ, v: their mean and top right singular
    vector), +inf for the others."""
    scores = np.full(sub.shape[0], np.inf)
    rows = np.flatnonzero(finite)
    if rows.size == 0:
        return scores
    with one_cpu_thread(sub.device):
        centred = sub[torch.as_tensor(rows, device=sub.device)].double()
        centred -= centred.mean(dim=0)
        gram = (centred @ centred.T).cpu()
        values, vectors = torch.linalg.eigh(gram)
    lam = max(float(values[-1]), 0.0)
    scores[rows] = lam * vectors[:, -1].numpy() ** 2
    return scores


@register_aggregator("dnc")
class DnC(DrawsFromGenerator, Aggregator):
    """DnC (Shejwalkar and Houmansadr, NDSS 2021): remove the ⌊c·f⌋ rows with the largest outlier scores along
    the top singular vector of b sampled coordinates (niters times; a row must survive every iteration),
    average the rest. Paper defaults b = 10000, niters = 1, c = 1.0; needs niters·⌊c·f⌋ < n.

    Randomized: with_generator(gen) draws the coordinates from gen; without one from a generator seeded
    with `seed`. select(x) returns the kept rows. Rows holding NaN/±Inf are removed first (finite output
    with at most ⌊c·f⌋ of them).
    """

    def __init__(self, f: int, b: int = 10000, niters: int = 1, c: float = 1.0, seed: int = 0):
        super().__init__(f)
        self.b = check_int("b", b, 1)
        self.niters = check_int("niters", niters, 1)
        self.c = check_real("c", c, 0.0, low_inclusive=True)
        self.seed = check_int("seed", seed, 0)

    def removed(self) -> int:
        """⌊c·f⌋: the rows each iteration removes."""
        return math.floor(self.c * self.f + 1e-9)       # c·f = 2.9999999 from 0.3·10 still removes 3

    def check_n(self, n: int) -> None:
        super().check_n(n)
        if self.niters * self.removed() >= n:
            raise ValueError(f"f={self.f} is out of range for dnc with n={n}, c={self.c}, niters={self.niters}: "
                             f"valid niters·⌊c·f⌋ <= {n - 1} (some row must survive every iteration)")

    def coordinates(self, d: int, gen: torch.Generator) -> Optional[torch.Tensor]:
        """b sorted coordinates drawn without replacement from gen (None: all d, when b >= d)."""
        if self.b >= d:
            return None
        return torch.randperm(d, generator=gen, device=gen.device)[: self.b].sort().values

    def select(self, x: torch.Tensor) -> np.ndarray:
        """The sorted indices of the rows DnC averages."""
        check_matrix("x", x)
        n, d = x.shape
        self.check_n(n)
        finite = finite_rows(x)
        gen = self.call_generator()
        keep = np.ones(n, dtype=bool)
        for _ in range(self.niters):
            cols = self.coordinates(d, gen)
            with torch.no_grad():
                sub = x if cols is None else x.index_select(1, cols.to(x.device))
                scores = outlier_scores(sub, finite)
            order = np.lexsort((np.arange(n), scores))
            good = np.zeros(n, dtype=bool)
            good[order[: n - self.removed()]] = True
            keep &= good
        return np.flatnonzero(keep)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return mean_of_rows(x, self.select(x))

    def __repr__(self) -> str:
        return f"dnc(f={self.f}, b={self.b}, niters={self.niters}, c={self.c})"


__all__ = ["DnC", "finite_rows", "outlier_scores"]
