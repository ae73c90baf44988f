"""Registries of aggregation rules and pre-aggregators: the plugin contract of DESIGN.md §9.

A rule is a callable class, ByzFL style:

    @register_aggregator("my-rule")
    class MyRule:
        def __init__(self, f, beta=0.5): ...      # f from the federation; parameters by name, with defaults
        def __call__(self, x): ...                # x [n, d] -> [d], x not mutated, same dtype and device

A pre-aggregator is the same with `__call__(x) -> [m, d]`. Parameters are read from `__init__`'s
signature (named parameters only: a `**kwargs` catch-all declares none), so make_defense validates
them and lists the valid ones. Optional methods, which the bases below provide:

- `check_n(n)`: raise ValueError naming f and its valid range when the object cannot run on n rows
  (without it, 0 <= f <= n is required);
- `output_rows(n)` (pre-aggregators): the row count m it returns for n rows (without it, m = n).

Deriving from Aggregator / PreAggregator gives f's validation, check_n and a repr.
"""
from __future__ import annotations

import inspect
from typing import ClassVar

import torch

from byzbn._checks import check_f
from byzbn._registry import accepts_positional, file_class, keyword_parameters, lookup

AGGREGATORS: dict[str, type] = {}
PRE_AGGREGATORS: dict[str, type] = {}
DEFENSES = AGGREGATORS  # the registry's name before pre-aggregators had their own


def _check_plugin_class(decorator: str, name: str, cls) -> None:
    what = f"@{decorator}({name!r}) must decorate a class with __init__(self, f, **params) and __call__(self, x)"
    if not isinstance(cls, type):
        raise ValueError(f"{what}, got {cls!r}")
    if not any("__call__" in vars(k) for k in cls.__mro__ if k is not object) or not accepts_positional(
            cls.__call__, 2):
        raise ValueError(f"{what}: {cls.__name__} has no __call__(self, x)")
    if "f" not in inspect.signature(cls.__init__).parameters:
        raise ValueError(f"{what}: {cls.__name__}.__init__ takes no parameter f")


def register_aggregator(name: str):
    """Class decorator: file an aggregation rule ([n, d] -> [d]) in AGGREGATORS under `name` (unique)."""

    def decorate(cls):
        _check_plugin_class("register_aggregator", name, cls)
        return file_class(AGGREGATORS, "aggregator", name, cls)

    return decorate


def register_pre_aggregator(name: str):
    """Class decorator: file a pre-aggregator ([n, d] -> [m, d]) in PRE_AGGREGATORS under `name` (unique)."""

    def decorate(cls):
        _check_plugin_class("register_pre_aggregator", name, cls)
        return file_class(PRE_AGGREGATORS, "pre-aggregator", name, cls)

    return decorate


def aggregator_class(name: str) -> type:
    """The class registered as aggregator `name` (ValueError listing the valid names otherwise)."""
    return lookup(AGGREGATORS, "aggregator", name)


def pre_aggregator_class(name: str) -> type:
    """The class registered as pre-aggregator `name` (ValueError listing the valid names otherwise)."""
    return lookup(PRE_AGGREGATORS, "pre-aggregator", name)


def aggregator_parameters(name: str) -> list[str]:
    """The keyword parameters (besides f) that aggregator `name` accepts."""
    return keyword_parameters(aggregator_class(name), skip=("f",))


def pre_aggregator_parameters(name: str) -> list[str]:
    """The keyword parameters (besides f) that pre-aggregator `name` accepts."""
    return keyword_parameters(pre_aggregator_class(name), skip=("f",))


class Aggregator:
    """Optional base of an aggregation rule: validates f, checks 0 <= f <= n; subclasses implement __call__."""

    name: ClassVar[str] = ""

    def __init__(self, f: int):
        self.f = check_f(f)

    def check_n(self, n: int) -> None:
        """Raise ValueError naming f and its valid range if this rule cannot run on n rows."""
        check_f(self.f, n)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(x [n, d]) -> [d]")

    def __repr__(self) -> str:
        return f"{self.name}(f={self.f})"


class PreAggregator(Aggregator):
    """Optional base of a pre-aggregator: as Aggregator, mapping [n, d] to [output_rows(n), d]."""

    def output_rows(self, n: int) -> int:
        """The number of rows returned for n input rows."""
        return n

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(x [n, d]) -> [m, d]")


__all__ = ["AGGREGATORS", "PRE_AGGREGATORS", "DEFENSES", "register_aggregator", "register_pre_aggregator",
           "aggregator_class", "pre_aggregator_class", "aggregator_parameters", "pre_aggregator_parameters",
           "Aggregator", "PreAggregator"]
