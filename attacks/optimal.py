"""Optimal FOE and ALIE: the scale that moves the defended aggregate furthest (DESIGN.md §5).

For a scale t the Byzantine rows are FOE's −t·mean(H) or ALIE's mean(H) − t·std(H); the attack
maximises ‖D(cat(H, rows)) − mean(H)‖ over t for the server's defense D (context.defense). The
objective is not unimodal in general (NNM and median switch neighbours/order at breakpoints), so the search first
brackets the best scale on a geometric grid in BOTH directions (t < 0 and t > 0, plus t = 0 and the
classical scale), then refines the best few grid peaks inside their brackets by golden-section search.
The returned scale is the best of every point evaluated, so the search never does worse than its grid
or the classical attack. Cost: about 2·grid + 3 + brackets·(iters + 2) defense evaluations.
"""
from __future__ import annotations

import abc
import math
from typing import Callable, Optional

import torch

from byzbn._checks import check_int
from byzbn.attacks.context import AttackContext
from byzbn.attacks.registry import (Attack, check_submission, finite_float, register_attack, repeat_row,
                                    require_defense)
from byzbn.attacks.rules import FOE_EPS, alie_z, honest_std

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0


def geometric_grid(min_scale: float, max_scale: float, grid: int) -> list[float]:
    """`grid` points from min_scale to max_scale with a constant ratio (both ends included)."""
    ratio = max_scale / min_scale
    return [min_scale * ratio ** (k / (grid - 1)) for k in range(grid)]


def golden_section_max(objective: Callable[[float], float], lo: float, hi: float, iters: int,
                       seen: list[tuple[float, float]]) -> None:
    """Golden-section search for a maximum of objective on [lo, hi]; every evaluation is appended to seen."""

    def probe(t: float) -> float:
        value = objective(t)
        seen.append((t, value))
        return value

    a, b = lo, hi
    c, d = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
    fc, fd = probe(c), probe(d)
    for _ in range(iters):
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - _INV_PHI * (b - a)
            fc = probe(c)
        else:
            a, c, fc = c, d, fd
            d = a + _INV_PHI * (b - a)
            fd = probe(d)


def bracketed_line_search(objective: Callable[[float], float], anchors: list[float], *, min_scale: float,
                          max_scale: float, grid: int, iters: int, brackets: int = 1) -> tuple[float, float]:
    """(scale, value) maximising objective: grid over ±[min_scale, max_scale] ∪ anchors, then golden section.

    The `brackets` best grid points that are local maxima of the grid are each refined inside the
    bracket formed by their grid neighbours: against NNM the objective is a sawtooth whose highest tooth
    is often not the one next to the best grid point.

    Ties go to the smallest |scale| (the least conspicuous rows), then to the earliest evaluated point
    (grid points in increasing order, then refinements), so the result is deterministic.
    """
    positive = geometric_grid(min_scale, max_scale, grid)
    candidates = sorted(set([-t for t in positive] + positive + [0.0] + list(anchors)))
    values = [objective(t) for t in candidates]
    seen = list(zip(candidates, values))
    last = len(candidates) - 1
    best = max(range(len(values)), key=lambda i: values[i])

    def is_peak(i: int) -> bool:
        left, right = values[max(i - 1, 0)], values[min(i + 1, last)]
        # Interior points of a plateau (a saturated median, say) are not worth a refinement each.
        return i == best or (values[i] >= left and values[i] >= right and values[i] > min(left, right))

    peaks = sorted((i for i in range(len(values)) if is_peak(i)), key=lambda i: -values[i])  # stable
    if iters > 0:
        for i in peaks[:brackets]:
            golden_section_max(objective, candidates[max(i - 1, 0)], candidates[min(i + 1, last)], iters, seen)
    return max(seen, key=lambda tv: (tv[1], -abs(tv[0])))


def set_search_parameters(attack, min_scale, max_scale, grid, iters, brackets) -> None:
    """Validate the scale line search's parameters and set them on `attack` (every attack that searches)."""
    attack.min_scale = finite_float("min_scale", min_scale)
    attack.max_scale = finite_float("max_scale", max_scale)
    if not 0.0 < attack.min_scale < attack.max_scale:
        raise ValueError(f"min_scale and max_scale must satisfy 0 < min_scale < max_scale, "
                         f"got min_scale={min_scale!r}, max_scale={max_scale!r}")
    attack.grid = check_int("grid", grid, 2, 10_000, "points per direction")
    attack.iters = check_int("iters", iters, 0, 200, "golden-section refinements")
    attack.brackets = check_int("brackets", brackets, 1, 2 * attack.grid + 3, "grid peaks refined")


