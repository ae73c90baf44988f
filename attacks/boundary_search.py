"""The largest scale that still satisfies a condition: MinMax's and MinSum's γ, Fang's λ against Krum.

The attacks of Shejwalkar & Houmansadr (NDSS 2021) and Fang et al. (USENIX Security 2020) scale a
malicious direction as far as a condition allows (the row stays within the honest spread, the defense
still selects it). Both papers search from an initial scale by doubling or halving; this module does
that to bracket the boundary between a satisfying scale `lo` and a failing one `hi = 2·lo`, then
narrows the bracket to a relative width `tol` with the golden-section search of the optimal attacks
(byzbn.attacks.optimal.golden_section_max), maximising the scale itself over the satisfying points.

When the satisfying scales form an interval [0, t*] (MinMax, MinSum: convex constraints that hold at 0)
the result t satisfies the condition and (1 + tol)·t does not. When they do not (a defense's selection
may switch back and forth), the result still satisfies the condition and is at least the bracket's lo.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

from byzbn._checks import check_int
from byzbn.attacks.optimal import _INV_PHI, golden_section_max
from byzbn.attacks.registry import finite_float

MAX_STEPS = 64  # doublings or halvings before the bracketing gives up: 2^64 spans any sensible scale range


def check_tol(tol) -> float:
    """A relative tolerance in (0, 1) (ValueError otherwise)."""
    tol = finite_float("tol", tol)
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    return tol


def largest_satisfying(condition: Callable[[float], bool], start: float, *, tol: float, floor: float,
                       max_steps: int = MAX_STEPS) -> Optional[float]:
    """The largest scale t >= floor with condition(t), searched from `start` > 0; None if none is found.

    Doubling from start while the condition holds (at most max_steps times: the last satisfying scale
    is returned if it never fails), or halving while it fails until the scale drops below floor (None)
    or max_steps halvings are spent (None), brackets the boundary in [lo, 2·lo]; golden-section
    refinement then narrows it to a relative width tol.
    """
    start, floor = finite_float("start", start), finite_float("floor", floor)
    if start <= 0.0:
        raise ValueError(f"start must be > 0, got {start!r}")
    check_int("max_steps", max_steps, 0)
    if condition(start):
        lo = start
        for _ in range(max_steps):
            if not condition(2.0 * lo):
                break
            lo *= 2.0
        else:
            return lo
    else:
        lo = start
        for _ in range(max_steps):
            lo /= 2.0
            if lo < floor:
                return None
            if condition(lo):
                break
        else:
            return None
    hi = 2.0 * lo
    # Golden section shrinks the bracket by 1/φ per iteration; it must end no wider than tol·lo.
    iters = max(0, math.ceil(math.log(tol * lo / (hi - lo)) / math.log(_INV_PHI)))
    seen: list[tuple[float, float]] = [(lo, lo)]
    golden_section_max(lambda t: t if condition(t) else -math.inf, lo, hi, iters, seen)
    return max(t for t, value in seen if value != -math.inf)


__all__ = ["MAX_STEPS", "check_tol", "largest_satisfying"]
