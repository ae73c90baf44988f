"""The server's aggregation of one channel over a run: stateful rules remember, random ones draw per step.

A defense is pure: called twice on the same rows it gives the same aggregate. Two kinds of rule need
more from the run, and get it here (DESIGN.md §9):

- a stateful stage (`stateful = True`: centered clipping) starts from the previous aggregate of the
  same channel. A step may aggregate a channel several times (the statistics' two phases, means then
  variances; FedTAN's per layer): call k of a step starts from call k of the step before, zeros on the
  first step. Attacks that optimise against the defense see it bound to the first call's centre and
  their trial calls are never remembered;
- a random stage (`with_generator`: bucketing) draws from the run's generator of that step and channel.

Plain defenses pass through untouched. What is remembered is part of the run's state (checkpointed).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

Aggregator = Callable[[torch.Tensor], torch.Tensor]


class ChannelAggregation:
    """One channel's defense over a run, with the previous aggregates a stateful stage starts from."""

    def __init__(self, defense: Aggregator):
        self.defense = defense
        self.stateful = bool(getattr(defense, "stateful", False))
        self.randomized = bool(getattr(defense, "randomized", False))
        self.previous: list[torch.Tensor] = []

    def for_step(self, generator: torch.Generator) -> tuple[Aggregator, Aggregator]:
        """(what the server aggregates with at this step, what the attack optimises against)."""
        defense = self.defense.with_generator(generator) if self.randomized else self.defense
        if not self.stateful:
            return defense, defense
        return _Remembering(self, defense), defense.with_center(self._center(0))

    def _center(self, k: int) -> Optional[torch.Tensor]:
        return self.previous[k] if k < len(self.previous) else None

    def state_dict(self) -> list[torch.Tensor]:
        return list(self.previous)

    def load_state_dict(self, state: list[torch.Tensor]) -> None:
        self.previous = list(state)


class _Remembering:
    """The step's aggregator of a stateful defense: call k starts from the k-th aggregate of the last step."""

    def __init__(self, owner: ChannelAggregation, defense):
        self.owner, self.defense, self.calls = owner, defense, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        k, self.calls = self.calls, self.calls + 1
        out = self.defense.with_center(self.owner._center(k))(x)
        previous = self.owner.previous
        remembered = out.detach().clone()
        if k < len(previous):
            previous[k] = remembered
        else:
            previous.append(remembered)
        return out

    def __repr__(self) -> str:
        return repr(self.defense)


__all__ = ["ChannelAggregation"]
