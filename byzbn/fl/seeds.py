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
PARTICIPATION_STREAM = (1 << 32) + 4   # the per-step client sample of partial participation
PROBE_STREAM = (1 << 32) + 5   # the diagnostics' fixed probe batch and its passes' dropout
WORD = 1 << 32


def _words(components: tuple) -> list[int]:
    """The components as a SeedSequence entropy that no other tuple gives: two 32-bit words per component
    (fixed width: numpy splits a larger int into as many words as it needs, so (t, 2^32) would read as
    (t, 0, 1)), then their number (never 0: numpy drops trailing zero words, so (t, s) would equal (t, s, 0))."""
    words = []
    for value in components:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) < WORD * WORD:
            raise ValueError(f"seed components must be ints in [0, 2^64), got {value!r}")
        words += [int(value) % WORD, int(value) // WORD]
    return words + [len(components)]


def step_seed(seed: int, step: int, stream: int, *more: int) -> int:
    """A 63-bit seed for (run seed, step, stream[, client, ...]), independent across all of them: distinct
    tuples (of any length) give distinct SeedSequence entropies."""
    entropy = _words((seed, step, stream, *more))
    return int(np.random.SeedSequence(entropy).generate_state(2, np.uint64)[0] >> np.uint64(1))


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
           "PARTICIPATION_STREAM", "PROBE_STREAM",
           "step_seed", "generator",
           "seeded_torch_rng"]
