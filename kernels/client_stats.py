"""Per-client BN statistics with one dispatch (work in progress: the Triton kernel lands in issue 3)."""
from __future__ import annotations

import torch

from byzbn import stats

BACKENDS = ("auto", "triton", "torch")


def client_stats(x: torch.Tensor, backend: str = "auto") -> stats.ClientStats:
    """Per-client, per-channel mean and biased variance of x [n, B, C, *spatial] (fp32 accumulation)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    return stats.client_stats(x)
