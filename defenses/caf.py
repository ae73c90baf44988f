"""CAF, the Covariance-bound Agnostic Filter (Allouah, Guerraoui and Stephan, ICML 2025), as ByzFL documents it.

Weights c_i = 1; while Σc > n − 2f: μ_c = Σ c_i x_i / Σc, (λ, v) = the top eigenpair of the weighted
covariance Σ_c = Σ c_i (x_i − μ_c)(x_i − μ_c)ᵀ / Σc, τ_i = ((x_i − μ_c)ᵀ v)², c_i ← c_i (1 − τ_i / max_j τ_j);
return the μ_c of the smallest λ met. ByzFL estimates (λ, v) with one power-iteration step from a random
vector; here they are exact and deterministic: the covariance's spectrum is that of an n × n matrix built
from the rows' squared distances (byzbn.defenses.spectral), so after the distances (the Triton kernel on
CUDA, the exact CPU path otherwise) every iteration costs O(n³), and one weighted pass over x gives μ_c.
Memory O(n² + d); the d × d covariance is never formed.

max_j τ_j runs over all finite rows, those already at weight 0 included (ByzFL's formula); the row
attaining it drops to weight 0. The weights only shrink, and MAX_ITERATIONS_PER_ROW · n iterations bound
the loop should they shrink ever more slowly.

Edge cases: f = 0 returns the mean (the loop would not run; ByzFL returns None there); when all rows of
positive weight coincide (λ = 0) their mean is returned at once (τ / max τ would be 0/0). Non-finite rows
(NaN/±Inf) start with weight 0: they are infinitely far from every finite row, the direction the first
iteration would take them out along. With at most f of them they never reach the output.
"""
from __future__ import annotations

import numpy as np
import torch

from byzbn._threads import one_cpu_thread
from byzbn.defenses.distance_rules import HonestMajorityRule
from byzbn.defenses.registry import register_aggregator
from byzbn.defenses.spectral import centred_gram, top_eigenpair
from byzbn.kernels.row_selection import selection_distances, weighted_row_mean

MAX_ITERATIONS_PER_ROW = 1000   # a guard only: each iteration zeroes the weight of the row with the largest τ


def caf_weights(d2: np.ndarray, finite: np.ndarray, f: int) -> np.ndarray:
    """[n] the weights c of the μ_c CAF returns, from the squared distances d2 and the finite-row mask."""
    n = d2.shape[0]
    c = finite.astype(np.float64)
    if not c.any():
        return np.ones(n)                     # no finite row: the (non-finite) mean of them all
    if f == 0 or c.sum() <= n - 2 * f:
        return c
    rows = np.flatnonzero(finite)
    sub = d2[np.ix_(rows, rows)]
    w = c[rows]
    best, best_w = np.inf, w.copy()
    with one_cpu_thread(torch.device("cpu")):
        for _ in range(MAX_ITERATIONS_PER_ROW * n):
            if w.sum() <= n - 2 * f:
                break
            lam, tau = top_eigenpair(centred_gram(sub, w), w)
            if lam < best:
                best, best_w = lam, w.copy()
            if lam <= 0.0:
                break                         # the weighted rows coincide: nothing left to filter
            w = w * (1.0 - tau / tau.max())
    out = np.zeros(n)
    out[rows] = best_w
    return out


@register_aggregator("caf")
class CAF(HonestMajorityRule):
    """CAF: the weighted mean of least top covariance eigenvalue met while filtering (see the module docstring).

    Needs 2f < n (ByzFL's bound). Deterministic; the output lies in the convex hull of the finite rows.
    """

    def __init__(self, f: int = 0):
        super().__init__(f)

    def weights(self, x: torch.Tensor) -> np.ndarray:
        """[n] the weights of the rows in the mean CAF returns (summing to the total weight, not to 1)."""
        self._prepare(x)
        return caf_weights(*selection_distances(x), self.f)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return weighted_row_mean(x, torch.from_numpy(self.weights(x)))


__all__ = ["CAF", "caf_weights"]
