"""A scenario: who attacks which channel, and how the server aggregates (one column of the comparison)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from byzbn._checks import check_int
from byzbn.attacks import poisons_data
from byzbn.defenses import make_defense

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


def incompatibility(scheme, attack: Optional[Callable], targets) -> Optional[str]:
    """Why `attack` on `targets` cannot run against scheme (a Scheme or its class), or None when it can."""
    if attack is None:
        return None
    if poisons_data(attack) and scheme.couples_clients:
        return (f"attack {attack!r} poisons the Byzantine clients' data, which scheme {scheme.name!r} cannot hold: "
                f"its clients' batches are coupled in every pass")
    if getattr(attack, "needs_whole_submission", False) and scheme.sync_layers and "stats" in targets:
        return (f"attack {attack!r} reads a statistics row of all BN layers, which scheme {scheme.name!r} never "
                f"submits (it exchanges the statistics layer by layer): attack its gradients only (--target grads)")
    return None


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
    if name == "attack" and f == 0:  # nobody submits for the attack and the server averages: the no-attack run
        return Scenario(name, n, f, None, mean, mean, TARGETS[target], fields)
    if attack is None:
        raise ValueError(f"scenario {name!r} needs an attack, got None")
    return Scenario(name, n, f, attack, mean if name == "attack" else defense, mean, TARGETS[target], fields)


__all__ = ["SCENARIOS", "TARGETS", "Scenario", "incompatibility", "make_scenario"]
