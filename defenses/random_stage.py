"""What a randomized rule or pre-aggregator shares: the generator it draws from (DESIGN.md §9's `randomized`)."""
from __future__ import annotations

import copy
from typing import ClassVar, Optional

import torch


class DrawsFromGenerator:
    """Mixin of a random stage with an int attribute `seed`: with_generator(gen) returns a copy drawing from
    gen (a run passes each step's generator); stand-alone, every call draws from a fresh generator seeded
    with `seed`, so a call is reproducible."""

    randomized: ClassVar[bool] = True
    generator: Optional[torch.Generator] = None
    seed: int = 0

    def with_generator(self, generator: Optional[torch.Generator]):
        """A copy drawing from `generator` (None: from `seed` again); self is unchanged."""
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        stage = copy.copy(self)
        stage.generator = generator
        return stage

    def call_generator(self) -> torch.Generator:
        """The generator this call draws from: the one given by with_generator, else a fresh one from `seed`."""
        return self.generator if self.generator is not None else torch.Generator().manual_seed(self.seed)


__all__ = ["DrawsFromGenerator"]
