"""A sweep's grid: the run options it varies (axes) and those it fixes, and the points they span.

Options are attack_eval's, by their argparse names (dest: `byzantine`, `attack_param`, ...), with the
values attack_eval's parser would produce. `schemes` is always an axis of single scheme names: every
result is per scheme. The first axis varies slowest, so a sweep whose first axis is the seed completes
one seed's picture before starting the next.

A partial grid (a "ladder": one axis varied at a time around a base point) is a union of rungs: each rung
is a full {option: values} product, and the grid is every point of any rung, each point once, rung by
rung. `axes` then lists every option some rung varies, with the values it takes anywhere (the columns of
the results), and `rungs` holds the products.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SweepSpec:
    """axes: option -> the values it takes, in axis order; fixed: every other option's value."""

    axes: dict[str, tuple]
    fixed: dict[str, Any]
    name: str = "sweep"
    notes: dict = field(default_factory=dict)  # what the command wants recorded (its command line, ...)
    rungs: tuple = ()  # () for a full grid; else the {option: values} products whose union is the grid

    def __post_init__(self):
        both = set(self.axes) & set(self.fixed)
        if both:
            raise ValueError(f"options both swept and fixed: {sorted(both)}")
        if "schemes" not in self.axes:
            raise ValueError("schemes must be an axis (of single scheme names)")
        empty = [k for k, values in self.axes.items() if not values]
        if empty:
            raise ValueError(f"empty axes: {empty}")
        for rung in self.rungs:
            if set(rung) != set(self.axes) or any(v not in self.axes[k] for k, values in rung.items() for v in values):
                raise ValueError(f"a rung must give values for exactly the axes {list(self.axes)}, each among the "
                                 f"axis' values; got {rung}")

    def iter_assignments(self):
        """One {axis: value} per point, lazily: the first axis varying slowest (rung by rung for a ladder)."""
        keys = list(self.axes)
        if not self.rungs:
            for values in itertools.product(*(self.axes[k] for k in keys)):
                yield dict(zip(keys, values))
            return
        seen = set()
        for rung in self.rungs:
            for values in itertools.product(*(rung[k] for k in keys)):
                marker = repr(values)
                if marker not in seen:
                    seen.add(marker)
                    yield dict(zip(keys, values))

    def assignments(self) -> list[dict]:
        """One {axis: value} per point, the first axis varying slowest."""
        return list(self.iter_assignments())

    def points(self) -> list[tuple[dict, dict]]:
        """(assignment, the point's full options) for every point of the grid."""
        return [(a, {**self.fixed, **a}) for a in self.assignments()]

    def size(self) -> int:
        if self.rungs:
            return sum(1 for _ in self.iter_assignments())
        count = 1
        for values in self.axes.values():
            count *= len(values)
        return count


def value_text(value: Any) -> str:
    """An option value as one short string (a CSV cell, a label): lists space-separated, None as ''."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(value_text(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(assignment: dict) -> str:
    """'byzantine=2, heterogeneity=gamma:0.5': a point by its axis values (schemes shown as scheme)."""
    return ", ".join(f"{'scheme' if k == 'schemes' else k}={value_text(v)}" for k, v in assignment.items())


__all__ = ["SweepSpec", "value_text", "describe"]
