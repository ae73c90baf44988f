"""Row-level helpers of the selection rules (Krum, MDA, SMEA, CAF, MoNNA): which rows are finite, the
distances to one row, and the weighted mean of chosen rows, each in one pass over x [n, d], O(d) extra.

- finite_rows_from_distances(x, dist): a finite distance between two rows proves both finite, so only
  rows without one are read again (a full isfinite pass over x would cost as much as the rule).
- sq_distances_to_row(x, i): row i of byzbn.kernels.pairwise_sq_distances (same semantics: +inf to a
  non-finite row, 0 to itself). CUDA float32 takes that Triton kernel's row; elsewhere one pass
  summing (x_j − x_i)² in float64 by cache-sized column chunks (the float64 difference of float32
  values is exact), rounded once to x's dtype: n·d work instead of the matrix's n²·d.
- selection_distances(x) / selection_distances_to_row(x, i): the same as float64 numpy arrays for the
  rules' comparisons, recomputed from rows scaled by a power of two where float32 distances overflowed.
- weighted_row_mean(x, weights): Σ w_j x_j / Σ w_j as matrix-vector products over runs of consecutive
  rows with w_j > 0, so a row of weight 0 never touches the output even when it holds NaN/±Inf (a
  product with all n rows would turn 0·Inf into NaN) and no [m, d] copy of the chosen rows is made.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from byzbn._checks import check_int, check_matrix
from byzbn._threads import one_cpu_thread
from byzbn.kernels import _backend
from byzbn.kernels import pairwise_distances as _dist

CPU_CHUNK_ELEMENTS = 1 << 18   # n × columns per float64 chunk (2 MB: stays in L2)


def finite_rows_from_distances(x: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """[n] bool on x's device: rows without NaN/±Inf, given dist = pairwise_sq_distances(x)."""
    n = x.shape[0]
    off_diagonal = torch.isfinite(dist).to(x.device)
    proven = off_diagonal.sum(dim=1) > 1       # a finite distance to another row (the diagonal is 0)
    if n == 1:
        proven = torch.zeros_like(proven)
    finite = proven.clone()
    suspects = (~proven).nonzero().flatten()
    if suspects.numel():
        finite[suspects] = torch.isfinite(x[suspects]).all(dim=1)
    return finite


def _sq_distances_to_row_torch(x: torch.Tensor, i: int) -> torch.Tensor:
    n, d = x.shape
    step = max(1, CPU_CHUNK_ELEMENTS // n) if x.device.type == "cpu" else d
    acc = torch.zeros(n, dtype=torch.float64, device=x.device)
    buf = torch.empty(n, min(step, d), dtype=torch.float64, device=x.device)
    for c0 in range(0, d, step):
        chunk = x[:, c0:c0 + step]
        z = buf[:, :chunk.shape[1]]
        z.copy_(chunk).sub_(chunk[i].double()).square_()
        acc += z.sum(dim=1)
    # NaN marks a non-finite row (Inf − Inf, NaN − y); an Inf row gives +inf already.
    out = acc.nan_to_num(nan=float("inf"), posinf=float("inf")).to(x.dtype)
    if not torch.isfinite(x[i]).all():
        out.fill_(float("inf"))          # a non-finite pivot is infinitely far from every row
    out[i] = 0.0
    return out


def sq_distances_to_row(x: torch.Tensor, i: int, backend: str = "auto") -> torch.Tensor:
    """[n] squared Euclidean distances from row i to every row (row i of pairwise_sq_distances(x))."""
    check_matrix("x", x)
    check_int("i", i, 0, x.shape[0] - 1, "a row of x")
    chosen = _backend.choose(backend, x, _dist._pairwise_sq_dist_kernel, _dist.unsupported_reason(x))
    if chosen == "triton":
        return _dist.sq_distances_triton(x)[0][i]
    with torch.no_grad(), one_cpu_thread(x.device):
        return _sq_distances_to_row_torch(x, i)


def _rescaled(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The rows `rows` of x times the power of two that brings their largest magnitude to [0.5, 1)."""
    top = float(x[rows].abs().max())
    return x[rows] * 2.0 ** -math.frexp(top)[1] if top > 0 else x[rows]


def selection_distances(x: torch.Tensor, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(float64 [n, n] squared distances, bool [n] finite rows) for rules that compare distances.

    pairwise_sq_distances(x) in float64, except that when a distance between finite rows overflowed x's
    dtype (float32 rows ~1e19), the finite rows' distances are recomputed from the rows scaled by a power
    of two (exact): every rule that compares distances, or eigenvalues built from them, picks the same
    rows from distances scaled by one positive factor.
    """
    dist = _dist.pairwise_sq_distances(x, backend=backend)
    finite = finite_rows_from_distances(x, dist)
    d2 = dist.detach().double().cpu().numpy().copy()
    ok = finite.cpu().numpy()
    if np.isinf(d2[np.ix_(ok, ok)]).any():
        rows = finite.nonzero().flatten()
        scaled = _dist.pairwise_sq_distances(_rescaled(x.detach(), rows), backend=backend)
        d2[np.ix_(ok, ok)] = scaled.double().cpu().numpy()
    return d2, ok


def selection_distances_to_row(x: torch.Tensor, i: int, backend: str = "auto") -> np.ndarray:
    """float64 [n] squared distances from the finite row i, rescaled like selection_distances on overflow."""
    dist = sq_distances_to_row(x, i, backend=backend).detach().double().cpu().numpy()
    far = np.flatnonzero(np.isinf(dist))
    if far.size and bool(torch.isfinite(x[far]).all(dim=1).any()):
        rows = torch.isfinite(x).all(dim=1).nonzero().flatten()
        scaled = sq_distances_to_row(_rescaled(x.detach(), rows), int((rows == i).nonzero()), backend=backend)
        dist[rows.cpu().numpy()] = scaled.double().cpu().numpy()
    return dist


def _runs(rows: list[int]) -> list[tuple[int, int]]:
    """[start, stop) ranges of consecutive indices in the sorted list rows."""
    runs: list[tuple[int, int]] = []
    for r in rows:
        if runs and runs[-1][1] == r:
            runs[-1] = (runs[-1][0], r + 1)
        else:
            runs.append((r, r + 1))
    return runs


def weighted_row_mean(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[d] Σ_j w_j x_j / Σ_j w_j over the rows with w_j > 0 (weights [n] >= 0, not all 0), in x's dtype."""
    check_matrix("x", x)
    w = torch.as_tensor(weights, dtype=torch.float64).flatten().cpu()
    if w.numel() != x.shape[0] or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or w.sum() <= 0:
        raise ValueError(f"weights must be {x.shape[0]} finite values >= 0, not all 0, got {weights!r}")
    w = w / w.sum()
    used = (w > 0).nonzero().flatten().tolist()
    out = None
    for start, stop in _runs(used):
        part = w[start:stop].to(dtype=x.dtype, device=x.device) @ x[start:stop]
        out = part if out is None else out.add_(part)
    return out


def mean_of_rows(x: torch.Tensor, rows) -> torch.Tensor:
    """[d] the mean of the rows `rows` of x (distinct indices), without copying them."""
    w = torch.zeros(x.shape[0], dtype=torch.float64)
    w[torch.as_tensor(rows, dtype=torch.long)] = 1.0
    return weighted_row_mean(x, w)


__all__ = ["finite_rows_from_distances", "sq_distances_to_row", "selection_distances", "selection_distances_to_row",
           "weighted_row_mean", "mean_of_rows"]
