"""MinMax and MinSum (Shejwalkar & Houmansadr, "Manipulating the Byzantine", NDSS 2021): agnostic attacks.

Every Byzantine client submits the same row m = mean(H) + γ·p, with the perturbation p one of

    unit:  −mean(H) / ‖mean(H)‖       std:  −std(H) per coordinate (ddof = 1)       sign:  −sign(mean(H))

and γ the largest scale keeping m inside the honest spread, without knowing the defense:

    minmax:  max_i ‖m − h_i‖ ≤ max_{i,j} ‖h_i − h_j‖
    minsum:  Σ_i ‖m − h_i‖² ≤ max_i Σ_j ‖h_i − h_j‖²

Both left-hand sides are convex in γ and the constraints hold at γ = 0 (the mean lies in the honest
hull, and it minimises the sum of squares), so the satisfying γ ≥ 0 form an interval [0, γ*]. γ is
found as in the paper (start at gamma_init = 10, halve or double, then refine; the search of
byzbn.attacks.boundary_search) to a relative tolerance tol: γ satisfies the constraint and (1 + tol)·γ
does not. The distances are expanded once, ‖m − h_i‖² = a_i + 2γ·b_i + γ²·‖p‖² with
a_i = ‖mean − h_i‖² and b_i = ⟨mean − h_i, p⟩, so each probe of the search costs O(h), not O(h·d).

The defaults are the authors' code's and FLPoison's: perturbation "unit", gamma_init = 10 (Blades
uses "std"; the paper reports whichever of the three hurts most, so all three are offered).

Degenerate cases give γ = 0, i.e. m = mean(H): p = 0 (std of identical rows or of one row, unit or
sign of a zero mean), a zero right-hand side (identical honest rows, one honest row), and non-finite
honest rows (no γ can be checked). A γ* below gamma_init·2⁻⁶⁴ is also taken as 0.

Rows are computed in float64 and returned in honest's dtype. On the statistics channel the attack runs
per field like every other attack (byzbn.attacks.attack_stats); variances it pushes below zero are
clamped by the server, as for the other attacks.
"""
from __future__ import annotations

import abc

import torch

from byzbn.attacks.boundary_search import MAX_STEPS, check_tol, largest_satisfying
from byzbn.attacks.registry import Attack, finite_float, register_attack, repeat_row
from byzbn.attacks.rules import honest_std

PERTURBATIONS = ("unit", "std", "sign")
GAMMA_INIT = 10.0  # the paper's initial γ


def perturbation(honest: torch.Tensor, kind: str) -> torch.Tensor:
    """p [d] for honest rows [h, d] (computed in honest's dtype); 0 where the direction is undefined."""
    mean = honest.mean(dim=0)
    if kind == "unit":
        norm = torch.linalg.vector_norm(mean)
        return torch.zeros_like(mean) if norm == 0 else -mean / norm
    if kind == "std":
        return -honest_std(honest)
    return -torch.sign(mean)


class DistanceBoundAttack(Attack):
    """MinMax / MinSum: the search and the rows; subclasses give the constraint on the expanded distances."""

    def __init__(self, perturbation: str = "unit", gamma_init: float = GAMMA_INIT, tol: float = 1e-3):
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"perturbation must be one of {list(PERTURBATIONS)}, got {perturbation!r}")
        self.perturbation = perturbation
        self.gamma_init = finite_float("gamma_init", gamma_init)
        if self.gamma_init <= 0.0:
            raise ValueError(f"gamma_init must be > 0, got {gamma_init!r}")
        self.tol = check_tol(tol)

    @abc.abstractmethod
    def satisfied(self, gamma: float, a: torch.Tensor, b: torch.Tensor, c: float, bound: float) -> bool:
        """Whether m = mean + γ·p meets the constraint, from a_i, b_i, c = ‖p‖² and the right-hand side."""

    @abc.abstractmethod
    def bound(self, honest: torch.Tensor, a: torch.Tensor) -> float:
        """The constraint's right-hand side for honest rows (float64) and a_i = ‖mean − h_i‖²."""

    def gamma(self, honest: torch.Tensor) -> float:
        """The γ the rows use for honest rows [h, d] (see the module docstring for the degenerate cases)."""
        x = honest.double()
        mean = x.mean(dim=0)
        p = perturbation(x, self.perturbation)
        if not (torch.isfinite(x).all() and torch.isfinite(p).all()):
            return 0.0
        centred = mean - x
        a = (centred * centred).sum(dim=1)
        b = centred @ p
        c = float(p @ p)
        bound = self.bound(x, a)
        if c == 0.0 or bound == 0.0:
            return 0.0
        found = largest_satisfying(lambda g: self.satisfied(g, a, b, c, bound), self.gamma_init, tol=self.tol,
                                   floor=self.gamma_init * 2.0 ** -MAX_STEPS)
        return 0.0 if found is None else found

    def rows(self, honest, context):
        x = honest.double()
        gamma = self.gamma(honest)
        # γ = 0 adds nothing (not 0·p, which is NaN where a non-finite honest row made p NaN).
        row = x.mean(dim=0) if gamma == 0.0 else x.mean(dim=0) + gamma * perturbation(x, self.perturbation)
        return repeat_row(row, context.f).to(honest.dtype)


@register_attack("minmax")
class MinMax(DistanceBoundAttack):
    """mean(H) + γ·p with the largest γ keeping max_i ‖m − h_i‖ within the largest honest distance."""

    def bound(self, honest, a):
        return float(torch.cdist(honest, honest, compute_mode="donot_use_mm_for_euclid_dist").max()) ** 2

    def satisfied(self, gamma, a, b, c, bound):
        return bool((a + 2.0 * gamma * b + gamma * gamma * c).max() <= bound)


@register_attack("minsum")
class MinSum(DistanceBoundAttack):
    """mean(H) + γ·p with the largest γ keeping Σ_i ‖m − h_i‖² within the largest honest sum of squares."""

    def bound(self, honest, a):
        # Σ_j ‖h_i − h_j‖² = Σ_j ‖h_j − mean‖² + h·‖h_i − mean‖²: no pairwise distances needed.
        return float(a.sum() + honest.shape[0] * a.max())

    def satisfied(self, gamma, a, b, c, bound):
        # Σ_i b_i = ⟨Σ_i (mean − h_i), p⟩ = 0, so the cross term drops out of the sum.
        return bool(a.sum() + a.shape[0] * gamma * gamma * c <= bound)


__all__ = ["PERTURBATIONS", "GAMMA_INIT", "perturbation", "DistanceBoundAttack", "MinMax", "MinSum"]
