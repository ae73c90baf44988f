"""Reference semantics of the robust aggregation rules (DESIGN.md §6), in plain torch.

These are the references the Triton kernels and the fast CPU paths in byzbn.kernels are tested
against (and the differentiable paths the kernels take when x requires grad): simple, exact, row by
row. byzbn.defenses.functional re-exports them. Every function maps a submission matrix x [n, d]
(float32 or float64) to rows [n, d] (nnm) or one vector [d], keeps dtype and device, never mutates x.

Non-finite values: a row holding any NaN/±Inf is infinitely far from every other row for NNM
(distance to itself 0; ties broken by the lower row index); median and trimmed mean sort
coordinate-wise with -Inf first and NaN after +Inf, so at most f such values never reach the output.
"""
from __future__ import annotations

import torch

from byzbn._checks import check_f, check_matrix


def finite_rows(x: torch.Tensor) -> torch.Tensor:
    """[n] bool: rows without NaN/±Inf."""
    return torch.isfinite(x).all(dim=1)


def pairwise_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """[n, n] squared Euclidean distances Σ (x_i − x_j)², summed in float64 and returned in x's dtype.

    float64 keeps float32 distances correctly rounded, so every implementation that is that accurate
    (the CPU fast path, and exact small-integer data on GPU) picks the same neighbours; a distance that
    overflows x's dtype is +inf. Pairs involving a non-finite row are +inf, the diagonal is 0.
    """
    check_matrix("x", x)
    n = x.shape[0]
    xd = x.double()
    dist = torch.stack([((xd - xd[i]) ** 2).sum(dim=1) for i in range(n)]).to(x.dtype)
    ok = finite_rows(x)
    far = ~(ok[:, None] & ok[None, :])
    dist = torch.where(far, torch.full_like(dist, float("inf")), dist)
    dist.fill_diagonal_(0.0)
    return dist


def nnm_neighbours(x: torch.Tensor, f: int) -> torch.Tensor:
    """[n, n−f] indices of the n−f rows nearest to each row (itself included), ties to the lower index."""
    check_matrix("x", x)
    n = x.shape[0]
    check_f(f, n, "nnm")
    dist = pairwise_sq_distances(x)
    # A stable sort keeps equal distances in index order, so ties go to the lower index.
    return torch.sort(dist, dim=1, stable=True).indices[:, : n - f]


def nnm(x: torch.Tensor, f: int) -> torch.Tensor:
    """Nearest-neighbour mixing: row i ← mean of the n−f rows nearest to row i."""
    idx = nnm_neighbours(x, f)
    return torch.stack([x[idx[i]].mean(dim=0) for i in range(x.shape[0])])


def mean(x: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise mean (no defense)."""
    check_matrix("x", x)
    return x.mean(dim=0)


def coordinate_median(x: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median; with an even row count the mean of the two middle values."""
    check_matrix("x", x)
    n = x.shape[0]
    s = torch.sort(x, dim=0).values  # NaN sorts after +Inf
    k = n // 2
    if n % 2:
        return s[k].clone()
    return 0.5 * (s[k - 1] + s[k])


def trimmed_mean(x: torch.Tensor, f: int) -> torch.Tensor:
    """Coordinate-wise mean after dropping the f largest and f smallest values (requires 2f < n)."""
    check_matrix("x", x)
    n = x.shape[0]
    check_f(f, n, "trimmed-mean")
    s = torch.sort(x, dim=0).values
    return s[f : n - f].mean(dim=0)


__all__ = ["coordinate_median", "finite_rows", "mean", "nnm", "nnm_neighbours", "pairwise_sq_distances",
           "trimmed_mean"]
