"""Iterative aggregation rules: the geometric median (smoothed Weiszfeld) and centered clipping.

Both alternate two steps over the rows of x [n, d]: distances of every row to the current point, then a
weighted combination of the rows. Each combination pass also sums the distances to its result while the
chunk is in cache (defenses.chunked_rows), so T iterations read x T + 1 times and memory stays O(n·d).

Non-finite rows: a row holding a NaN/±Inf is infinitely far from every point. In the smoothed Weiszfeld
iteration its weight 1/max(ν, ∞) is 0; in centered clipping its clipped difference has no direction and
counts as 0 (the client is treated as having sent the centre). So at most f such rows never reach the
output. Both rules need f < n (at least one row that can be honest).

Defaults that do what the names say: geomed iterates until a step moves the estimate by at most `tol`
of its norm (at most T steps); ByzFL's variant, three steps from 0, is `T=3, tol=0`. Centered
clipping's radius `tau="auto"` is AUTO_TAU_SCALE times the median distance of the finite rows to the
centre, measured at every call: a fixed radius such as ByzFL's 100 clips nothing when the channel's
rows are much closer to the centre than that. `clipped_fraction` (and the rule's
`last_clipped_fraction`) measures how many rows a call actually clipped.
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


GEOMED_MAX_STEPS = 100  # Weiszfeld steps at most (T)
GEOMED_TOL = 1e-6  # stop once a step moves z by at most this fraction of ‖z‖
AUTO_TAU_SCALE = 2.0  # tau="auto": twice the median distance of the rows to the centre


def geometric_median(x: torch.Tensor, nu: float = 0.1, T: int = GEOMED_MAX_STEPS,
                     tol: float = GEOMED_TOL) -> torch.Tensor:
    """Smoothed Weiszfeld (Pillutla et al., RFA) from z₀ = 0:
    z_{t+1} = Σ β_i x_i / Σ β_i with β_i = 1/max(ν, ‖x_i − z_t‖), until ‖z_{t+1} − z_t‖ ≤ tol·‖z_{t+1}‖
    or T steps (tol = 0: exactly T steps, ByzFL's GeometricMedian with T = 3).

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
        previous = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        for t in range(T):
            # max(ν, ‖·‖) as √max(ν², ‖·‖²): no square root at 0, whose derivative is infinite
            # (ν² kept above float64's underflow, or a row on z_t would weigh ∞).
            beta = sq.clamp(min=max(nu * nu, torch.finfo(torch.float64).tiny)).rsqrt()
            z, sq = combine(x, beta / beta.sum(), rows, distances_to_result=t + 1 < T, step=step)
            if tol > 0:
                current = z.detach().double()
                if float(torch.linalg.vector_norm(current - previous)) <= tol * float(torch.linalg.vector_norm(current)):
                    break
                previous = current
        return z


def centered_clipping(x: torch.Tensor, center: Optional[torch.Tensor] = None, L: int = 1,
                      tau="auto") -> torch.Tensor:
    """Centered clipping (Karimireddy et al. 2021): v₀ = center (zeros when None),
    v_{l+1} = v_l + (1/n) Σ_i (x_i − v_l) · min(1, τ/‖x_i − v_l‖), L times; tau="auto" sets
    τ = AUTO_TAU_SCALE · the median of ‖x_i − v₀‖ over the finite rows (the lower middle one for an even count).

    A row holding a NaN/±Inf contributes 0 to the sum (it still counts in n). L = 0 returns v₀.
    """
    return _clip(x, center, L, tau)[0]


def clipped_fraction(x: torch.Tensor, center: Optional[torch.Tensor] = None, L: int = 1, tau="auto") -> torch.Tensor:
    """The fraction of the finite rows centered clipping clips, averaged over its L passes (0-d float64
    tensor on x's device; 0 when L = 0 or no row is finite)."""
    return _clip(x, center, L, tau)[1]


def _clip(x: torch.Tensor, center: Optional[torch.Tensor], L: int, tau) -> tuple[torch.Tensor, torch.Tensor]:
    check_matrix("x", x)
    n, d = x.shape
    if center is not None:
        check_center(center, d)
    # v None stands for the zero centre: the first pass then reads x without subtracting anything.
    v = None if center is None else center.detach().to(dtype=x.dtype, device=x.device)
    clipped = torch.zeros((), dtype=torch.float64, device=x.device)
    if L == 0:
        return (torch.zeros(d, dtype=x.dtype, device=x.device) if v is None else v.clone()), clipped
    with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad), one_cpu_thread(x.device):
        step = column_step(x)
        sq = sq_distances(x, v, step=step)
        rows = _finite_rows(sq)
        if rows is not None:
            sq = sq.index_select(0, rows)
        if isinstance(tau, str):  # "auto": a radius on the channel's own scale (validated by the rule)
            tau = AUTO_TAU_SCALE * sq.detach().sqrt().median() if sq.numel() else torch.zeros((), dtype=sq.dtype)
        for l in range(L):
            clip = sq.detach().sqrt() > tau     # as norms: tau² could underflow
            if sq.numel():
                clipped = clipped + clip.double().mean() / L
            # The safe denominator keeps the unused branch finite (its gradient would be 0 · ∞ = NaN).
            scale = torch.where(clip, tau / torch.where(clip, sq, torch.ones_like(sq)).sqrt(), torch.ones_like(sq))
            v, sq = combine(x, scale / n, rows, base=v, distances_to_result=l + 1 < L, step=step)
        return v, clipped


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
    """Geometric median by smoothed Weiszfeld from 0 until a step moves it by at most `tol` of its norm,
    at most T steps (nu: smoothing ν > 0; `T=3, tol=0` is ByzFL's GeometricMedian).

    f is not used by the rule (its breakdown point is 1/2); it needs f < n. Rows holding a NaN/±Inf get
    weight 0, so at most f of them never reach the output.
    """

    def __init__(self, f: int, nu: float = 0.1, T: int = GEOMED_MAX_STEPS, tol: float = GEOMED_TOL):
        super().__init__(f)
        self.nu = check_real("nu", nu, 0.0, low_inclusive=False)
        self.T = check_int("T", T, 0)
        self.tol = check_real("tol", tol, 0.0, low_inclusive=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_matrix("x", x)
        self.check_n(x.shape[0])
        return geometric_median(x, self.nu, self.T, self.tol)


@register_aggregator("centered-clipping")
class CenteredClipping(_NeedsAnHonestRow):
    """Centered clipping: L steps v ← v + mean_i clip_τ(x_i − v) from the centre (ByzFL's CenteredClipping
    with a fixed tau, e.g. its default tau=100.0; tau="auto": AUTO_TAU_SCALE times the median distance of
    the rows to the centre, at every call).

    Stateful: the centre is zeros on a stand-alone call (every call, so a call is a pure function); in a
    run it is the previous aggregate of the same channel, given by with_center(center), which returns a
    new rule and leaves this one unchanged. f is not used by the rule; it needs f < n. A row holding a
    NaN/±Inf contributes 0 (it never reaches the output). `last_clipped_fraction` (a diagnostic, 0-d
    tensor, None before the first call) is the fraction of rows the rule's last call clipped.
    """

    stateful: ClassVar[bool] = True

    def __init__(self, f: int, L: int = 1, tau="auto"):
        super().__init__(f)
        self.L = check_int("L", L, 0)
        if isinstance(tau, str) and tau != "auto":
            raise ValueError(f"tau must be a number >= 0 or 'auto', got {tau!r}")
        if tau != "auto":
            tau = check_real("tau", tau, 0.0, low_inclusive=True)
        self.tau = tau
        self.center: Optional[torch.Tensor] = None
        self.last_clipped_fraction: Optional[torch.Tensor] = None

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
        out, self.last_clipped_fraction = _clip(x, self.center, self.L, self.tau)
        return out


__all__ = ["GEOMED_MAX_STEPS", "GEOMED_TOL", "AUTO_TAU_SCALE", "geometric_median", "centered_clipping",
           "clipped_fraction", "GeometricMedian", "CenteredClipping", "check_real"]
