"""Fang et al.'s full-knowledge attacks (USENIX Security 2020, "Local Model Poisoning Attacks to
Byzantine-Robust Federated Learning"), in byzbn's row space.

The paper crafts local *models* around the current global model w and the estimated change direction
s (s_j = the sign of the change of parameter j without attack). byzbn's rows are what the server
aggregates (momentums, model updates or BN statistics), so both attacks take the honest rows' mean as
w and its sign as s: s_j = −1 where mean(H)_j < 0, +1 otherwise (a zero mean counts as +1, the paper's
"otherwise" branch). The attacks push the aggregate against s, coordinate by coordinate: for FedAvg's
model updates that is the paper's attack as written (the model moves against its change direction);
for DSGD's momentums, which the server subtracts, it is the same move (the model goes uphill).

fang-trimmed (the attack on coordinate-wise trimmed mean and median). With max_j and min_j the honest
extremes of coordinate j and b > 1 (b = 2 in the paper), each Byzantine value is drawn uniformly

    s_j = −1:  from [max_j, b·max_j] if max_j > 0, else from [max_j, max_j / b]
    s_j = +1:  from [min_j / b, min_j] if min_j > 0, else from [b·min_j, min_j]

i.e. just beyond the honest extreme on the side opposite s_j, within a factor b of it: far enough to
drag a trimmed mean or median, close enough not to be an obvious outlier. Every Byzantine row and
coordinate gets its own draw, from context.generator (seeded per step and channel by the runner; a
stand-alone call without one derives a generator from (seed, step), as `gaussian` does). On the
statistics channel the variance field has a positive honest mean, so its values lie in
[min_j / b, min_j]: positive whenever the honest variances are.

fang-krum (the attack on Krum and Multi-Krum). Every Byzantine client submits r(λ) = w − λ·s, with λ
the largest value for which the defense in use (context.defense) selects it. Selected means the
defense's output is at least as close to r(λ) as to every honest row: for Krum, that the output is
the Byzantine row. The search starts at the paper's upper bound

    λ₀ = min_i Σ_{l ∈ Γ_i} ‖h_l − h_i‖ / ((n − 2f − 1)·√d) + max_i ‖h_i − w‖ / √d,

Γ_i the n − f − 2 honest rows nearest to h_i (the paper's w_Re is the global model; here it is w =
mean(H)); the denominator is taken as at least 1 where n < 2f + 2, outside Krum's range). It halves
λ until r(λ) is selected, as in the paper, but also doubles it while r(λ) is selected (the bound is
exact for Krum alone, not after a pre-aggregator), then refines the bracket to the relative tolerance
tol (byzbn.attacks.boundary_search). If r(λ) is not selected for any λ ≥ threshold (the paper's
stopping value, 1e-5), λ = threshold. Cost: one defense call per probe, about log2(λ₀ / λ) + 17.
"""
from __future__ import annotations

import math

import torch

from byzbn._checks import check_int
from byzbn.attacks.boundary_search import check_tol, largest_satisfying
from byzbn.attacks.context import AttackContext
from byzbn.attacks.registry import Attack, finite_float, register_attack, repeat_row
from byzbn.attacks.rules import GaussianNoise

FANG_B = 2.0  # the paper's b
FANG_THRESHOLD = 1e-5  # the paper's smallest λ


def change_direction(honest: torch.Tensor) -> torch.Tensor:
    """s [d]: −1 where the honest mean is negative, +1 elsewhere (the paper's s_j ∈ {−1, +1})."""
    return torch.where(honest.mean(dim=0) < 0, -1.0, 1.0).to(honest.dtype)


def fang_trimmed_range(honest: torch.Tensor, b: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) [d] each: the interval each coordinate's Byzantine values are drawn from (see the module)."""
    top, bottom = honest.max(dim=0).values, honest.min(dim=0).values
    push_up = change_direction(honest) < 0
    lo = torch.where(push_up, top, torch.where(bottom > 0, bottom / b, b * bottom))
    hi = torch.where(push_up, torch.where(top > 0, b * top, top / b), bottom)
    return lo, hi


