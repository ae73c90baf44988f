"""Argument validation shared by the public functions: one ValueError naming argument and range."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_matrix(name: str, x, *, dtypes=(torch.float32, torch.float64)) -> None:
    """A submission matrix: a 2-D tensor [n, d] with n >= 1, d >= 1 and a supported float dtype."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [n, d], got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have shape [n, d] with n >= 1 and d >= 1, got {tuple(x.shape)}")
    if x.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {x.dtype}")


def check_int(name: str, value, low: int, high: int | None = None, why: str = "") -> int:
    """An integer in [low, high] (high inclusive, None = unbounded)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        rng = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}={value} is out of range: valid {rng}{' (' + why + ')' if why else ''}")
    return value


def check_f(f, n: int | None = None, rule: str = "") -> int:
    """The tolerated number of Byzantine rows, with the bound each rule needs (DESIGN.md §6)."""
    check_int("f", f, 0)
    if n is None:
        return f
    if rule == "trimmed-mean" and 2 * f >= n:
        raise ValueError(f"f={f} is out of range for trimmed-mean with n={n}: valid 0 <= f <= {(n - 1) // 2} (2f < n)")
    if rule == "median" and 2 * f >= n:
        raise ValueError(f"f={f} is out of range for median with n={n}: valid 0 <= f <= {(n - 1) // 2} (f < n/2)")
    if rule == "nnm" and n - f < 1:
        raise ValueError(f"f={f} is out of range for nnm with n={n}: valid 0 <= f <= {n - 1} (n - f >= 1)")
    if f > n:
        raise ValueError(f"f={f} is out of range with n={n}: valid 0 <= f <= {n}")
    return f
