"""A defense: registered pre-aggregators, in order, then a registered rule — one callable [n, d] -> [d].

    make_defense("median", f=2, pre="nnm")                          # nnm∘median(f=2)
    make_defense("trimmed-mean", 2, pre=["nnm", ("my-pre", {"k": 3})], beta=0.1)
    make_defense("mean", 2)                                         # mean(f=2): pre defaults to None

The repr lists the stages in the order they run, joined by ∘, with f shown once (on the rule).
Whatever is registered is what runs; the fused kernel (byzbn.kernels.robust_aggregate) is only a fast
path for the compositions it implements (see defenses.rules.fused_call).

Two stage capabilities keep every call pure (byzbn.defenses.registry): a `stateful` stage has
with_center(center) -> a copy starting from `center` (centered clipping), a `randomized` stage has
with_generator(gen) -> a copy drawing from `gen` (bucketing). Defense.with_center / with_generator pass
them on and return a copy (self when no stage needs it); the runner calls them every step.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Union

import torch

from byzbn import kernels
from byzbn._checks import check_f, check_matrix
from byzbn.defenses.registry import AGGREGATORS, PRE_AGGREGATORS
from byzbn.defenses.rules import fused_call

PreItem = Union[str, tuple[str, Mapping]]
PreSpec = Union[None, PreItem, "list[PreItem]", "tuple[PreItem, ...]"]


def _is_item_with_params(item) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], Mapping)


def pre_stages(pre: PreSpec) -> list[tuple[str, dict]]:
    """[(name, params)] from pre: None, a name, (name, {params}), or a list/tuple of names and (name, {params})."""
    if pre is None:
        return []
    if isinstance(pre, str) or _is_item_with_params(pre):
        pre = [pre]
    if not isinstance(pre, (list, tuple)):
        raise ValueError(f"pre must be None, a pre-aggregator name, (name, params) or a sequence of those, got {pre!r}")
    items = []
    for item in pre:
        name, params = (item, {}) if isinstance(item, str) else item if _is_item_with_params(item) else (None, None)
        if name not in PRE_AGGREGATORS:
            raise ValueError(f"pre must be None or one of {sorted(PRE_AGGREGATORS)} (or a sequence of them, each "
                             f"optionally as (name, params)), got {item!r}")
        items.append((name, dict(params)))
    return items


def _build(registry, name: str, f: int, params: dict):
    """registry's `name` built as cls(f, **params), params validated; returns (object, params with defaults)."""
    full = registry.check(name, params)
    return registry.make(name, f, **params), full


def _check_n(obj, f: int, n: int) -> None:
    check = getattr(obj, "check_n", None)
    if check is None:
        check_f(f, n)
    else:
        check(n)


def _call_args(params: dict) -> str:
    return "".join(f", {k}={v!r}" for k, v in params.items())