class OptimalScaleAttack(Attack):
    """Shared search; subclasses give the row at a scale and the classical scale to anchor the grid."""

    needs_defense = True

    def __init__(self, min_scale: float = 1e-2, max_scale: float = 1e2, grid: int = 17, iters: int = 25,
                 brackets: int = 3):
        set_search_parameters(self, min_scale, max_scale, grid, iters, brackets)

    @abc.abstractmethod
    def line(self, honest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(base, direction) [d] each: the Byzantine row at scale t is base + t·direction."""

    def row_at(self, honest: torch.Tensor, scale: float) -> torch.Tensor:
        """The Byzantine row [d] at `scale`."""
        base, direction = self.line(honest)
        return base + scale * direction

    @abc.abstractmethod
    def classical_scale(self, n: int, f: int) -> Optional[float]:
        """The fixed attack's scale, evaluated as an anchor (None where it is undefined)."""

    def distance(self, honest: torch.Tensor, context: AttackContext, scale: float,
                 honest_mean: Optional[torch.Tensor] = None,
                 line: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> float:
        """‖D(cat(H, rows at scale)) − mean(H)‖ in float64 for D = context.defense; NaN (a defense
        swallowing overflow) counts as -inf.

        honest_mean (mean(H) in float64) and line (self.line(H)): precomputed when the caller evaluates
        many scales for the same H.
        """
        if honest_mean is None:
            honest_mean = honest.double().mean(dim=0)
        base, direction = self.line(honest) if line is None else line
        x = torch.cat([honest, repeat_row(base + scale * direction, context.f)])
        out = context.defense(x)
        if not isinstance(out, torch.Tensor) or out.shape != (honest.shape[1],):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"defense must map [n, d] to a tensor of shape [d]={honest.shape[1]}, got {got}")
        value = float(torch.linalg.vector_norm(out.double() - honest_mean))
        return -math.inf if math.isnan(value) else value

    def search(self, honest: torch.Tensor, context: AttackContext) -> tuple[float, float]:
        """(best scale, the distance it achieves) against context.defense, for context.f >= 1."""
        f = check_submission(honest, context)
        require_defense(f"attack {self.name!r}", context)
        if f == 0:
            raise ValueError(f"search needs f >= 1 Byzantine rows to place, got f={f}")
        return self._search(honest, context)

    def _search(self, honest, context) -> tuple[float, float]:
        classical = self.classical_scale(context.n, context.f)
        honest_mean = honest.double().mean(dim=0)
        line = self.line(honest)
        return bracketed_line_search(lambda t: self.distance(honest, context, t, honest_mean, line),
                                     [] if classical is None else [classical],
                                     min_scale=self.min_scale, max_scale=self.max_scale,
                                     grid=self.grid, iters=self.iters, brackets=self.brackets)

    def rows(self, honest, context):
        scale, _ = self._search(honest, context)
        return repeat_row(self.row_at(honest, scale), context.f)


@register_attack("optimal-foe")
class OptimalFOE(OptimalScaleAttack):
    """FOE rows −eps·mean(H) with eps (any real) chosen to maximise the defended aggregate's deviation."""

    def line(self, honest):
        return torch.zeros_like(honest[0]), -honest.mean(dim=0)

    def classical_scale(self, n, f):
        return FOE_EPS


@register_attack("optimal-alie")
class OptimalALIE(OptimalScaleAttack):
    """ALIE rows mean(H) − z·std(H) with z (any real) chosen to maximise the defended aggregate's deviation."""

    def line(self, honest):
        return honest.mean(dim=0), -honest_std(honest)

    def classical_scale(self, n, f):
        s = n // 2 + 1 - f
        return alie_z(n, f) if 1 <= s < n else None


__all__ = ["OptimalScaleAttack", "OptimalFOE", "OptimalALIE", "bracketed_line_search", "golden_section_max",
           "geometric_grid"]
