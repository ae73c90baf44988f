"""The fixed attack rules of DESIGN.md §5: sign-flip, FOE, ALIE and the faults gaussian, nan, inf."""
from __future__ import annotations

from statistics import NormalDist
from typing import Optional

import numpy as np
import torch

from byzbn._checks import check_f, check_int
from byzbn.attacks.registry import Attack, finite_float, register_attack, repeat_row

FOE_EPS = 0.1  # the FOE paper's default scale


def alie_z(n: int, f: int) -> float:
    """The ALIE paper's z = Φ⁻¹((n − s)/n) with s = ⌊n/2 + 1⌋ − f (the supporters the attackers need).

    Needs s >= 1, i.e. f <= ⌊n/2⌋: with a Byzantine majority (n − s)/n >= 1 and z is infinite.
    """
    check_int("n", n, 1)
    check_f(f, n)
    s = n // 2 + 1 - f
    if s < 1:
        raise ValueError(f"f={f} is out of range for ALIE's default z with n={n}: valid 0 <= f <= {n // 2} "
                         f"(s = floor(n/2 + 1) - f must be >= 1); pass z explicitly for larger f")
    if s >= n:  # only n <= 2 with f = 0, where no Byzantine row exists to use z
        raise ValueError(f"ALIE's default z is -inf for n={n}, f={f} (s = {s} >= n); pass z explicitly")
    return NormalDist().inv_cdf((n - s) / n)


def honest_std(honest: torch.Tensor) -> torch.Tensor:
    """Per-coordinate std with ddof=1; a single honest row has no spread, so its std is 0 (not NaN)."""
    if honest.shape[0] == 1:
        return torch.zeros_like(honest[0])
    return honest.std(dim=0, correction=1)


def foe_row(honest: torch.Tensor, eps: float) -> torch.Tensor:
    return -eps * honest.mean(dim=0)


def alie_row(honest: torch.Tensor, z: float) -> torch.Tensor:
    return honest.mean(dim=0) - z * honest_std(honest)


@register_attack("sign-flip")
class SignFlip(Attack):
    """−mean(H): every Byzantine client submits the opposite of the honest average."""

    def __init__(self):
        pass

    def rows(self, honest, context):
        return repeat_row(-honest.mean(dim=0), context.f)


@register_attack("foe")
class FallOfEmpires(Attack):
    """Fall of Empires (inner-product manipulation): −eps · mean(H)."""

    def __init__(self, eps: float = FOE_EPS):
        self.eps = finite_float("eps", eps)

    def rows(self, honest, context):
        return repeat_row(foe_row(honest, self.eps), context.f)


@register_attack("alie")
class ALittleIsEnough(Attack):
    """A Little Is Enough: mean(H) − z · std(H) per coordinate; z = None uses the paper's alie_z(n, f)."""

    def __init__(self, z: Optional[float] = None):
        self.z = None if z is None else finite_float("z", z)

    def rows(self, honest, context):
        z = alie_z(context.n, context.f) if self.z is None else self.z
        return repeat_row(alie_row(honest, z), context.f)


@register_attack("gaussian")
class GaussianNoise(Attack):
    """Each coordinate of each Byzantine row drawn from N(mu, sigma²), fresh at every call.

    The draw comes from context.generator: the runner seeds it per (run seed, step, channel), so
    every step and channel gets new noise and two runs with the same seed get the same noise. A
    context without a generator (a stand-alone call) draws from a generator derived from
    (seed, context.step): reproducible, and still different between steps; `seed` only matters
    there. Draws are made in float64 on the generator's device and cast, so a float32 call gives
    the float64 rows rounded.
    """

    def __init__(self, mu: float = 0.0, sigma: float = 200.0, seed: int = 0):
        self.mu = finite_float("mu", mu)
        self.sigma = finite_float("sigma", sigma)
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma!r}")
        self.seed = check_int("seed", seed, 0, 2**63 - 1)

    def generator(self, context) -> torch.Generator:
        """context.generator, or the one a stand-alone call derives from (seed, step)."""
        if context.generator is not None:
            return context.generator
        # SeedSequence mixes the pair, so (seed, step) never collides with (seed + 1, step − k).
        derived = np.random.SeedSequence([self.seed, context.step]).generate_state(1, np.uint64)[0] >> np.uint64(1)
        return torch.Generator(device="cpu").manual_seed(int(derived))

    def rows(self, honest, context):
        gen = self.generator(context)
        noise = torch.randn((context.f, honest.shape[1]), generator=gen, dtype=torch.float64, device=gen.device)
        return (self.mu + self.sigma * noise).to(dtype=honest.dtype, device=honest.device)


@register_attack("nan")
class NaNFault(Attack):
    """Rows of NaN: a crashed client or a corrupted message."""

    def __init__(self):
        pass

    def rows(self, honest, context):
        return honest.new_full((context.f, honest.shape[1]), float("nan"))


@register_attack("inf")
class InfFault(Attack):
    """Rows of +Inf: an overflowed client."""

    def __init__(self):
        pass

    def rows(self, honest, context):
        return honest.new_full((context.f, honest.shape[1]), float("inf"))


__all__ = ["FOE_EPS", "alie_z", "honest_std", "foe_row", "alie_row", "SignFlip", "FallOfEmpires", "ALittleIsEnough",
           "GaussianNoise", "NaNFault", "InfFault"]
