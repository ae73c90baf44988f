"""Covariance spectra of subsets of rows from their squared distances alone (classical MDS).

For rows x_i with weights c_i (c̄ = c / Σc), the centred Gram matrix B_ij = ⟨x_i − μ_c, x_j − μ_c⟩,
μ_c = Σ c̄_i x_i, is −½ (I − 1c̄ᵀ) D² (I − c̄1ᵀ) with D²_ij = ‖x_i − x_j‖². The scatter matrix
Σ_i c_i (x_i − μ_c)(x_i − μ_c)ᵀ (d × d) and W^½ B W^½ (n × n, W = diag c) share their nonzero eigenvalues,
so SMEA and CAF need no pass over x beyond the distances (byzbn.kernels' pairwise_sq_distances: the
Triton kernel on CUDA, the exact CPU path otherwise), and the d × d covariance is never formed.
Distances are translation invariant, so the rows' offset cannot cancel the spread (a Gram matrix of the
raw rows would). Everything here is float64 on n × n matrices: numpy arrays, with the eigensolvers and
factorizations of torch run by the callers under one CPU thread (numpy's OpenBLAS spreads a 30 × 30
eigensolve over its threads, which on a busy 2-core machine made each call 20-40x slower, measured).
"""
from __future__ import annotations

import numpy as np
import torch


def centred_gram(d2: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """[n, n] Gram matrix of the rows centred at their weighted mean (uniform weights by default)."""
    d2 = np.asarray(d2, dtype=np.float64)
    n = d2.shape[0]
    c = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    r = d2 @ c
    return -0.5 * (d2 - r[:, None] - r[None, :] + c @ r)


def subset_spectra(gram: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """[m, s] eigenvalues, largest first, of the scatter matrices of the row sets `sets` [m, s].

    gram: any Gram matrix of the rows (e.g. centred_gram(d2)); each set is re-centred at its own mean.
    """
    sub = gram[sets[:, :, None], sets[:, None, :]]
    sub = sub - sub.mean(axis=2, keepdims=True) - sub.mean(axis=1, keepdims=True) + sub.mean(axis=(1, 2), keepdims=True)
    return torch.linalg.eigvalsh(torch.from_numpy(sub)).numpy()[:, ::-1]


def top_eigenpair(gram_c: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray]:
    """(λ_max, τ): the largest eigenvalue of the weighted covariance Σ_i c̄_i d_i d_iᵀ (d_i = x_i − μ_c)
    and τ_i = (d_iᵀ v)² for its unit eigenvector v, from gram_c = centred_gram(d2, weights).

    With K = W^½ B W^½ / Σc and K u = λ u, v = Dᵀ W^½ u / ‖·‖ where ‖Dᵀ W^½ u‖² = Σc · λ, so
    d_iᵀ v = (B W^½ u)_i / √(Σc · λ). λ = 0 (all weighted rows equal) gives τ = 0.
    """
    c = np.asarray(weights, dtype=np.float64)
    total = c.sum()
    root = np.sqrt(c)
    k = root[:, None] * gram_c * root[None, :] / total
    values, vectors = (t.numpy() for t in torch.linalg.eigh(torch.from_numpy(k)))
    lam, u = float(values[-1]), vectors[:, -1]
    if lam <= 0.0:
        return 0.0, np.zeros_like(c)
    proj = gram_c @ (root * u) / np.sqrt(total * lam)
    return lam, proj * proj


__all__ = ["centred_gram", "subset_spectra", "top_eigenpair"]
