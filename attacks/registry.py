"""The attack registry, the call contract every attack meets, and the base class of the built-in rules.

An attack is built once (its parameters validated in `__init__`) and then called as
`attack(honest, context) -> Tensor[f, d]`: the rows the f Byzantine clients submit, given the honest
rows `honest` [h, d] with h = n − f and the run's AttackContext (n, f, defense, generator, step, ...).
Calls are pure apart from draws from context.generator: inputs are never mutated, and the rows have
honest's dtype and device.

Plugins register with `@register_attack(name)`: either a class (`__init__(self, **params)`,
`__call__(self, honest, context)`; deriving from Attack gives validation, the f = 0 case and the output
contract for free) or a plain function `fn(honest, context)` (wrapped in an Attack, so it gets the same
checks; a function takes no parameters — use a class for those). What the runner needs to know about an
attack it reads from the capabilities Attack declares (`needs_defense`, `needs_whole_submission`,
`poisons_data`), checked at registration: a `poisons_data` attack must define `poison(y, num_classes)`.
A plain class has the base's defaults (all False) unless it sets them.
"""
from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch

from byzbn._checks import check_matrix
from byzbn._registry import Registry, accepts_positional, defines
from byzbn.attacks.context import AttackContext


class Attack(abc.ABC):
    """Base class: validation, the f = 0 case and the output contract live here; subclasses implement `rows`."""

    name: ClassVar[str] = ""
    # The context must carry the server's defense (optimal attacks search against it).
    needs_defense: ClassVar[bool] = False
    # The attack reads every Byzantine row of the submission at once (it cannot run layer by layer, as
    # FedTAN's in-forward merge would ask).
    needs_whole_submission: ClassVar[bool] = False
    # Data poisoning: the Byzantine clients hold data and train on what poison(y, num_classes) returns;
    # what they submit is what that training produces (AttackContext.own_rows).
    poisons_data: ClassVar[bool] = False

    def __call__(self, honest: torch.Tensor, context: AttackContext) -> torch.Tensor:
        f = check_submission(honest, context)
        if self.needs_defense:
            require_defense(f"attack {self.name!r}", context)
        if f == 0:
            return honest.new_empty((0, honest.shape[1]))
        return check_rows(f"attack {self.name!r}", self.rows(honest, context), honest, f)

    @abc.abstractmethod
    def rows(self, honest: torch.Tensor, context: AttackContext) -> torch.Tensor:
        """The f Byzantine rows [f, d] for validated inputs with context.f >= 1."""

    def params(self) -> dict:
        """The validated parameters this attack was built with, by name."""
        return {k: getattr(self, k) for k in attack_parameters(self.name)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"make_attack({self.name!r}{', ' if args else ''}{args})"


class FunctionAttack(Attack):
    """An attack registered as a plain function fn(honest, context) -> [f, d]; takes no parameters."""

    fn = None  # set per registered function by _function_attack

    def rows(self, honest, context):
        return type(self).fn(honest, context)


def _function_attack(fn) -> type:
    # A class per function, so each registered function has its own name, docstring and repr.
    return type(f"FunctionAttack[{getattr(fn, '__name__', 'fn')}]", (FunctionAttack,),
                {"fn": staticmethod(fn), "__doc__": fn.__doc__, "__module__": getattr(fn, "__module__", __name__)})


def _plain_attack(name: str, obj) -> type:
    """A class defining __call__(self, honest, context) as it is; a function fn(honest, context) wrapped."""
    if isinstance(obj, type) and defines(obj, "__call__") and accepts_positional(obj.__call__, 3):
        return obj
    if not isinstance(obj, type) and callable(obj) and accepts_positional(obj, 2):
        return _function_attack(obj)
    raise ValueError(f"@register_attack({name!r}) must decorate an Attack subclass, a class defining "
                     f"__call__(self, honest, context) or a function fn(honest, context), got {obj!r}")


ATTACKS = Registry("attack", base=Attack, requires={"poisons_data": "poison"}, plain=_plain_attack)


def register_attack(name: str):
    """Decorator: file an attack class (or a function fn(honest, context)) in ATTACKS under `name`.

    Returns what it decorates unchanged, so a decorated function stays callable as written.
    """
    return ATTACKS.register(name)


register = register_attack  # another name for register_attack


def attack_parameters(name: str) -> list[str]:
    """The keyword parameters the attack `name` accepts (what make_attack validates against)."""
    return ATTACKS.parameters(name)


def make_attack(name: str, **params):
    """Build the attack registered as `name` with keyword parameters `params` (validated)."""
    return ATTACKS.make(name, **params)


def finite_float(name: str, value) -> float:
    """A finite real number given as int or float (bools are rejected: they are almost always a slip)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a finite float, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite float, got {value!r}")
    return value


def check_submission(honest, context) -> int:
    """Validate an attack call: honest rows [h, d] consistent with an AttackContext; returns f."""
    if not isinstance(context, AttackContext):
        raise ValueError(f"context must be a byzbn.attacks.AttackContext, got {type(context).__name__}")
    check_matrix("honest", honest)
    n, f = context.n, context.f
    if honest.shape[0] != n - f:
        raise ValueError(f"honest must have n - f = {n} - {f} = {n - f} rows, got {honest.shape[0]} "
                         f"(shape {tuple(honest.shape)})")
    return f


def require_defense(who: str, context: AttackContext) -> None:
    """Raise ValueError unless the context carries the server's defense (what optimal attacks search against)."""
    if context.defense is None:
        raise ValueError(f"{who} needs defense: a callable mapping the submission matrix [n, d] to [d] in its "
                         f"AttackContext, got None")


def check_rows(who: str, rows, honest: torch.Tensor, f: int) -> torch.Tensor:
    """The output contract: a tensor [f, d] with honest's dtype and device (ValueError otherwise)."""
    want = (f, honest.shape[1])
    if not isinstance(rows, torch.Tensor):
        raise ValueError(f"{who} must return a torch.Tensor of shape {list(want)}, got {type(rows).__name__}")
    if tuple(rows.shape) != want or rows.dtype != honest.dtype or rows.device != honest.device:
        raise ValueError(f"{who} must return rows of shape {list(want)}, dtype {honest.dtype} on {honest.device}; "
                         f"got shape {list(rows.shape)}, dtype {rows.dtype} on {rows.device}")
    return rows


def repeat_row(row: torch.Tensor, f: int) -> torch.Tensor:
    """f copies of one row [d] as a fresh [f, d] tensor (not an expanded view that aliases row)."""
    return row.unsqueeze(0).repeat(f, 1)


__all__ = ["ATTACKS", "Attack", "FunctionAttack", "register_attack", "register", "attack_parameters", "make_attack",
           "finite_float", "check_submission", "require_defense", "check_rows", "repeat_row"]
