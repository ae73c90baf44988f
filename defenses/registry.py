"""Registries of robust aggregation rules and pre-aggregators (DESIGN.md §6, §8).

A defense is a small callable: it validates f, the pre-aggregator and its parameters in `__init__`,
checks the bounds that need the row count n at call time, and maps a submission matrix [n, d] to
one vector [d]. The computation itself is delegated to `byzbn.kernels.robust_aggregate`, so CUDA
inputs run the fused Triton kernel and everything else the torch path, with one semantics.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from byzbn._checks import check_f, check_matrix
from byzbn._registry import check_parameters, file_class
from byzbn.defenses import functional

DEFENSES: dict[str, type["Defense"]] = {}
PRE_AGGREGATORS: dict[str, type["PreAggregator"]] = {}


def _valid_names(registry: dict) -> list[str]:
    return sorted(registry)


def register(cls: type["Defense"]) -> type["Defense"]:
    """Class decorator: add a Defense subclass to DEFENSES under its `name`."""
    return file_class(DEFENSES, "defense", cls.name, cls)


def register_pre(cls: type["PreAggregator"]) -> type["PreAggregator"]:
    """Class decorator: add a PreAggregator subclass to PRE_AGGREGATORS under its `name`."""
    return file_class(PRE_AGGREGATORS, "pre-aggregator", cls.name, cls)


def _check_params(kind: str, name: str, params: dict[str, Any], valid: dict[str, Any]) -> dict[str, Any]:
    check_parameters(kind, name, params, sorted(valid))
    return {**valid, **params}


class PreAggregator(ABC):
    """Maps the submission matrix [n, d] to mixed rows [n, d] before the coordinate-wise rule."""

    name: ClassVar[str]
    PARAMS: ClassVar[dict[str, Any]] = {}

    def __init__(self, f: int, **params):
        self.f = check_f(f)
        self.params = _check_params("pre-aggregator", self.name, params, self.PARAMS)

    def check_n(self, n: int) -> None:
        """Raise ValueError if this pre-aggregator cannot run on n rows."""
        check_f(self.f, n, self.name)

    @abstractmethod
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed rows [n, d] of x [n, d]; x is not mutated."""

    def __repr__(self) -> str:
        return f"{self.name}(f={self.f})"


@register_pre
class NearestNeighbourMixing(PreAggregator):
    """NNM: row i ← mean of the n−f rows nearest to row i (itself included)."""

    name = "nnm"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_matrix("x", x)
        self.check_n(x.shape[0])
        return functional.nnm(x, self.f)


class Defense:
    """A robust aggregation rule, optionally preceded by a pre-aggregator: [n, d] → [d].

    Subclasses set `name` (the registry key, also the `rule` understood by robust_aggregate) and
    `PARAMS` (parameter name → default; none of the built-in rules takes any).
    """

    name: ClassVar[str]
    PARAMS: ClassVar[dict[str, Any]] = {}

    def __init__(self, f: int, pre: str | None = None, **params):
        self.f = check_f(f)
        if pre is not None and pre not in PRE_AGGREGATORS:
            raise ValueError(f"pre must be None or one of {_valid_names(PRE_AGGREGATORS)}, got {pre!r}")
        self.pre = pre
        self.params = _check_params("defense", self.name, params, self.PARAMS)

    def check_n(self, n: int) -> None:
        """Raise ValueError naming f and its valid range if this defense cannot run on n rows."""
        check_f(self.f, n, self.name if self.name != "mean" else "")
        if self.pre is not None:
            PRE_AGGREGATORS[self.pre](self.f).check_n(n)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # Imported here: byzbn.kernels imports byzbn.defenses.functional, and importing the
        # kernels (Triton) is only needed once something is aggregated.
        from byzbn.kernels import robust_aggregate

        check_matrix("x", x)
        self.check_n(x.shape[0])
        return robust_aggregate(x, self.f, self.name, nnm=self.pre == "nnm")

    def __repr__(self) -> str:
        prefix = f"{self.pre}∘" if self.pre is not None else ""
        extra = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"{prefix}{self.name}(f={self.f}{extra})"


@register
class Mean(Defense):
    """Coordinate-wise mean: no robustness (the baseline); with pre='nnm', NNM then mean."""

    name = "mean"


@register
class CoordinateMedian(Defense):
    """Coordinate-wise median (even row count: mean of the two middle values); needs f < n/2."""

    name = "median"


@register
class TrimmedMean(Defense):
    """Coordinate-wise mean after dropping the f largest and f smallest values; needs 2f < n."""

    name = "trimmed-mean"


def make_defense(name: str, f: int, pre: str | None = "nnm", **params) -> Defense:
    """Build the registered defense `name` tolerating f Byzantine rows, preceded by `pre` (or None)."""
    if name not in DEFENSES:
        raise ValueError(f"name must be one of {_valid_names(DEFENSES)}, got {name!r}")
    return DEFENSES[name](f, pre=pre, **params)
