"""Iterative aggregation rules: the geometric median (smoothed Weiszfeld) and centered clipping.

Both alternate two steps over the rows of x [n, d]: distances of every row to the current point, then a
weighted combination of the rows. Each combination pass also sums the distances to its result while the
chunk is in cache (defenses.chunked_rows), so T iterations read x T + 1 times and memory stays O(n·d).

Non-finite rows: a row holding a NaN/±Inf is infinitely far from every point. In the smoothed Weiszfeld
iteration its weight 1/max(ν, ∞) is 0; in centered clipping its clipped difference has no direction and
counts as 0 (the client is treated as having sent the centre). So at most f such rows never reach the
output. Both rules need f < n (at least one row that can be honest).
"""
from __future__ import annotations

import copy
import math
from typing import ClassVar, Optional

import torch

from byzbn._checks import check_int, check_matrix
from byzbn._threads import one_cpu_thread
from byzbn.defenses.chunked_rows import column_step, combine, sq_distances
from byzbn.defenses.registry import Aggregator, register_aggregator


def check_real(name: str, value, low: float, low_inclusive: bool) -> float:
    """A finite real number above low (>= low when low_inclusive); bools are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (value == low and not low_inclusive):
        raise ValueError(f"{name}={value} is out of range: valid {'>=' if low_inclusive else '>'} {low}")
    return float(value)


class _NeedsAnHonestRow(Aggregator):
    """A rule that only needs one honest row among its n (f < n), not an honest majority."""

    def check_n(self, n: int) -> None:
        super().check_n(n)
        if self.f >= n:
            raise ValueError(f"f={self.f} is out of range for {self.name} with n={n}: valid 0 <= f <= {n - 1} "
                             "(f < n)")


def _finite_rows(sq: torch.Tensor) -> Optional[torch.Tensor]:
    """None when every squared distance is finite, else the indices of the finite ones."""
    finite = torch.isfinite(sq)
    return None if bool(finite.all()) else finite.nonzero().flatten()


def geometric_median(x: torch.Tensor, nu: float = 0.1, T: int = 3) -> torch.Tensor:
    """Smoothed Weiszfeld (Pillutla et al., RFA) from z₀ = 0:
    z_{t+1} = Σ β_i x_i / Σ β_i with β_i = 1/max(ν, ‖x_i − z_t‖).

    Rows holding a NaN/±Inf get weight 0; if every row does, the result is NaN. T = 0 returns z₀ = 0.
    """
    check_matrix("x", x)
    if T == 0:
        return torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad), one_cpu_thread(x.device):
        step = column_step(x)
        sq = sq_distances(x, step=step)
        rows = _finite_rows(sq)
        if rows is not None:
            if rows.numel() == 0:
                return torch.full((x.shape[1],), float("nan"), dtype=x.dtype, device=x.device)
            sq = sq.index_select(0, rows)
        for t in range(T):
            # max(ν, ‖·‖) as √max(ν², ‖·‖²): no square root at 0, whose derivative is infinite
            # (ν² kept above float64's underflow, or a row on z_t would weigh ∞).
            beta = sq.clamp(min=max(nu * nu, torch.finfo(torch.float64).tiny)).rsqrt()
            z, sq = combine(x, beta / beta.sum(), rows, distances_to_result=t + 1 < T, step=step)
        return z


def centered_clipping(x: torch.Tensor, center: Optional[torch.Tensor] = None, L: int = 1,
                      tau: float = 100.0) -> torch.Tensor:
    """Centered clipping (Karimireddy et al. 2021): v₀ = center (zeros when None),
    v_{l+1} = v_l + (1/n) Σ_i (x_i − v_l) · min(1, τ/‖x_i − v_l‖), L times.

    A row holding a NaN/±Inf contributes 0 to the sum (it still counts in n). L = 0 returns v₀.
    """
    check_matrix("x", x)
    n, d = x.shape
    if center is not None:
        check_center(center, d)
    # v None stands for the zero centre: the first pass then reads x without subtracting anything.
    v = None if center is None else center.detach().to(dtype=x.dtype, device=x.device)
    if L == 0:
        return torch.zeros(d, dtype=x.dtype, device=x.device) if v is None else v.clone()
    with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad), one_cpu_thread(x.device):
        step = column_step(x)
        sq = sq_distances(x, v, step=step)
        rows = _finite_rows(sq)
        if rows is not None:
            sq = sq.index_select(0, rows)
        for l in range(L):
            clip = sq.detach().sqrt() > tau     # as norms: tau² could underflow
            # The safe denominator keeps the unused branch finite (its gradient would be 0 · ∞ = NaN).
            scale = torch.where(clip, tau / torch.where(clip, sq, torch.ones_like(sq)).sqrt(), torch.ones_like(sq))
            v, sq = combine(x, scale / n, rows, base=v, distances_to_result=l + 1 < L, step=step)
        return v


def check_center(center, d: Optional[int] = None) -> None:
    """A finite 1-D float tensor, of length d when given."""
    if not isinstance(center, torch.Tensor) or center.dim() != 1 or (d is not None and center.shape[0] != d):
        shape = list(center.shape) if isinstance(center, torch.Tensor) else type(center).__name__
        raise ValueError(f"center must be a tensor of shape [{'d' if d is None else f'd={d}'}], got {shape}")
    # c − c is 0 for a finite entry and NaN for NaN/±Inf: one float op and a sum (isfinite is slower).
    if not center.is_floating_point() or not bool(torch.isfinite((center - center).sum())):
        raise ValueError("center must be a finite floating-point tensor (the previous aggregate of the channel)")


@register_aggregator("geomed")
class GeometricMedian(_NeedsAnHonestRow):
    """Geometric median by T steps of smoothed Weiszfeld from 0 (ByzFL's GeometricMedian; nu: smoothing ν > 0).

    f is not used by the rule (its breakdown point is 1/2); it needs f < n. Rows holding a NaN/±Inf get
    weight 0, so at most f of them never reach the output.
    """

    def __init__(self, f: int, nu: float = 0.1, T: int = 3):
        super().__init__(f)
        self.nu = check_real("nu", nu, 0.0, low_inclusive=False)
        self.T = check_int("T", T, 0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_matrix("x", x)
        self.check_n(x.shape[0])
        return geometric_median(x, self.nu, self.T)


@register_aggregator("centered-clipping")
class CenteredClipping(_NeedsAnHonestRow):
    """Centered clipping: L steps v ← v + mean_i clip_τ(x_i − v) from the centre (ByzFL's CenteredClipping).

    Stateful: the centre is zeros on a stand-alone call (every call, so a call is a pure function); in a
    run it is the previous aggregate of the same channel, given by with_center(center), which returns a
    new rule and leaves this one unchanged. f is not used by the rule; it needs f < n. A row holding a
    NaN/±Inf contributes 0 (it never reaches the output).
    """

    stateful: ClassVar[bool] = True

    def __init__(self, f: int, L: int = 1, tau: float = 100.0):
        super().__init__(f)
        self.L = check_int("L", L, 0)
        self.tau = check_real("tau", tau, 0.0, low_inclusive=True)
        self.center: Optional[torch.Tensor] = None

    def with_center(self, center: Optional[torch.Tensor]) -> "CenteredClipping":
        """A copy of this rule that starts from `center` ([d], finite; None: zeros again)."""
        if center is not None:
            check_center(center)
            center = center.detach()
        rule = copy.copy(self)
        rule.center = center
        return rule

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_matrix("x", x)
        self.check_n(x.shape[0])
        return centered_clipping(x, self.center, self.L, self.tau)


__all__ = ["geometric_median", "centered_clipping", "GeometricMedian", "CenteredClipping", "check_real"]