class Defense:
    """pre-aggregators (in order) ∘ rule, built from the registries: callable [n, d] -> [d].

    Attributes: name (the rule's registered name), f, params (the rule's parameters, defaults filled),
    rule (the rule object), pre (the pre-aggregators' names, in order), pre_params (their parameters),
    pre_aggregators (the objects). Bounds that need the row count n are checked by check_n at call time.
    """

    def __init__(self, name: str, f: int, pre: PreSpec = None, **params):
        AGGREGATORS.lookup(name)
        self.f = check_f(f)
        self.name = name
        items = pre_stages(pre)
        self.rule, self.params = _build(AGGREGATORS, name, f, params)
        built = [_build(PRE_AGGREGATORS, p, f, kw) for p, kw in items]
        self.pre = tuple(p for p, _ in items)
        self.pre_aggregators = tuple(obj for obj, _ in built)
        self.pre_params = tuple(full for _, full in built)
        self._fused = fused_call(self.pre_aggregators, self.rule)

    @property
    def stages(self) -> tuple:
        """The stage objects in the order they run: the pre-aggregators, then the rule."""
        return (*self.pre_aggregators, self.rule)

    @property
    def stateful(self) -> bool:
        """Whether a stage keeps state between calls of a run (its `stateful` capability, e.g. centered
        clipping's centre): the runner then passes it with with_center."""
        return any(getattr(stage, "stateful", False) for stage in self.stages)

    @property
    def randomized(self) -> bool:
        """Whether a stage draws random numbers (its `randomized` capability, e.g. bucketing): the runner
        then passes it the step's generator with with_generator."""
        return any(getattr(stage, "randomized", False) for stage in self.stages)

    def _with_stages(self, change) -> "Defense":
        """A copy whose stages are change(stage) (self unchanged)."""
        new = copy.copy(self)
        new.pre_aggregators = tuple(change(p) for p in self.pre_aggregators)
        new.rule = change(self.rule)
        new._fused = fused_call(new.pre_aggregators, new.rule)
        return new

    def with_center(self, center) -> "Defense":
        """This defense with its stateful stages (`stateful = True`) started from `center` ([d], e.g. the
        previous aggregate of the channel) via their with_center; self itself when no stage is stateful."""
        if not self.stateful:
            return self
        return self._with_stages(lambda s: s.with_center(center) if getattr(s, "stateful", False) else s)

    @property
    def last_clipped_fraction(self):
        """The rule's `last_clipped_fraction` (centered clipping's diagnostic: the fraction of rows its last
        call clipped), None for a rule without one or before the first call."""
        return getattr(self.rule, "last_clipped_fraction", None)

    def with_generator(self, generator) -> "Defense":
        """This defense with its random stages drawing from `generator` (a torch.Generator, e.g. the run's
        generator of this step) via their with_generator; self itself when no stage is random."""
        if not self.randomized:
            return self
        return self._with_stages(lambda s: s.with_generator(generator) if getattr(s, "randomized", False) else s)

    def check_n(self, n: int) -> None:
        """Raise ValueError naming f and its valid range if some stage cannot run on n rows.

        The rule is checked first (on the rows the pre-aggregators leave): its bound is usually the
        tighter one (median's 2f < n implies NNM's f < n), so its range is the one worth reporting.
        """
        sizes = [n]
        for p in self.pre_aggregators:
            rows = getattr(p, "output_rows", None)
            sizes.append(rows(sizes[-1]) if rows is not None else sizes[-1])
        _check_n(self.rule, self.f, sizes[-1])
        for p, m in zip(self.pre_aggregators, sizes):
            _check_n(p, self.f, m)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_matrix("x", x)
        self.check_n(x.shape[0])
        if self._fused is not None:
            rule, nnm = self._fused
            # Looked up at call time: one module attribute is the dispatch (tests spy on it).
            return kernels.robust_aggregate(x, self.f, rule, nnm=nnm)
        d = x.shape[1]
        y = x
        for name, p in zip(self.pre, self.pre_aggregators):
            y = p(y)
            if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[0] < 1 or y.shape[1] != d:
                got = list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise ValueError(f"pre-aggregator {name!r} must return a tensor [m, d={d}] with m >= 1, got {got}")
        out = self.rule(y)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (d,) or out.dtype != x.dtype:
            got = f"{list(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"aggregator {self.name!r} must return a tensor [d={d}] of dtype {x.dtype}, got {got}")
        return out

    def __repr__(self) -> str:
        stages = [f"{p}({_call_args(kw)[2:]})" if kw else p for p, kw in zip(self.pre, self.pre_params)]
        return "∘".join(stages + [f"{self.name}(f={self.f}{_call_args(self.params)})"])


def make_defense(name: str, f: int, pre: PreSpec = None, **params) -> Defense:
    """Build pre (None, a name, (name, {params}) or a sequence of those, run in order) ∘ the rule `name`.

    f: the tolerated Byzantine rows, passed to every stage; params: the rule's parameters. Unknown
    names or parameters raise ValueError listing the valid ones. The default pre is None (no
    pre-aggregation); the paper's defenses are pre="nnm" with "median" or "trimmed-mean".
    """
    return Defense(name, f, pre, **params)


__all__ = ["Defense", "make_defense", "pre_stages"]
