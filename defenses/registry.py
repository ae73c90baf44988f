"""Registries of aggregation rules and pre-aggregators: the plugin contract of DESIGN.md §9.

A rule is a callable class, ByzFL style:

    @register_aggregator("my-rule")
    class MyRule(Aggregator):
        def __init__(self, f, beta=0.5): ...      # f from the federation; parameters by name, with defaults
        def __call__(self, x): ...                # x [n, d] -> [d], x not mutated, same dtype and device

A pre-aggregator is the same with `__call__(x) -> [m, d]`. Parameters are read from `__init__`'s
signature (named parameters only: a `**kwargs` catch-all declares none), so make_defense validates
them and lists the valid ones. What the runner needs to know about a rule it reads from the
capabilities the base classes declare, checked when the class is registered:

- `stateful = True`: the rule remembers between calls of a run (centered clipping's centre); it must
  define `with_center(center) -> a copy starting from center` (center None on the first step);
- `randomized = True`: the rule draws random numbers; it must define `with_generator(gen) -> a copy
  drawing from gen` (the run's generator of the step);
- `check_n(n)`: raise ValueError naming f and its valid range when the rule cannot run on n rows
  (the base checks 0 <= f <= n);
- `output_rows(n)` (pre-aggregators): the row count m returned for n rows (the base: m = n).

A plain class with `__init__(self, f, ...)` and `__call__(self, x)` may be registered too: it has the
base's defaults (not stateful, not randomized, 0 <= f <= n).
"""
from __future__ import annotations

import abc
from typing import ClassVar

import torch

from byzbn._checks import check_f
from byzbn._registry import Registry, accepts_positional, defines


class Aggregator(abc.ABC):
    """Base of an aggregation rule: validates f, checks 0 <= f <= n; subclasses implement __call__."""

    name: ClassVar[str] = ""
    # The rule keeps state between the calls of a run: it defines with_center(center) -> a copy.
    stateful: ClassVar[bool] = False
    # The rule draws random numbers: it defines with_generator(generator) -> a copy drawing from it.
    randomized: ClassVar[bool] = False

    def __init__(self, f: int):
        self.f = check_f(f)

    def check_n(self, n: int) -> None:
        """Raise ValueError naming f and its valid range if this rule cannot run on n rows."""
        check_f(self.f, n)

    @abc.abstractmethod
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [n, d] -> the aggregate [d] (x not mutated)."""

    def __repr__(self) -> str:
        return f"{self.name}(f={self.f})"


class PreAggregator(Aggregator):
    """Base of a pre-aggregator: as Aggregator, mapping [n, d] to [output_rows(n), d]."""

    def output_rows(self, n: int) -> int:
        """The number of rows returned for n input rows."""
        return n

    @abc.abstractmethod
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [n, d] -> [output_rows(n), d] (x not mutated)."""


def _plain_stage(decorator: str):
    """What a registry does with a class that does not derive from the base: check its call, file it."""

    def plain(name: str, cls):
        what = f"@{decorator}({name!r}) must decorate a class with __init__(self, f, **params) and __call__(self, x)"
        if not isinstance(cls, type):
            raise ValueError(f"{what}, got {cls!r}")
        if not defines(cls, "__call__") or not accepts_positional(cls.__call__, 2):
            raise ValueError(f"{what}: {cls.__name__} has no __call__(self, x)")
        return cls

    return plain


_STAGE_METHODS = {"stateful": "with_center", "randomized": "with_generator"}
AGGREGATORS = Registry("aggregator", base=Aggregator, context=("f",), requires=_STAGE_METHODS,
                       plain=_plain_stage("register_aggregator"))
PRE_AGGREGATORS = Registry("pre-aggregator", base=PreAggregator, context=("f",), requires=_STAGE_METHODS,
                           plain=_plain_stage("register_pre_aggregator"))
DEFENSES = AGGREGATORS  # another name for the rules' registry


def register_aggregator(name: str):
    """Class decorator: file an aggregation rule ([n, d] -> [d]) in AGGREGATORS under `name` (unique)."""
    return AGGREGATORS.register(name)


def register_pre_aggregator(name: str):
    """Class decorator: file a pre-aggregator ([n, d] -> [m, d]) in PRE_AGGREGATORS under `name` (unique)."""
    return PRE_AGGREGATORS.register(name)


def aggregator_class(name: str) -> type:
    """The class registered as aggregator `name` (ValueError listing the valid names otherwise)."""
    return AGGREGATORS.lookup(name)


def pre_aggregator_class(name: str) -> type:
    """The class registered as pre-aggregator `name` (ValueError listing the valid names otherwise)."""
    return PRE_AGGREGATORS.lookup(name)


def aggregator_parameters(name: str) -> list[str]:
    """The keyword parameters (besides f) that aggregator `name` accepts."""
    return AGGREGATORS.parameters(name)


def pre_aggregator_parameters(name: str) -> list[str]:
    """The keyword parameters (besides f) that pre-aggregator `name` accepts."""
    return PRE_AGGREGATORS.parameters(name)


__all__ = ["AGGREGATORS", "PRE_AGGREGATORS", "DEFENSES", "register_aggregator", "register_pre_aggregator",
           "aggregator_class", "pre_aggregator_class", "aggregator_parameters", "pre_aggregator_parameters",
           "Aggregator", "PreAggregator"]
