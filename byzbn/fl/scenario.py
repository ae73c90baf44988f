"""A scenario: who attacks which channel, and how the server aggregates (one column of the comparison)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from byzbn._checks import check_int
from byzbn.attacks import AttackContext
from byzbn.defenses import make_defense
from byzbn.schemes import StatsChannel

SCENARIOS = ("no-attack", "attack", "attack+defense")
TARGETS = {"stats": frozenset({"stats"}), "grads": frozenset({"grads"}), "both": frozenset({"stats", "grads"})}


@dataclass(frozen=True)
class Scenario:
    """One column of the comparison: who attacks what, and how the server aggregates.

    no-attack: the Byzantine clients submit the no-op honest mean, the server averages;
    attack: the attack on `targets`, the server averages (no defense);
    attack+defense: the attack on `targets`, the server aggregates those channels with `defense`.
    """

    name: str
    n: int
    f: int
    attack: Optional[Callable]
    aggregator: Callable[[torch.Tensor], torch.Tensor]  # for the attacked channels
    mean: Callable[[torch.Tensor], torch.Tensor]        # for the others
    targets: frozenset
    fields: str = "both"

    def attacks(self, channel: str) -> bool:
        return self.attack is not None and channel in self.targets

    def channel_attack(self, channel: str) -> Optional[Callable]:
        return self.attack if self.attacks(channel) else None

    def channel_aggregator(self, channel: str) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.aggregator if self.attacks(channel) else self.mean

    def stats_channel(self, context: AttackContext) -> StatsChannel:
        """The statistics channel of one step; `context` is the attack's view of that step."""
        return StatsChannel(self.channel_attack("stats"), self.fields, self.channel_aggregator("stats"), context)


def make_scenario(name: str, n: int, f: int, attack: Optional[Callable], defense: Callable,
                  target: str = "stats", fields: str = "both") -> Scenario:
    """The scenario `name` (one of SCENARIOS) for n clients with the f last ones Byzantine."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}: valid scenarios are {list(SCENARIOS)}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {sorted(TARGETS)}, got {target!r}")
    check_int("n", n, 2)
    check_int("f", f, 0, (n - 1) // 2, why="f < n/2")
    mean = make_defense("mean", f)
    if name == "no-attack":
        return Scenario(name, n, f, None, mean, mean, TARGETS[target], fields)
    if attack is None:
        raise ValueError(f"scenario {name!r} needs an attack, got None")
    return Scenario(name, n, f, attack, mean if name == "attack" else defense, mean, TARGETS[target], fields)


__all__ = ["SCENARIOS", "TARGETS", "Scenario", "make_scenario"]
