"""The robustness figures researchers read, computed from results.csv's rows (byzbn.grid.table.read_results).

For each scheme × defense × heterogeneity × f (and each value of any other swept option: a *panel*), the
**worst case over attacks**: for every attack (with its parameters) the mean over seeds of the final
test accuracy, and the smallest of these means, with the 95 % Student-t interval over seeds of that
worst attack (byzbn.grid.intervals). A diverged run (status not ok) counts as chance accuracy (1 /
classes) in a worst case and is counted (`diverged`); the no-attack reference shows the mean of its
finished runs and how many diverged. The defense of the undefended attack scenario is "no defense".

The **breakdown point** of a scheme × defense at tolerance τ is the largest f/n up to which the paired
drop (no attack − worst case, per seed) has its interval's upper end ≤ τ at every f of the grid; when
the grid never crosses τ it is censored: "≥ f_max/n (largest f tested)" (DESIGN.md §12).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from byzbn.grid.intervals import mean_interval, paired_difference
from byzbn.grid.table import DIAGNOSTIC_COLUMNS, RESULT_COLUMNS, RUN_COLUMNS
from byzbn.runs.results import defense_label

NO_ATTACK, NO_DEFENSE = "no attack", "no defense"
METRICS = {"final_acc": "final test accuracy", "best_acc": "best test accuracy"}
# Columns with a role in the figures; every other column that varies splits the figures into panels.
ROLE_COLUMNS = frozenset({"scheme", "scenario", "attack", "attack_param", "defense", "pre", "byzantine",
                          "heterogeneity", "seed"}) | frozenset(RESULT_COLUMNS) | frozenset(RUN_COLUMNS) \
    | frozenset(DIAGNOSTIC_COLUMNS)
DEFAULT_CLASSES = 10  # every built-in dataset's; a sweep.json records its data's own (byzbn.grid.planner)


@dataclass(frozen=True)
class Value:
    """A mean over seeds with its 95 % interval (half-width None with one seed), and for a worst case
    the attack it is the worst over (None when several tie). `by_seed` holds what paired differences
    use: every seed's value, a diverged run at chance accuracy; `diverged` counts the diverged seeds."""

    mean: float
    std: Optional[float]
    seeds: int
    clients: int
    attack: Optional[str] = None
    half: Optional[float] = None
    diverged: int = 0
    by_seed: tuple = ()

    @property
    def high(self) -> float:
        return self.mean + (self.half or 0.0)

    def text(self, digits: int = 1) -> str:
        """'52.3 ± 1.1' in %, '52.3' with one seed, with ' (1/3 diverged)' when some seed diverged."""
        head = f"{100 * self.mean:.{digits}f}" + ("" if self.half is None else f" ± {100 * self.half:.{digits}f}")
        return head + (f" ({self.diverged}/{self.seeds} diverged)" if self.diverged else "")


@dataclass(frozen=True)
class Breakdown:
    """A breakdown point: `point` = the largest f/n within tolerance (None: not even the smallest f),
    `censored` when the tolerance is never crossed in the grid (the point is then its largest f/n)."""

    point: Optional[float]
    censored: bool = False

    def text(self) -> str:
        if self.point is None:
            return "below the smallest f/n"
        return f"≥ {self.point:.2f} (largest f tested)" if self.censored else f"{self.point:.2f}"


def chance_of(record: Optional[dict]) -> float:
    """Chance accuracy 1 / classes of a sweep's data (its sweep.json), 1/10 when not recorded."""
    data = (record or {}).get("data") or {}
    classes = max((d["classes"] for d in data.values()), default=DEFAULT_CLASSES)
    return 1.0 / classes


def test_samples_of(record: Optional[dict]) -> Optional[int]:
    """The test set's size (the smallest, when a sweep varies the data), None when not recorded."""
    data = (record or {}).get("data") or {}
    return min((d["test_samples"] for d in data.values()), default=None)


def diverged(row: dict) -> bool:
    """A finished run that stopped on a non-finite loss or parameters (results.csv's status)."""
    return str(row.get("status") or "ok") != "ok"


def defense_of(row: dict) -> str:
    """The figure's name of a cell's server: 'no defense' (undefended attack) or 'nnm∘median'."""
    if row["scenario"] == "attack":
        return NO_DEFENSE
    if row["scenario"] == "no-attack":
        return NO_ATTACK
    return defense_label(row["pre"], row["defense"])


def attack_of(row: dict) -> str:
    """An attack with its parameters when they are swept: 'alie' or 'alie z=1.5'."""
    param = row.get("attack_param")
    return f"{row['attack']} {param}" if param else row["attack"]


def panel_columns(rows: list[dict]) -> list[str]:
    """The columns without a role in the figures that take more than one value (each value: a panel)."""
    columns = [c for c in (rows[0] if rows else {}) if c not in ROLE_COLUMNS]
    return [c for c in columns if len({row[c] for row in rows}) > 1]


def panel_of(row: dict, columns: list[str]) -> tuple:
    return tuple((c, row[c]) for c in columns)


