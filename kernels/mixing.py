"""Nearest-neighbour mixing (NNM) of a submission matrix x [n, d]: row i ← mean of its n − f nearest rows.

Semantics of byzbn.kernels.reference.nnm (Euclidean distances, the row itself included, ties to the
lower index, non-finite rows infinitely far, a mixed row the IEEE mean of its selected rows), computed as
1. distances (byzbn.kernels.pairwise_distances: the Triton kernel on CUDA, the exact CPU path otherwise),
   then the n − f nearest rows of every row as a 0/1 mixing matrix W (a stable sort of the [n, n] matrix);
2. W·x / (n − f) as a matrix product (never an [n, n − f, d] gather), by column chunks on CPU.
The product would turn 0·Inf into NaN, so it only sees the finite rows; the few non-finite rows are added
afterwards to the mixed rows that selected them (the same IEEE outcome as the reference's sum).
robust_aggregate's Triton kernel fuses step 2 with the coordinate-wise rule; this module gives the mixed
rows themselves (for a pre-aggregator followed by any rule).
"""
from __future__ import annotations

import torch

from byzbn._checks import check_f, check_matrix
from byzbn._threads import one_cpu_thread
from byzbn.kernels import _backend, reference
from byzbn.kernels import pairwise_distances as _dist

CPU_CHUNK_ELEMENTS = 1 << 19   # n × columns per CPU product (2 MB of fp32 stays in cache)


def nnm_weights(dist: torch.Tensor, f: int) -> torch.Tensor:
    """[n, n] 0/1 mixing matrix in dist's dtype: row i marks the n − f nearest rows (ties: lower index)."""
    n = dist.shape[0]
    idx = torch.sort(dist, dim=1, stable=True).indices[:, : n - f]
    return torch.zeros_like(dist).scatter_(1, idx, 1.0)


def mix_chunk(x_chunk: torch.Tensor, w: torch.Tensor, finite: torch.Tensor, bad: list[int], k: int) -> torch.Tensor:
    """W·x_chunk / k with IEEE semantics for the non-finite rows `bad` (see the module docstring)."""
    if not bad:
        return (w @ x_chunk).div_(k)
    y = w[:, finite] @ x_chunk[finite]
    for j in bad:
        y[w[:, j] != 0] += x_chunk[j]
    return y.div_(k)


def mix_rows(x: torch.Tensor, dist: torch.Tensor, finite: torch.Tensor, f: int) -> torch.Tensor:
    """The NNM rows [n, d] of x from its distances: whole on GPUs, by cache-sized column chunks on CPU."""
    n, d = x.shape
    w = nnm_weights(dist.to(x.device), f)
    bad = (~finite).nonzero().flatten().tolist()
    if x.device.type != "cpu":
        return mix_chunk(x, w, finite, bad, n - f)
    out = torch.empty_like(x)
    step = max(1, CPU_CHUNK_ELEMENTS // n)
    for c0 in range(0, d, step):
        out[:, c0:c0 + step] = mix_chunk(x[:, c0:c0 + step], w, finite, bad, n - f)
    return out


def nearest_neighbour_mixing(x: torch.Tensor, f: int, backend: str = "auto") -> torch.Tensor:
    """The NNM rows [n, d] of the submission matrix x [n, d] (row i ← mean of the n − f rows nearest to it).

    backend: "auto" (the Triton distance kernel and a torch product for CUDA float32 with n <= 256, the
    torch fast path otherwise), "triton" (raises ValueError when it cannot run) or "torch". When x
    requires grad, "auto"/"torch" return the differentiable reference (byzbn.kernels.reference.nnm).
    """
    check_matrix("x", x)
    check_f(f, x.shape[0], "nnm")
    chosen = _backend.choose(backend, x, _dist._pairwise_sq_dist_kernel, _dist.unsupported_reason(x))
    if chosen == "triton":
        with torch.no_grad():
            dist, finite = _dist.sq_distances_triton(x)
            return mix_rows(x, dist, finite, f)
    if _backend.needs_grad(x):
        return reference.nnm(x, f)
    with torch.no_grad(), one_cpu_thread(x.device):
        dist, finite = _dist.sq_distances_torch(x)
        return mix_rows(x, dist, finite, f)
