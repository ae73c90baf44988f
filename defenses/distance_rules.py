"""Distance-based selection rules: Krum, Multi-Krum and MoNNA (ByzFL's names, parameters and defaults).

Each reads the rows' squared Euclidean distances from byzbn.kernels (the Triton pairwise-distance kernel
for CUDA float32, the exact float64-accumulated CPU path otherwise; distances to a non-finite row are
+inf), picks rows by exact comparisons of those distances, and averages the picked rows in one pass
over x (byzbn.kernels.row_selection.weighted_row_mean: no [m, d] copy, unpicked rows never read into
the output). Memory O(n² + d) beyond x; never an [n, n, d] tensor. Ties go to the lower row index.
Non-finite rows: at most f rows holding NaN/±Inf are infinitely far from every row, so they are never
picked (MoNNA's pivot is the one exception: it must be finite, see MoNNA).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from byzbn._checks import check_int, check_matrix
from byzbn.defenses.registry import Aggregator, register_aggregator
from byzbn.kernels.row_selection import mean_of_rows, selection_distances, selection_distances_to_row


class HonestMajorityRule(Aggregator):
    """Base of the rules that need an honest majority, 2f < n (ByzFL raises on 2f >= n too)."""

    def check_n(self, n: int) -> None:
        if 2 * self.f >= n:
            raise ValueError(f"f={self.f} is out of range for {self.name} with n={n}: "
                             f"valid 0 <= f <= {(n - 1) // 2} (2f < n)")

    def _prepare(self, x: torch.Tensor) -> None:
        check_matrix("x", x)
        self.check_n(x.shape[0])


def krum_scores(d2: np.ndarray, f: int) -> np.ndarray:
    """[n] float64 Krum scores: each row's sum of squared distances to its n − f − 1 nearest other rows.

    Summed in float64 from the ascending distances, so integer-valued data score exactly.
    """
    n = d2.shape[0]
    d = d2.copy()
    np.fill_diagonal(d, np.inf)                    # the row itself is not a neighbour
    return np.sort(d, axis=1)[:, : n - f - 1].sum(axis=1)


def krum_order(d2: np.ndarray, finite: np.ndarray, f: int) -> np.ndarray:
    """Row indices by increasing Krum score; non-finite rows last, ties by index."""
    scores = krum_scores(d2, f)
    return np.lexsort((np.arange(len(scores)), scores, ~finite))


@register_aggregator("krum")
class Krum(HonestMajorityRule):
    """Krum: the input row with the smallest sum of squared distances to its n − f − 1 nearest other rows.

    This is ByzFL's Krum (its N_i: the n − f nearest rows, the row itself included) and that of Allouah
    et al. (2023); Blanchard et al. (2017) sum over n − f − 2 neighbours, i.e. this rule with f + 1.
    Needs 2f < n. The output is a copy of one row of x (ties: the lowest index).
    """

    def __init__(self, f: int = 0):
        super().__init__(f)

    def select(self, x: torch.Tensor) -> int:
        """The index of the row Krum returns."""
        self._prepare(x)
        return int(krum_order(*selection_distances(x), self.f)[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.select(x)].clone()


@register_aggregator("multi-krum")
class MultiKrum(HonestMajorityRule):
    """Multi-Krum: the mean of the m rows with the smallest Krum scores (m = n − f by default, as ByzFL).

    Needs 2f < n and 1 <= m <= n − f (more would let a Byzantine row in). Ties: the lower index.
    """

    def __init__(self, f: int = 0, m: Optional[int] = None):
        super().__init__(f)
        self.m = None if m is None else check_int("m", m, 1)

    def rows_kept(self, n: int) -> int:
        return n - self.f if self.m is None else self.m

    def check_n(self, n: int) -> None:
        super().check_n(n)
        if self.m is not None and self.m > n - self.f:
            raise ValueError(f"m={self.m} is out of range for multi-krum with n={n}, f={self.f}: "
                             f"valid 1 <= m <= {n - self.f} (n − f)")

    def select(self, x: torch.Tensor) -> np.ndarray:
        """The sorted indices of the rows Multi-Krum averages."""
        self._prepare(x)
        order = krum_order(*selection_distances(x), self.f)
        return np.sort(order[: self.rows_kept(x.shape[0])])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return mean_of_rows(x, self.select(x))

    def __repr__(self) -> str:
        return f"multi-krum(f={self.f}, m={self.m})"


@register_aggregator("monna")
class MoNNA(HonestMajorityRule):
    """MoNNA: the mean of the n − f rows nearest to the pivot row `idx` (itself included; ties: lower index).

    The pivot is a row the server trusts (Farhadkhani et al., 2023: a peer's own vector). Needs 2f < n
    and 0 <= idx < n. A non-finite pivot raises ValueError: nothing is near it, so no mean would be robust.
    Only the n distances to the pivot are computed on CPU (one pass over x); CUDA takes the pivot's row
    of the Triton pairwise-distance kernel.
    """

    def __init__(self, f: int = 0, idx: int = 0):
        super().__init__(f)
        self.idx = check_int("idx", idx, 0)

    def check_n(self, n: int) -> None:
        super().check_n(n)
        if self.idx >= n:
            raise ValueError(f"idx={self.idx} is out of range for monna with n={n}: valid 0 <= idx <= {n - 1}")

    def select(self, x: torch.Tensor) -> np.ndarray:
        """The sorted indices of the n − f rows MoNNA averages."""
        self._prepare(x)
        if not bool(torch.isfinite(x[self.idx]).all()):
            raise ValueError(f"monna's pivot row idx={self.idx} holds NaN/Inf: the pivot must be a trusted, "
                             "finite row")
        dist = selection_distances_to_row(x, self.idx)
        order = np.lexsort((np.arange(len(dist)), dist))
        return np.sort(order[: x.shape[0] - self.f])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return mean_of_rows(x, self.select(x))

    def __repr__(self) -> str:
        return f"monna(f={self.f}, idx={self.idx})"


__all__ = ["HonestMajorityRule", "Krum", "MultiKrum", "MoNNA", "krum_scores", "krum_order"]
