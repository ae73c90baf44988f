"""Means over seeds with 95 % Student-t intervals, paired differences, three-valued verdicts, noise floors.

A seed fixes the partition, the initial model, the batches and the attack noise of every scheme ×
scenario × defense, so two cells with the same seed are a *paired* comparison: a difference A − B is the
mean of the per-seed differences d_k with the interval d̄ ± t₀.₉₇₅,K−1 · s_d / √K over the K seeds both
cells have. A verdict "A − B is at least m" is yes when the whole interval lies at or above m, no when
it lies wholly below, inconclusive otherwise. The noise floor is the seed-to-seed standard deviation and
the test set's binomial standard error √(p(1 − p)/N_test) at the measured accuracy p.

Pure functions on floats (no torch, no scipy): the t quantile comes from a table for 1..30 degrees of
freedom and a Cornish–Fisher expansion beyond (within 1e-5 of the exact quantile there).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Optional

LEVEL = 0.95
INTERVAL_TEXT = "95 % Student-t interval over seeds"
# t_{0.975, df} for df = 1..30.
_T975 = (12.7062047, 4.30265273, 3.18244631, 2.77644511, 2.57058184, 2.44691185, 2.36462425, 2.30600414,
         2.26215716, 2.22813885, 2.20098516, 2.17881283, 2.16036866, 2.14478669, 2.13144955, 2.11990530,
         2.10981558, 2.10092204, 2.09302405, 2.08596345, 2.07961384, 2.07387307, 2.06865761, 2.06389856,
         2.05953855, 2.05552944, 2.05183052, 2.04840714, 2.04522964, 2.04227246)
_Z975 = 1.959963984540054

YES, NO, INCONCLUSIVE = "yes", "no", "inconclusive"


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` ≥ 1 degrees of freedom."""
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df must be an integer >= 1, got {df!r}")
    if df <= len(_T975):
        return _T975[df - 1]
    z, v = _Z975, float(df)
    return (z + (z ** 3 + z) / (4 * v) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * v ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * v ** 3))


@dataclass(frozen=True)
class Interval:
    """A mean over K values with its 95 % interval's half-width (None for K = 1) and their sample std."""

    mean: float
    half: Optional[float]
    count: int
    std: Optional[float]

    @property
    def low(self) -> float:
        return self.mean - (self.half or 0.0)

    @property
    def high(self) -> float:
        return self.mean + (self.half or 0.0)

    def text(self, scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
        """'52.3 ± 1.1' (in % with the default scale) or '52.3' when there is one value."""
        sign = "+" if signed else ""
        head = f"{scale * self.mean:{sign}.{digits}f}"
        return head if self.half is None else f"{head} ± {scale * self.half:.{digits}f}"


def mean_interval(values: Iterable[float]) -> Optional[Interval]:
    """The mean of `values` with its 95 % Student-t interval; None when there are none."""
    values = [float(v) for v in values]
    if not values:
        return None
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Interval(mean, None, 1, None)
    std = statistics.stdev(values)
    return Interval(mean, t975(len(values) - 1) * std / math.sqrt(len(values)), len(values), std)


def paired_difference(a: dict, b: dict) -> Optional[Interval]:
    """A − B over the seeds both have ({seed: value} each): the mean of the per-seed differences with its
    interval; None when they share no seed."""
    seeds = [s for s in a if s in b]
    return mean_interval(a[s] - b[s] for s in seeds)


def verdict(difference: Optional[Interval], margin: float = 0.0) -> str:
    """'yes' when the interval of A − B lies wholly at or above `margin`, 'no' when wholly below it,
    'inconclusive' otherwise, and always with one seed (no interval)."""
    if difference is None:
        return "no data"
    if difference.half is None:
        return INCONCLUSIVE
    if difference.low >= margin:
        return YES
    if difference.high < margin:
        return NO
    return INCONCLUSIVE


def combine(verdicts: list[str], need: str = "all") -> str:
    """One verdict from the cells of a claim. need='all' (the claim holds everywhere): yes if every cell
    is yes, no if any is no, else inconclusive. need='most' (holds in most settings): yes if more than
    half are yes, no if at least half are no, else inconclusive. 'no data' when there are none."""
    if need not in ("all", "most"):
        raise ValueError(f"need must be 'all' or 'most', got {need!r}")
    if not verdicts:
        return "no data"
    yes, no = sum(v == YES for v in verdicts), sum(v == NO for v in verdicts)
    if need == "all":
        return NO if no else (YES if yes == len(verdicts) else INCONCLUSIVE)
    return YES if yes > len(verdicts) / 2 else (NO if no >= len(verdicts) / 2 else INCONCLUSIVE)


def binomial_se(p: float, n_test: int) -> float:
    """The standard error of an accuracy p measured on n_test independent test samples."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / n_test)


def pooled_std(groups: Iterable[Iterable[float]]) -> Optional[float]:
    """The seed-to-seed standard deviation pooled over cells (√ of the df-weighted mean variance); None
    when no cell has two values."""
    total, df = 0.0, 0
    for values in groups:
        values = [float(v) for v in values]
        if len(values) >= 2:
            total += statistics.variance(values) * (len(values) - 1)
            df += len(values) - 1
    return math.sqrt(total / df) if df else None


def noise_floor_text(groups: list[list[float]], n_test: Optional[int]) -> str:
    """One sentence: the pooled seed-to-seed std and the binomial SE at the mean accuracy of `groups`."""
    values = [v for g in groups for v in g]
    if not values:
        return "Noise floor: no finished runs."
    p = statistics.fmean(values)
    std = pooled_std(groups)
    parts = [f"seed-to-seed standard deviation {100 * std:.1f} points (pooled over the cells)" if std is not None
             else "seed-to-seed standard deviation not measured (one seed)"]
    if n_test:
        parts.append(f"binomial standard error of the test set {100 * binomial_se(p, n_test):.1f} points "
                     f"(√(p(1 − p)/N) at the mean accuracy p = {100 * p:.1f} %, N = {n_test:,} test images)")
    return "Noise floor: " + "; ".join(parts) + "."


__all__ = ["LEVEL", "INTERVAL_TEXT", "YES", "NO", "INCONCLUSIVE", "t975", "Interval", "mean_interval",
           "paired_difference", "verdict", "combine", "binomial_se", "pooled_std", "noise_floor_text"]
