"""Bulyan (El Mhamdi, Guerraoui and Rouault, ICML 2018): Krum picks θ = n − 2f rows one at a time, then per
coordinate the mean of the β = θ − 2f selected values nearest to their median.

Selection: the [n, n] squared distances once (byzbn.kernels.row_selection.selection_distances: the
Triton kernel on CUDA, the exact float64-accumulated CPU path otherwise), then θ rounds on that small
matrix: among the n' rows left, the one whose n' − f − 2 nearest other rows (at least 1, at most
n' − 1) are nearest in sum, removed from the pool. That is Krum as El Mhamdi et al. and Flower's
aggregate_bulyan count neighbours (Blanchard et al.'s n − f − 2); byzbn's own `krum` rule counts
n − f − 1 (ByzFL's). Ties go to the lower row index.

Coordinate stage: in sorted order s_0 <= ... <= s_{θ−1} of one coordinate the β values nearest to the
median form a window [j, j + β). Sliding it right swaps s_j for s_{j+β}, which is nearer exactly when
med − s_j > s_{j+β} − med; both sides are monotone in j, so j is the number of positions where that
holds (ties keep the lower value, as in Meamed). On CPU the θ selected rows are sorted chunk by chunk
of columns with the comparator network of byzbn.kernels.order_statistics; elsewhere (and when x
requires grad) with torch.sort. Memory O(n² + θ·chunk) beyond x.

Non-finite rows: a row holding a NaN/±Inf is infinitely far from every row, so its Krum score is
infinite and it ranks last; with at most f of them, the n − f finite rows outnumber the θ picks and
none is picked: the output is finite.
"""
from __future__ import annotations

import numpy as np
import torch

from byzbn._checks import check_matrix
from byzbn._threads import one_cpu_thread
from byzbn.defenses.chunked_rows import CPU_CHUNK_ELEMENTS
from byzbn.defenses.registry import Aggregator, register_aggregator
from byzbn.kernels import _backend
from byzbn.kernels.order_statistics import sorted_rows
from byzbn.kernels.row_selection import selection_distances


def bulyan_selection(d2: np.ndarray, finite: np.ndarray, f: int, theta: int) -> np.ndarray:
    """The θ rows Bulyan's repeated Krum picks, in the order picked, from float64 squared distances d2.

    Each round scores the rows left by the sum of their k = n' − f − 2 smallest distances to the other
    rows left (k clamped to [1, n' − 1]); non-finite rows rank last, ties go to the lower index.
    """
    left = list(range(d2.shape[0]))
    picked = []
    for _ in range(theta):
        sub = d2[np.ix_(left, left)].copy()
        np.fill_diagonal(sub, np.inf)                       # a row is not its own neighbour
        k = min(max(len(left) - f - 2, 1), len(left) - 1)
        scores = np.sort(sub, axis=1)[:, :k].sum(axis=1)
        order = np.lexsort((np.asarray(left), scores, ~finite[left]))
        picked.append(left.pop(int(order[0])))
    return np.asarray(picked, dtype=np.int64)


def _nearest_window_mean(s: torch.Tensor, beta: int) -> torch.Tensor:
    """Per column of sorted values s [θ, m]: the mean of the β values nearest to the median (module docstring)."""
    theta = s.shape[0]
    med = s[theta // 2] if theta % 2 else 0.5 * (s[theta // 2 - 1] + s[theta // 2])
    slides = theta - beta
    start = ((med - s[:slides]) > (s[beta:] - med)).sum(dim=0) if slides else torch.zeros_like(med, dtype=torch.long)
    index = start[None, :] + torch.arange(beta, device=s.device)[:, None]
    return torch.gather(s, 0, index).sum(dim=0) / beta


def coordinate_stage(x: torch.Tensor, rows: torch.Tensor, beta: int, nan_possible: bool = True) -> torch.Tensor:
    """[d]: per coordinate, the mean of the β values of the rows `rows` of x nearest to their median."""
    theta = rows.numel()
    if x.device.type != "cpu" or _backend.needs_grad(x):
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            return _nearest_window_mean(torch.sort(x.index_select(0, rows), dim=0).values, beta)
    d = x.shape[1]
    out = torch.empty(d, dtype=x.dtype)
    step = max(1, CPU_CHUNK_ELEMENTS // theta)       # chunks of θ selected rows: they stay in cache
    positions = tuple(range(theta))
    with torch.no_grad(), one_cpu_thread(x.device):
        for c0 in range(0, d, step):
            chunk = x[:, c0:c0 + step].index_select(0, rows)
            s = sorted_rows(chunk, positions, nan_possible)
            out[c0:c0 + chunk.shape[1]] = _nearest_window_mean(torch.stack([s[p] for p in positions]), beta)
    return out


@register_aggregator("bulyan")
class Bulyan(Aggregator):
    """Bulyan: θ = n − 2f rows picked by repeated Krum, then per coordinate the mean of the β = θ − 2f picked
    values nearest to their median (El Mhamdi et al. 2018; Flower's aggregate_bulyan). Needs n >= 4f + 3
    (f = 0: any n, the mean).

    select(x) returns the picked rows. At most f rows holding NaN/±Inf are never picked (finite output).
    """

    def __init__(self, f: int):
        super().__init__(f)

    def check_n(self, n: int) -> None:
        super().check_n(n)
        # With f = 0 nothing is removed (θ = β = n: the mean), so any n works, as for every rule of the catalogue.
        if self.f > 0 and n < 4 * self.f + 3:
            raise ValueError(f"f={self.f} is out of range for bulyan with n={n}: valid 0 <= f <= {max(n - 3, 0) // 4} "
                             "(bulyan needs n >= 4f + 3)")

    def _picked(self, x: torch.Tensor) -> tuple[np.ndarray, bool]:
        check_matrix("x", x)
        n = x.shape[0]
        self.check_n(n)
        d2, finite = selection_distances(x)
        picked = bulyan_selection(d2, finite, self.f, n - 2 * self.f)
        return picked, bool(finite[picked].all())

    def select(self, x: torch.Tensor) -> np.ndarray:
        """The sorted indices of the θ = n − 2f rows Krum picks."""
        return np.sort(self._picked(x)[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        picked, all_finite = self._picked(x)
        theta = picked.size
        rows = torch.as_tensor(np.sort(picked), device=x.device)
        return coordinate_stage(x, rows, theta - 2 * self.f, nan_possible=not all_finite)

    def __repr__(self) -> str:
        return f"bulyan(f={self.f})"


__all__ = ["Bulyan", "bulyan_selection", "coordinate_stage"]
