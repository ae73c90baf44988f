"""ClippedClustering (Li et al.; Blades' Clippedclustering): clip every row to the median norm, split the rows
into two clusters by agglomerative clustering (average linkage on cosine distance), average the larger one.

Also the pieces SignGuard shares: the median norm and the mean of clipped rows.

Blades takes the median over every norm seen since the rule was built (a history across rounds); this
rule is stateless: the median of the n norms of the call, capped at `max_tau` (Blades' 1e5). Clipping
scales a row, so it leaves the cosine distances alone: they come from the [n, n] Gram matrix of the
raw rows, summed in float64 chunk by chunk of columns (one pass over x; float32 products are exact in
float64), and so do the norms. The clustering runs on that small matrix (O(n³) at worst, n <= a few
hundred); the mean reads only the chosen rows (defenses.chunked_rows.combine). Memory O(n² + n·chunk).

Agglomerative clustering: every row starts alone; the two clusters with the smallest average pairwise
distance merge (Lance-Williams update; ties: the pair with the lowest indices) until two are left. The
larger cluster wins; equal sizes: the one holding the lowest row index. A row of norm 0 has cosine 0 to
every row (distance 1, as torch's cosine_similarity gives).

Non-finite rows: a row holding a NaN/±Inf has no direction; it counts as +inf in the median norm and
takes no part in the clustering or the mean. With fewer than n/2 of them the threshold is the median
of finite norms; with more, `max_tau`. The output is finite unless every row is non-finite (then NaN).
For float64 rows beyond ~1e154 the float64 Gram overflows and such rows count as non-finite too.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from byzbn._checks import check_matrix
from byzbn._threads import one_cpu_thread
from byzbn.defenses.chunked_rows import combine, sq_distances
from byzbn.defenses.iterative_rules import check_real
from byzbn.defenses.registry import Aggregator, register_aggregator
from byzbn.kernels.pairwise_distances import CPU_CHUNK_ELEMENTS as GRAM_CHUNK_ELEMENTS


def gram_matrix(x: torch.Tensor) -> np.ndarray:
    """float64 [n, n] ⟨x_i, x_j⟩, summed in float64 over column chunks (NaN/±Inf only in a bad row's entries)."""
    n, d = x.shape
    # Chunks as large as the pairwise-distance kernel's: a product big enough for BLAS's threads.
    step = max(1, GRAM_CHUNK_ELEMENTS // n) if x.device.type == "cpu" else d
    gram = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    buf = torch.empty(n, min(step, d), dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for c0 in range(0, d, step):
            z = buf[:, :min(step, d - c0)]
            z.copy_(x[:, c0:c0 + step])
            gram.addmm_(z, z.T)
    return gram.cpu().numpy()


def cosine_distances(gram: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[m, m] 1 − cos between the rows `rows` (finite) from their Gram matrix; norm-0 rows: cosine 0."""
    g = gram[np.ix_(rows, rows)]
    norms = np.sqrt(np.diag(g))
    scale = np.outer(norms, norms)
    cos = np.divide(g, scale, out=np.zeros_like(g), where=scale > 0)
    dist = 1.0 - np.clip(cos, -1.0, 1.0)
    np.fill_diagonal(dist, 0.0)
    return dist


def average_linkage_two_clusters(dist: np.ndarray) -> list[list[int]]:
    """Agglomerative clustering with average linkage down to (at most) two clusters, each a sorted index list."""
    m = dist.shape[0]
    clusters = [[i] for i in range(m)]
    d = dist.astype(np.float64).copy()
    np.fill_diagonal(d, np.inf)
    alive = np.ones(m, dtype=bool)
    while alive.sum() > 2:
        masked = np.where(alive[:, None] & alive[None, :], d, np.inf)
        i, j = np.unravel_index(int(np.argmin(masked)), masked.shape)   # first minimum: lowest (i, j)
        i, j = min(i, j), max(i, j)
        a, b = len(clusters[i]), len(clusters[j])
        merged = (a * d[i] + b * d[j]) / (a + b)        # average linkage (Lance-Williams)
        d[i], d[:, i] = merged, merged
        d[i, i] = np.inf
        clusters[i] = sorted(clusters[i] + clusters[j])
        alive[j] = False
        d[j], d[:, j] = np.inf, np.inf
    return [clusters[k] for k in np.flatnonzero(alive)]


def median_norm(sq_norms: torch.Tensor) -> float:
    """The median of the rows' norms (average of the two middle ones for even n), non-finite norms as +inf."""
    norms = sq_norms.detach().double().sqrt().nan_to_num(nan=math.inf).sort().values.cpu().numpy()
    n = norms.size
    return float(norms[n // 2]) if n % 2 else float(0.5 * (norms[n // 2 - 1] + norms[n // 2]))


def row_sq_norms(x: torch.Tensor) -> torch.Tensor:
    """float64 [n] squared norms (differentiable when x requires grad; +inf/NaN for rows holding NaN/±Inf)."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad), one_cpu_thread(x.device):
        return sq_distances(x)


def clipped_mean(x: torch.Tensor, rows: np.ndarray, sq_norms: torch.Tensor, threshold: float) -> torch.Tensor:
    """[d] the mean of the rows `rows` of x, each scaled to norm `threshold` when longer (no copy of the rows).

    The threshold is a constant for autograd (a statistic of the call); the scales follow the rows' norms.
    """
    if rows.size == 0:
        return torch.full((x.shape[1],), math.nan, dtype=x.dtype, device=x.device)
    index = torch.as_tensor(rows, device=sq_norms.device)
    sq = sq_norms.index_select(0, index)
    clip = sq.detach().sqrt() > threshold            # compared as norms: threshold² could underflow
    # The safe denominator keeps the unused branch finite (its gradient would be 0 · ∞ = NaN).
    scale = torch.where(clip, threshold / torch.where(clip, sq, torch.ones_like(sq)).sqrt(), torch.ones_like(sq))
    with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad), one_cpu_thread(x.device):
        return combine(x, (scale / rows.size).to(x.device), index.to(x.device))[0]


@register_aggregator("clippedclustering")
class ClippedClustering(Aggregator):
    """ClippedClustering (Blades): clip every row to τ = min(median norm, max_tau), cluster the rows in two by
    average-linkage agglomerative clustering on cosine distance, return the mean of the larger cluster's
    clipped rows. Stateless (the median of this call's norms, not Blades' history); f is not used.

    select(x) returns the rows averaged. Rows holding NaN/±Inf are left out (finite output unless all are).
    """

    def __init__(self, f: int, max_tau: float = 1e5):
        super().__init__(f)
        self.max_tau = check_real("max_tau", max_tau, 0.0, low_inclusive=True)

    def _analyse(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(the rows averaged, float64 Gram matrix)."""
        check_matrix("x", x)
        self.check_n(x.shape[0])
        gram = gram_matrix(x)
        finite = np.flatnonzero(np.isfinite(np.diag(gram)))
        if finite.size <= 1:
            return finite, gram
        clusters = average_linkage_two_clusters(cosine_distances(gram, finite))
        larger = max(clusters, key=lambda c: (len(c), -c[0]))
        return finite[larger], gram

    def select(self, x: torch.Tensor) -> np.ndarray:
        """The sorted indices of the rows of the larger cluster (the rows averaged)."""
        return self._analyse(x)[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows, gram = self._analyse(x)
        sq = row_sq_norms(x) if x.requires_grad else torch.from_numpy(np.diag(gram).copy())
        threshold = min(median_norm(sq), self.max_tau)
        return clipped_mean(x, rows, sq, threshold)

    def __repr__(self) -> str:
        return f"clippedclustering(f={self.f}, max_tau={self.max_tau})"


__all__ = ["ClippedClustering", "gram_matrix", "cosine_distances", "average_linkage_two_clusters", "median_norm",
           "row_sq_norms", "clipped_mean"]
