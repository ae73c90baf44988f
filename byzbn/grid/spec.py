"""A sweep's grid: the run options it varies (axes) and those it fixes, and the points they span.

Options are attack_eval's, by their argparse names (dest: `byzantine`, `attack_param`, ...), with the
values attack_eval's parser would produce. `schemes` is always an axis of single scheme names: every
result is per scheme. The first axis varies slowest, so a sweep whose first axis is the seed completes
one seed's picture before starting the next.
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

    def __post_init__(self):
        both = set(self.axes) & set(self.fixed)
        if both:
            raise ValueError(f"options both swept and fixed: {sorted(both)}")
        if "schemes" not in self.axes:
            raise ValueError("schemes must be an axis (of single scheme names)")
        empty = [k for k, values in self.axes.items() if not values]
        if empty:
            raise ValueError(f"empty axes: {empty}")

    def assignments(self) -> list[dict]:
        """One {axis: value} per point, the first axis varying slowest."""
        keys = list(self.axes)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.axes[k] for k in keys))]

    def points(self) -> list[tuple[dict, dict]]:
        """(assignment, the point's full options) for every point of the grid."""
        return [(a, {**self.fixed, **a}) for a in self.assignments()]

    def size(self) -> int:
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
