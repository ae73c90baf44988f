"""Partial participation: which clients take part in a DSGD step or a FedAvg round.

With participation P < 1 the server samples k = max(1, ⌊P·n⌋) of the n clients each step (DSGD)
or round (FedAvg), uniformly without replacement, from a generator seeded by (run seed, step or round,
seeds.PARTICIPATION_STREAM): the same sample in every scheme and scenario of a run and after a resume, a
fresh one at every step. Byzantine clients are sampled like the others (they are the last f client
indices, h … n − 1), so the number of Byzantine clients in a step varies, hypergeometrically, between
max(0, k − h) and min(k − 1, f) — which changes what a defense built for a fixed f faces (Allouah et al.,
ICML 2024). A step needs at least one honest participant (the attacks are computed from the honest
rows, and a step of Byzantine clients only trains nothing): a sample without one is redrawn from the
same generator, so the draw is the uniform sample conditioned on holding an honest client.

The defense of a step is built for the run's f (defense_f = "run": the server's configured tolerance,
whatever the sample holds) or for the step's sampled Byzantine count ("sampled": an oracle server that
knows it), in both cases capped at what the rule accepts on the k sampled rows (`step_defense`).

    part = sample_participants(seed, step, n=10, f=3, participation=0.5)
    part.clients      # e.g. (0, 2, 4, 5, 8): honest indices first, then the Byzantine ones, ascending
    part.h, part.f    # e.g. 3 honest, 2 Byzantine in this step
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from byzbn._checks import check_f, check_int
from byzbn.defenses import Defense, make_defense
from byzbn.fl import seeds

DEFENSE_F = ("run", "sampled")


def check_participation(value) -> float:
    """A participation fraction: a finite float in (0, 1] (ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 < value <= 1.0:
        raise ValueError(f"participation={value!r} is out of range: valid (0, 1]")
    return float(value)


def check_defense_f(value) -> str:
    """How a step's defense counts the Byzantine clients: "run" or "sampled" (ValueError otherwise)."""
    if value not in DEFENSE_F:
        raise ValueError(f"defense_f must be one of {list(DEFENSE_F)}, got {value!r}")
    return value


def sample_size(n: int, participation: float) -> int:
    """k = max(1, ⌊participation·n⌋): how many of the n clients take part in each step.

    ⌊·⌋ as Flower counts fraction_train's nodes (int(n·fraction)), so both engines sample as many.
    """
    check_int("n", n, 1)
    return max(1, int(n * check_participation(participation)))


@dataclass(frozen=True)
class Participants:
    """The clients of one step: sampled honest indices (in 0 … h − 1) and Byzantine ones (in h … n − 1)."""

    honest: tuple[int, ...]
    byzantine: tuple[int, ...]

    @property
    def clients(self) -> tuple[int, ...]:
        """All participants, honest first, as the runner orders rows (honest rows, then the Byzantine ones)."""
        return self.honest + self.byzantine

    @property
    def n(self) -> int:
        return len(self.honest) + len(self.byzantine)

    @property
    def h(self) -> int:
        return len(self.honest)

    @property
    def f(self) -> int:
        return len(self.byzantine)

    def index(self, device=None) -> torch.Tensor:
        """The participants' client indices as an int64 tensor (to select their rows of a per-client tensor)."""
        return torch.tensor(self.clients, dtype=torch.int64, device=device)


def sample_participants(seed: int, step: int, n: int, f: int, participation: float) -> Participants:
    """The participants of `step` (a DSGD step or a FedAvg round) among n clients whose last f are Byzantine."""
    k = sample_size(n, participation)
    check_f(f, n)
    check_int("seed", seed, 0)
    check_int("step", step, 0)
    h = n - f
    if h < 1:
        raise ValueError(f"f={f} is out of range for partial participation with n={n}: valid f < n "
                         f"(a step needs an honest participant)")
    if k == n:
        return Participants(tuple(range(h)), tuple(range(h, n)))
    gen = seeds.generator(seed, step, seeds.PARTICIPATION_STREAM)
    while True:  # at most a few draws: a sample without an honest client has probability C(f, k) / C(n, k)
        chosen = sorted(torch.randperm(n, generator=gen)[:k].tolist())
        if chosen[0] < h:
            return Participants(tuple(c for c in chosen if c < h), tuple(c for c in chosen if c >= h))


def defense_f(participants: Participants, run_f: int, mode: str) -> int:
    """The f a step's defense is built for: the run's f ("run") or the step's Byzantine count ("sampled")."""
    check_f(run_f)
    return run_f if check_defense_f(mode) == "run" else participants.f


def defense_for(defense: Defense, f: int) -> Defense:
    """`defense` (its pre-aggregators and rule, with their parameters) built for f instead; itself if f is its f."""
    if not isinstance(defense, Defense):
        raise ValueError(f"defense must be a byzbn.defenses.Defense (from make_defense), got {type(defense).__name__}")
    if check_f(f) == defense.f:
        return defense
    pre = [(name, params) for name, params in zip(defense.pre, defense.pre_params)] or None
    return make_defense(defense.name, f, pre=pre, **defense.params)


def largest_fitting_f(defense: Defense, f: int, n: int) -> int:
    """The largest f' <= f for which `defense` built for f' accepts n rows (its check_n); ValueError if none does."""
    check_f(f)
    for candidate in range(f, -1, -1):
        try:
            defense_for(defense, candidate).check_n(n)
            return candidate
        except ValueError:
            continue
    raise ValueError(f"{defense!r} cannot aggregate n={n} rows for any f: sample more clients (participation)")


def step_defense(defense: Defense, participants: Participants, run_f: int, mode: str) -> Defense:
    """The defense a step aggregates its participants' rows with.

    Built for defense_f(participants, run_f, mode), capped at the largest f the rule accepts on the
    step's participants.n rows: a sample may hold more Byzantine clients than the rule tolerates on so
    few rows (median, trimmed mean and the Krum family need 2f < n), and the server then tolerates what
    it can rather than stopping the run.
    """
    return defense_for(defense, largest_fitting_f(defense, defense_f(participants, run_f, mode), participants.n))


def step_scenario(scenario, participants: Participants, mode: str):
    """The scenario (byzbn.fl.scenario.Scenario) of a step with these participants: n and f the sampled
    counts, the defense of `step_defense`, the mean built for the sampled f; the attack and targets as
    the run's. The aggregation helpers (byzbn.fl.aggregation) take it as they take the run's."""
    return replace(scenario, n=participants.n, f=participants.f, mean=defense_for(scenario.mean, participants.f),
                   aggregator=step_defense(scenario.aggregator, participants, scenario.f, mode))


__all__ = ["DEFENSE_F", "check_participation", "check_defense_f", "sample_size",
           "Participants", "sample_participants", "defense_f", "defense_for", "largest_fitting_f", "step_defense",
           "step_scenario"]
