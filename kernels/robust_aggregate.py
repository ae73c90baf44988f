"""Robust aggregation (optional NNM, then mean / median / trimmed mean) with one dispatch.

Work in progress: the torch path calls the reference in byzbn.defenses.functional; the Triton kernel
and the fast O(n·d) CPU path land here (issue 3).
"""
from __future__ import annotations

import torch

from byzbn._checks import check_f, check_matrix

RULES = ("mean", "median", "trimmed-mean")
BACKENDS = ("auto", "triton", "torch")


def robust_aggregate(x: torch.Tensor, f: int, rule: str, nnm: bool = True, backend: str = "auto") -> torch.Tensor:
    """Aggregate the submission matrix x [n, d] into [d]: NNM (if nnm) then the coordinate-wise rule."""
    from byzbn.defenses import functional as F

    check_matrix("x", x)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    n = x.shape[0]
    check_f(f, n, rule if rule != "mean" else "")
    if nnm:
        check_f(f, n, "nnm")
        x = F.nnm(x, f)
    if rule == "mean":
        return F.mean(x)
    if rule == "median":
        return F.coordinate_median(x)
    return F.trimmed_mean(x, f)
