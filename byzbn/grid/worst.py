"""The robustness figures researchers read, computed from results.csv's rows (byzbn.grid.table.read_results).

For each scheme × defense × heterogeneity × f (and each value of any other swept option: a *panel*), the
**worst case over attacks**: for every attack (with its parameters) the mean over seeds of the final
test accuracy, and the smallest of these means; its std is the sample std over seeds of that worst
attack (None with one seed). The defense of the undefended attack scenario is "no defense"; the
no-attack scenario is the reference, averaged over seeds the same way. The **breakdown point** of a
scheme × defense is the largest f/n up to which the worst case stays within `tolerance` (accuracy, not
percentage points) of the reference at every f of the grid (DESIGN.md §10).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional

from byzbn.grid.table import RESULT_COLUMNS, RUN_COLUMNS
from byzbn.runs.results import defense_label

NO_ATTACK, NO_DEFENSE = "no attack", "no defense"
METRICS = {"final_acc": "final test accuracy", "best_acc": "best test accuracy"}
# Columns with a role in the figures; every other column that varies splits the figures into panels.
ROLE_COLUMNS = frozenset({"scheme", "scenario", "attack", "attack_param", "defense", "pre", "byzantine",
                          "heterogeneity", "seed"}) | frozenset(RESULT_COLUMNS) | frozenset(RUN_COLUMNS)


@dataclass(frozen=True)
class Value:
    """A mean over seeds (and, for a worst case, the attack it is the worst over)."""

    mean: float
    std: Optional[float]
    seeds: int
    clients: int
    attack: Optional[str] = None


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


def _mean(by_seed: dict, clients: int, attack: Optional[str] = None) -> Value:
    values = list(by_seed.values())
    std = statistics.stdev(values) if len(values) >= 2 else None
    return Value(statistics.fmean(values), std, len(values), clients, attack)


def _finished(rows: list[dict], metric: str) -> list[dict]:
    return [row for row in rows if row.get(metric) is not None]


def reference(rows: list[dict], metric: str = "final_acc") -> dict:
    """{(scheme, panel, heterogeneity, f): Value} of the no-attack cells."""
    columns, groups = panel_columns(rows), {}
    for row in _finished(rows, metric):
        if row["scenario"] == "no-attack":
            key = (row["scheme"], panel_of(row, columns), row["heterogeneity"], row["byzantine"])
            groups.setdefault(key, ({}, row["clients"]))[0][row["seed"]] = row[metric]
    return {key: _mean(by_seed, clients) for key, (by_seed, clients) in groups.items()}


def worst_case(rows: list[dict], metric: str = "final_acc") -> dict:
    """{(scheme, defense, panel, heterogeneity, f): Value}: the worst attack's mean over seeds (its attack
    None when several attacks share that mean)."""
    columns, groups = panel_columns(rows), {}
    for row in _finished(rows, metric):
        if row["scenario"] == "no-attack":
            continue
        key = (row["scheme"], defense_of(row), panel_of(row, columns), row["heterogeneity"], row["byzantine"])
        attacks = groups.setdefault(key, ({}, row["clients"]))[0]
        attacks.setdefault(attack_of(row), {})[row["seed"]] = row[metric]  # shared runs repeat: one per seed
    worst = {}
    for key, (attacks, clients) in groups.items():
        means = {attack: _mean(by_seed, clients, attack) for attack, by_seed in attacks.items()}
        low = min(means.values(), key=lambda v: (v.mean, v.attack))
        tied = sum(v.mean == low.mean for v in means.values()) > 1  # e.g. f = 0: every attack is one run
        worst[key] = Value(low.mean, low.std, low.seeds, low.clients, None if tied else low.attack)
    return worst


def breakdown_points(worst: dict, ref: dict, tolerance: float) -> dict:
    """{(scheme, defense, panel, heterogeneity): largest f/n within tolerance of no-attack, or None}.

    None when even the smallest f of the grid falls further, or when no f has a reference.
    """
    curves: dict = {}
    for (scheme, defense, panel, het, f), value in worst.items():
        if (scheme, panel, het, f) in ref:
            curves.setdefault((scheme, defense, panel, het), []).append((f, value, ref[(scheme, panel, het, f)]))
    points = {}
    for key, curve in curves.items():
        point = None
        for f, value, base in sorted(curve, key=lambda item: item[0]):
            if value.mean < base.mean - tolerance:
                break
            point = f / value.clients
        points[key] = point
    return points


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


__all__ = ["NO_ATTACK", "NO_DEFENSE", "METRICS", "ROLE_COLUMNS", "Value", "defense_of", "attack_of", "panel_columns",
           "panel_of", "panel_text", "reference", "worst_case", "breakdown_points", "axes_of"]
