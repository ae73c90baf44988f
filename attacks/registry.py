"""The attack registry and the base class every attack rule derives from (DESIGN.md §5, §8).

An attack is built once (its parameters validated in `__init__`) and then called as
`attack(honest, n, f, defense=None) -> Tensor[f, d]`: the rows the f Byzantine clients submit, given
the honest rows `honest` [h, d] with h = n − f. Calls are pure: inputs are never mutated and the
same inputs give the same rows, with honest's dtype and device.
"""
from __future__ import annotations

import abc
import math
from typing import Callable, Optional

import torch

from byzbn._checks import check_f, check_int, check_matrix
from byzbn._registry import check_parameters, file_class, keyword_parameters

Defense = Callable[[torch.Tensor], torch.Tensor]

ATTACKS: dict[str, type["Attack"]] = {}


def register(name: str):
    """Class decorator: file an Attack subclass in ATTACKS under `name` (names are unique)."""

    return lambda cls: file_class(ATTACKS, "attack", name, cls, Attack)


def attack_parameters(name: str) -> list[str]:
    """The keyword parameters the attack `name` accepts (what make_attack validates against)."""
    return keyword_parameters(_lookup(name))


def make_attack(name: str, **params) -> "Attack":
    """Build the attack registered as `name` with keyword parameters `params` (validated)."""
    check_parameters("attack", name, params, attack_parameters(name))
    return ATTACKS[name](**params)


def _lookup(name) -> type["Attack"]:
    if not isinstance(name, str) or name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}: valid attacks are {sorted(ATTACKS)}")
    return ATTACKS[name]


def finite_float(name: str, value) -> float:
    """A finite real number given as int or float (bools are rejected: they are almost always a slip)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a finite float, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite float, got {value!r}")
    return value


def check_submission(honest, n, f) -> int:
    """Validate an attack call's honest rows [h, d] against n and f; returns f."""
    check_matrix("honest", honest)
    check_int("n", n, 1)
    check_f(f, n)
    h = honest.shape[0]
    if h != n - f:
        raise ValueError(f"honest must have n - f = {n} - {f} = {n - f} rows, got {h} (shape {tuple(honest.shape)})")
    return f


def check_defense(defense, required: bool, who: str) -> Optional[Defense]:
    if defense is None:
        if required:
            raise ValueError(f"{who} needs defense: a callable mapping the submission matrix [n, d] to [d], got None")
        return None
    if not callable(defense):
        raise ValueError(f"defense must be None or a callable [n, d] -> [d], got {type(defense).__name__}")
    return defense


def repeat_row(row: torch.Tensor, f: int) -> torch.Tensor:
    """f copies of one row [d] as a fresh [f, d] tensor (not an expanded view that aliases row)."""
    return row.unsqueeze(0).repeat(f, 1)


class Attack(abc.ABC):
    """Base class: validation and the f = 0 case live here; subclasses implement `rows`."""

    name: str = ""
    needs_defense: bool = False

    def __call__(self, honest: torch.Tensor, n: int, f: int, defense: Optional[Defense] = None) -> torch.Tensor:
        f = check_submission(honest, n, f)
        defense = check_defense(defense, self.needs_defense, f"attack {self.name!r}")
        if f == 0:
            return honest.new_empty((0, honest.shape[1]))
        out = self.rows(honest, n, f, defense)
        assert out.shape == (f, honest.shape[1]) and out.dtype == honest.dtype, (self.name, out.shape, out.dtype)
        return out

    @abc.abstractmethod
    def rows(self, honest: torch.Tensor, n: int, f: int, defense: Optional[Defense]) -> torch.Tensor:
        """The f Byzantine rows [f, d] for validated inputs with f >= 1."""

    def params(self) -> dict:
        """The validated parameters this attack was built with, by name."""
        return {k: getattr(self, k) for k in attack_parameters(self.name)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"make_attack({self.name!r}{', ' if args else ''}{args})"
