"""SignGuard (Xu et al., ICDCS 2022): rows kept by a norm filter and by sign-statistics clustering, averaged
after clipping to the median norm.

1. Norm filter: S1 = the rows with L·M <= ‖x_i‖ <= R·M, M the median norm (paper: L = 0.1, R = 3.0).
2. Sign clustering: on a block of ⌊fraction·d⌋ (at least 1) consecutive coordinates at a random start
   (FLPoison's SignGuard: fraction 0.1), each row's fractions of positive, zero and negative values, each
   feature divided by its largest value over the rows (+1e-8, as FLPoison); the rows are
   clustered by mean shift and S2 is the largest cluster.
3. The mean of the rows of S1 ∩ S2, each clipped to norm M (when S1 ∩ S2 is empty: of S1).

Mean shift (the paper's clustering; scikit-learn's MeanShift with cluster_all=False): bandwidth h =
the mean over rows of the distance to their ⌊n/2⌋-th nearest row (itself included; scikit-learn's
estimate_bandwidth with quantile 0.5, on all rows), every row a seed (scikit-learn's default seeding;
FLPoison's bin seeding only thins the seeds), each seed moved to the mean of the rows within h until
it moves less than 1e-3·h (300 steps at most), modes kept by decreasing count of rows within h with
any mode within h of a kept one dropped, each row labelled with its nearest mode when within h.
Deterministic given the features; the features (n × 3) make it O(n²) per step.

Cost: one pass over x for the norms (defenses.chunked_rows), one over the block for the signs, one
over the kept rows for the mean. Randomness: the block's start comes from a torch.Generator:
with_generator(gen) returns a copy drawing from gen (a run passes each step's generator); stand-alone,
every call draws from a fresh generator seeded with `seed` (default 0).

Non-finite rows: a row holding a NaN/±Inf has no finite norm; it counts as +inf in the median and is
never in S1, so with fewer than n/2 such rows M is finite and the output is finite. f is not used.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from byzbn._checks import check_int, check_matrix
from byzbn.defenses.clipped_clustering import clipped_mean, median_norm, row_sq_norms
from byzbn.defenses.iterative_rules import check_real
from byzbn.defenses.random_stage import DrawsFromGenerator
from byzbn.defenses.registry import Aggregator, register_aggregator

MAX_SHIFT_STEPS = 300


def sign_features(block: torch.Tensor) -> np.ndarray:
    """float64 [n, 3]: per row the fractions of positive, zero and negative values of block [n, k], each
    column divided by its largest value + 1e-8 (NaN counts as none of the three)."""
    k = block.shape[1]
    with torch.no_grad():
        counts = torch.stack([(block > 0).sum(dim=1), (block == 0).sum(dim=1), (block < 0).sum(dim=1)], dim=1)
    frac = counts.cpu().double().numpy() / k
    return frac / (frac.max(axis=0) + 1e-8)


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2))


def mean_shift_labels(points: np.ndarray, quantile: float = 0.5) -> np.ndarray:
    """[n] cluster labels of points [n, p] by flat-kernel mean shift (module docstring); -1: no cluster.

    Labels count from 0 in decreasing order of the modes' row counts.
    """
    n = points.shape[0]
    dist = _distances(points, points)
    k = max(1, int(n * quantile))
    h = float(np.sort(dist, axis=1)[:, k - 1].mean())
    modes, counts = [], []
    for seed in points:
        mode = seed
        for _ in range(MAX_SHIFT_STEPS):
            within = np.sqrt(((points - mode) ** 2).sum(axis=1)) <= h
            if not within.any():      # rounding only: the mean of a ball's rows has one of them within h
                break
            moved = points[within].mean(axis=0)
            step = float(np.sqrt(((moved - mode) ** 2).sum()))
            mode = moved
            if step <= 1e-3 * h:
                break
        modes.append(mode)
        counts.append(int((np.sqrt(((points - mode) ** 2).sum(axis=1)) <= h).sum()))
    order = sorted(range(n), key=lambda i: (-counts[i], i))           # stable: seeds by index on ties
    kept: list[np.ndarray] = []
    for i in order:
        if all(float(np.sqrt(((modes[i] - m) ** 2).sum())) > h for m in kept):
            kept.append(modes[i])
    to_mode = _distances(points, np.stack(kept))
    labels = to_mode.argmin(axis=1)
    labels[to_mode.min(axis=1) > h] = -1
    return labels


def largest_cluster(labels: np.ndarray) -> np.ndarray:
    """The sorted indices with the most frequent label other than -1 (ties: the lower label)."""
    counts = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, dtype=int)
    if counts.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(labels == int(np.argmax(counts)))


@register_aggregator("signguard")
class SignGuard(DrawsFromGenerator, Aggregator):
    """SignGuard (Xu et al. 2022): the mean, clipped to the median norm M, of the rows that pass the norm filter
    L·M <= ‖x_i‖ <= R·M and lie in the largest mean-shift cluster of sign statistics over a random block
    of ⌊fraction·d⌋ coordinates. Paper defaults L = 0.1, R = 3.0, fraction = 0.1; f is not used.

    Randomized: with_generator(gen) draws the block's start from gen; without one from a generator seeded
    with `seed`. select(x) returns the rows averaged. Fewer than n/2 rows holding NaN/±Inf: finite output.
    """

    def __init__(self, f: int, L: float = 0.1, R: float = 3.0, fraction: float = 0.1, seed: int = 0):
        super().__init__(f)
        self.L = check_real("L", L, 0.0, low_inclusive=True)
        self.R = check_real("R", R, self.L, low_inclusive=True)
        self.fraction = check_real("fraction", fraction, 0.0, low_inclusive=False)
        if self.fraction > 1.0:
            raise ValueError(f"fraction={fraction} is out of range: valid 0 < fraction <= 1")
        self.seed = check_int("seed", seed, 0)

    def block(self, d: int) -> tuple[int, int]:
        """(start, length) of this call's coordinate block: ⌊fraction·d⌋ columns (at least 1), uniform start."""
        length = min(d, max(1, math.floor(self.fraction * d + 1e-9)))   # FLPoison's int(0.1·d)
        gen = self.call_generator()
        start = int(torch.randint(0, d - length + 1, (1,), generator=gen, device=gen.device))
        return start, length

    def _analyse(self, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor, float]:
        """(the rows averaged, float64 squared norms, the median norm M)."""
        check_matrix("x", x)
        n, d = x.shape
        self.check_n(n)
        sq = row_sq_norms(x)
        m = median_norm(sq)
        norms = sq.detach().sqrt().cpu().numpy()
        s1 = np.isfinite(norms) & (norms >= self.L * m) & (norms <= self.R * m)
        start, length = self.block(d)
        s2 = np.zeros(n, dtype=bool)
        s2[largest_cluster(mean_shift_labels(sign_features(x[:, start:start + length])))] = True
        both = np.flatnonzero(s1 & s2)
        return (both if both.size else np.flatnonzero(s1)), sq, m

    def select(self, x: torch.Tensor) -> np.ndarray:
        """The sorted indices of the rows SignGuard averages."""
        return self._analyse(x)[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows, sq, m = self._analyse(x)
        return clipped_mean(x, rows, sq, m)

    def __repr__(self) -> str:
        return f"signguard(f={self.f}, L={self.L}, R={self.R}, fraction={self.fraction})"


__all__ = ["SignGuard", "sign_features", "mean_shift_labels", "largest_cluster"]
