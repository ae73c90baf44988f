"""Reproducible randomness of a run: every random draw comes from (run seed, step, stream).

Nothing is carried from step to step, so a resumed run draws exactly what an uninterrupted one does,
and the global torch RNG of the caller is left as it was (a pass runs under fork_rng).
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

BATCH_STREAM = 0
DROPOUT_STREAM = 1
CLIENT_DROPOUT_STREAM = 2            # + client index: FedAvg's per-client loop
ATTACK_STREAMS = {"stats": 1 << 32, "grads": (1 << 32) + 1}   # far from the client streams
AGGREGATION_STREAMS = {"stats": (1 << 32) + 2, "grads": (1 << 32) + 3}   # random pre-aggregators (bucketing)


def step_seed(seed: int, step: int, stream: int, *more: int) -> int:
    """A 63-bit seed for (run seed, step, stream[, client, ...]), independent across all of them."""
    return int(np.random.SeedSequence([seed, step, stream, *more]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def generator(seed: int, step: int, stream: int, *more: int) -> torch.Generator:
    """A CPU generator seeded for (run seed, step, stream[, client, ...])."""
    return torch.Generator().manual_seed(step_seed(seed, step, stream, *more))


@contextmanager
def seeded_torch_rng(seed: int, device: torch.device):
    """Seed torch's global RNG (dropout draws from it) for the enclosed pass, restoring it afterwards."""
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


__all__ = ["BATCH_STREAM", "DROPOUT_STREAM", "CLIENT_DROPOUT_STREAM", "ATTACK_STREAMS", "AGGREGATION_STREAMS",
           "step_seed", "generator",
           "seeded_torch_rng"]