@register_attack("fang-trimmed")
class FangTrimmed(Attack):
    """Per coordinate, values drawn beyond the honest extreme opposite the change direction, within a factor b."""

    def __init__(self, b: float = FANG_B, seed: int = 0):
        self.b = finite_float("b", b)
        if self.b <= 1.0:
            raise ValueError(f"b must be > 1, got {b!r}")
        self.seed = check_int("seed", seed, 0, 2**63 - 1)

    def rows(self, honest, context):
        x = honest.double()
        lo, hi = fang_trimmed_range(x, self.b)
        # The same generator a gaussian attack with this seed would use: context.generator when given.
        gen = GaussianNoise(seed=self.seed).generator(context)
        u = torch.rand((context.f, x.shape[1]), generator=gen, dtype=torch.float64, device=gen.device)
        return (lo + u.to(x.device) * (hi - lo)).to(honest.dtype)


def krum_lambda_bound(honest: torch.Tensor, n: int, f: int) -> float:
    """The paper's upper bound λ₀ on λ for honest rows [h, d] (float64) among n rows, f of them Byzantine."""
    h, d = honest.shape
    distances = torch.cdist(honest, honest, compute_mode="donot_use_mm_for_euclid_dist")
    neighbours = min(max(n - f - 2, 0), h - 1)
    # Column 0 of each sorted row is the row's distance to itself.
    nearest = float(distances.sort(dim=1).values[:, 1:neighbours + 1].sum(dim=1).min()) if neighbours else 0.0
    spread = float(torch.linalg.vector_norm(honest - honest.mean(dim=0), dim=1).max())
    return (nearest / max(n - 2 * f - 1, 1) + spread) / math.sqrt(d)


def defended(context: AttackContext, submission: torch.Tensor) -> torch.Tensor:
    """context.defense(submission), checked to be a tensor [d]."""
    out = context.defense(submission)
    if not isinstance(out, torch.Tensor) or out.shape != (submission.shape[1],):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"defense must map [n, d] to a tensor of shape [d]={submission.shape[1]}, got {got}")
    return out


def is_selected(honest: torch.Tensor, row: torch.Tensor, context: AttackContext) -> bool:
    """Whether the defense's output on (honest, f copies of row) is at least as close to row as to every honest row."""
    out = defended(context, torch.cat([honest, repeat_row(row, context.f)])).double()
    to_row = torch.linalg.vector_norm(out - row.double())
    to_honest = torch.linalg.vector_norm(out - honest.double(), dim=1).min()
    return bool(torch.isfinite(out).all() and to_row <= to_honest)


@register_attack("fang-krum")
class FangKrum(Attack):
    """w − λ·s with w = mean(H), s its sign and λ the largest value the defense in use still selects."""

    needs_defense = True

    def __init__(self, threshold: float = FANG_THRESHOLD, tol: float = 1e-3):
        self.threshold = finite_float("threshold", threshold)
        if self.threshold <= 0.0:
            raise ValueError(f"threshold must be > 0, got {threshold!r}")
        self.tol = check_tol(tol)

    def row_at(self, honest: torch.Tensor, lam: float) -> torch.Tensor:
        """r(λ) = mean(H) − λ·sign direction, [d] in honest's dtype (what the Byzantine clients submit)."""
        x = honest.double()
        return (x.mean(dim=0) - lam * change_direction(x)).to(honest.dtype)

    def lam(self, honest: torch.Tensor, context: AttackContext) -> float:
        """The λ the rows use (see the module docstring)."""
        bound = krum_lambda_bound(honest.double(), context.n, context.f)
        start = bound if math.isfinite(bound) and bound > self.threshold else self.threshold
        found = largest_satisfying(lambda lam: is_selected(honest, self.row_at(honest, lam), context), start,
                                   tol=self.tol, floor=self.threshold)
        return self.threshold if found is None else found

    def rows(self, honest, context):
        return repeat_row(self.row_at(honest, self.lam(honest, context)), context.f)


__all__ = ["FANG_B", "FANG_THRESHOLD", "change_direction", "fang_trimmed_range", "FangTrimmed", "krum_lambda_bound",
           "is_selected", "FangKrum"]