def panel_text(panel: tuple) -> str:
    return ", ".join(f"{c}={v}" for c, v in panel)


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def value_of(by_seed: dict, clients: int, chance: float, attack: Optional[str] = None, as_chance: bool = True) -> Value:
    """by_seed: {seed: (accuracy, diverged)}. The mean counts a diverged seed at chance (as_chance) or
    leaves it out (the mean of the finished runs); `by_seed` always holds it at chance."""
    paired = tuple(sorted((seed, chance if bad else acc) for seed, (acc, bad) in by_seed.items()))
    shown = [v for _, v in paired] if as_chance else [acc for acc, bad in by_seed.values() if not bad]
    interval = mean_interval(shown) or mean_interval([chance])
    bad = sum(b for _, b in by_seed.values())
    return Value(interval.mean, interval.std, len(by_seed), clients, attack, interval.half, bad, paired)


def _finished(rows: list[dict], metric: str) -> list[dict]:
    return [row for row in rows if row.get(metric) is not None or diverged(row)]


def outcome(row: dict, metric: str) -> tuple:
    """(accuracy, diverged) of a finished row: what `value_of` reads per seed."""
    return (row.get(metric) or 0.0, diverged(row))


def reference(rows: list[dict], metric: str = "final_acc", chance: float = 1 / DEFAULT_CLASSES) -> dict:
    """{(scheme, panel, heterogeneity, f): Value} of the no-attack cells: the mean of the finished runs."""
    columns, groups = panel_columns(rows), {}
    for row in _finished(rows, metric):
        if row["scenario"] == "no-attack":
            key = (row["scheme"], panel_of(row, columns), row["heterogeneity"], row["byzantine"])
            groups.setdefault(key, ({}, row["clients"]))[0][row["seed"]] = outcome(row, metric)
    return {key: value_of(by_seed, clients, chance, as_chance=False) for key, (by_seed, clients) in groups.items()}


def worst_case(rows: list[dict], metric: str = "final_acc", chance: float = 1 / DEFAULT_CLASSES) -> dict:
    """{(scheme, defense, panel, heterogeneity, f): Value}: the worst attack's mean over seeds, a diverged
    run at chance accuracy (its attack None when several attacks share that mean)."""
    columns, groups = panel_columns(rows), {}
    for row in _finished(rows, metric):
        if row["scenario"] == "no-attack":
            continue
        key = (row["scheme"], defense_of(row), panel_of(row, columns), row["heterogeneity"], row["byzantine"])
        attacks = groups.setdefault(key, ({}, row["clients"]))[0]
        attacks.setdefault(attack_of(row), {})[row["seed"]] = outcome(row, metric)  # shared runs repeat
    worst = {}
    for key, (attacks, clients) in groups.items():
        means = {attack: value_of(by_seed, clients, chance, attack) for attack, by_seed in attacks.items()}
        low = min(means.values(), key=lambda v: (v.mean, v.attack))
        tied = sum(v.mean == low.mean for v in means.values()) > 1  # e.g. f = 0: every attack is one run
        worst[key] = Value(low.mean, low.std, low.seeds, low.clients, None if tied else low.attack, low.half,
                           low.diverged, low.by_seed)
    return worst


def paired_drop(base: Value, value: Value):
    """no attack − worst case, per seed (byzbn.grid.intervals.paired_difference), or None."""
    return paired_difference(dict(base.by_seed), dict(value.by_seed))


def breakdown_points(worst: dict, ref: dict, tolerance: float) -> dict:
    """{(scheme, defense, panel, heterogeneity): Breakdown}: the largest f/n at and below which the paired
    drop's interval stays at or under `tolerance` (its mean, with one seed); censored when never crossed."""
    curves: dict = {}
    for (scheme, defense, panel, het, f), value in worst.items():
        if (scheme, panel, het, f) in ref:
            curves.setdefault((scheme, defense, panel, het), []).append((f, value, ref[(scheme, panel, het, f)]))
    points = {}
    for key, curve in curves.items():
        point, crossed = None, False
        for f, value, base in sorted(curve, key=lambda item: item[0]):
            drop = paired_drop(base, value)
            if drop is None or drop.high > tolerance:
                crossed = True
                break
            point = f / value.clients
        points[key] = Breakdown(point, censored=not crossed and point is not None)
    return points


def attacks_covered(rows: list[dict]) -> list[str]:
    """The attacks (with their swept parameters) a worst case over `rows` is taken over, in grid order."""
    return _ordered(attack_of(r) for r in rows if r["scenario"] != "no-attack" and r["byzantine"] > 0)


def axes_of(rows: list[dict]) -> dict:
    """The orders the figures use: schemes, defenses ('no defense' first), panels, heterogeneities (as in
    results.csv) and f (ascending)."""
    columns = panel_columns(rows)
    attacked = [r for r in rows if r["scenario"] != "no-attack"]
    defenses = _ordered(defense_of(r) for r in attacked)
    defenses.sort(key=lambda d: d != NO_DEFENSE)
    return {"schemes": _ordered(r["scheme"] for r in rows), "defenses": defenses,
            "panels": _ordered(panel_of(r, columns) for r in rows),
            "heterogeneities": _ordered(r["heterogeneity"] for r in rows),
            "fs": sorted({r["byzantine"] for r in rows})}


__all__ = ["NO_ATTACK", "NO_DEFENSE", "METRICS", "ROLE_COLUMNS", "DEFAULT_CLASSES", "Value", "Breakdown", "chance_of",
           "test_samples_of", "diverged", "defense_of", "attack_of", "panel_columns", "panel_of", "panel_text",
           "outcome", "value_of", "reference", "worst_case", "paired_drop", "breakdown_points", "attacks_covered", "axes_of"]
