"""Every BN scheme under attack: which scheme × defense is the most robust per heterogeneity level.

No seed paper asked this, so there is no claim to check: the section ranks the scheme × defense pairs.
For each pair, heterogeneity and f > 0, the *worst case* is the lowest final accuracy (mean over seeds,
a diverged run at chance accuracy) over the grid's attacks and attacked channels (statistics only, both
channels); a pair's *robustness* is the mean of its worst cases over the grid's f > 0, and its floor the
lowest of them. The top pair is named only when it is above chance and not tied with the next; its lead
is the paired difference of the two pairs' per-seed robustness, with its 95 % interval. The centralized
reference has no Byzantine clients: its no-attack accuracy is the ceiling the ranking is read against.
A pair some attack cannot target (fedtan under the BN-adaptive attack) has a worst case over fewer
attacks than the others: it is shown with its coverage and left out of the ranking, not crowned by it.
"""
from __future__ import annotations

import statistics

from byzbn.grid.claims.common import Section, diff_text, markdown, pct, seed_text, values_of
from byzbn.grid.intervals import paired_difference
from byzbn.grid.report import AT_CHANCE
from byzbn.grid.worst import (DEFAULT_CLASSES, NO_DEFENSE, attack_of, chance_of, defense_of, diverged, outcome,
                              value_of)


def worst_cases(rows: list[dict], chance: float = 1 / DEFAULT_CLASSES) -> dict:
    """{(scheme, defense, heterogeneity, f): (worst Value, its attack, its target, the number of attacks it
    is the worst over)}: the lowest mean over seeds, a diverged run at `chance`. A scheme without
    statistics (groupnorm) is attacked on the channels it has: the statistics-only cells it lacks have
    nothing to attack, so they do not lower its coverage."""
    groups: dict = {}
    for row in rows:
        if row["scenario"] == "no-attack" or (row.get("final_acc") is None and not diverged(row)):
            continue
        key = (row["scheme"], defense_of(row), row["heterogeneity"], row["byzantine"])
        by_seed = groups.setdefault(key, ({}, row["clients"]))[0].setdefault((attack_of(row), row["target"]), {})
        by_seed[row["seed"]] = outcome(row, "final_acc")
    out = {}
    for key, (attacks, clients) in groups.items():
        values = {pair: value_of(by_seed, clients, chance, pair[0]) for pair, by_seed in attacks.items()}
        (attack, target), low = min(values.items(), key=lambda item: (item[1].mean, item[0]))
        out[key] = (low, attack, target, len({a for a, _ in attacks}))
    return out


def ranking(worst: dict, het: str, full_only: bool = True) -> list[tuple]:
    """[(robustness, floor, scheme, defense)] at heterogeneity `het`, most robust first (f > 0 only);
    with `full_only`, only the pairs whose worst cases cover every attack the grid has."""
    pairs: dict = {}
    for (scheme, defense, h, f), (value, *_, covered) in worst.items():
        if h == het and f > 0:
            pairs.setdefault((scheme, defense), []).append((value.mean, covered))
    full = max((c for values in pairs.values() for _, c in values), default=0)
    return sorted(((statistics.fmean(v for v, _ in values), min(v for v, _ in values), s, d)
                   for (s, d), values in pairs.items() if not full_only or all(c == full for _, c in values)),
                  reverse=True)


def robustness_by_seed(worst: dict, scheme: str, defense: str, het: str) -> dict:
    """{seed: the pair's mean over f > 0 of its worst attack's accuracy at that seed}: what pairs compare."""
    curves = [dict(value.by_seed) for (s, d, h, f), (value, *_) in worst.items()
              if (s, d, h) == (scheme, defense, het) and f > 0]
    seeds = set.intersection(*(set(c) for c in curves)) if curves else set()
    return {seed: statistics.fmean(c[seed] for c in curves) for seed in sorted(seeds)}


# The views of the ranking: every attacked cell, then the cells whose attack reaches the statistics only.
VIEWS = (("attacks on either channel", None), ("attacks on the BN statistics only", "stats"))


def section(rows: list[dict], record: dict) -> Section:
    findings, tables = [], []
    chance = chance_of(record)
    for view, target in VIEWS:
        chosen = [r for r in rows if target is None or r["scenario"] == "no-attack" or r["target"] == target]
        worst = worst_cases(chosen, chance)
        fs = sorted({f for (*_, f) in worst if f > 0})
        for het in values_of(rows, "heterogeneity"):
            ranked, shown = ranking(worst, het), ranking(worst, het, full_only=False)
            if ranked:
                partial = [r for r in shown if r not in ranked]
                findings.append(_finding(rows, worst, view, het, fs, ranked, partial, chance))
                tables.append(_table(rows, worst, view, het, fs, ranked + partial))
    return Section("schemes-under-attack", [], tables, {"heatmap.png": "heatmap.png", "breakdown.png": "breakdown.png"},
                   findings)


def _finding(rows: list[dict], worst: dict, view: str, het: str, fs: list, ranked: list, partial: list,
             chance: float) -> str:
    no_attack = dict(scheme="centralized", heterogeneity=het, scenario="no-attack", byzantine=0)
    ceiling = seed_text(rows, **no_attack)
    (score, floor, scheme, defense), rest = ranked[0], ranked[1:]
    where = f"{het}, {view}"
    if score <= chance + AT_CHANCE:
        line = (f"{where}: no pair keeps its worst case above chance ({100 * chance:.0f} %) on average over "
                f"f ∈ {{{', '.join(map(str, fs))}}}, so none is ranked first")
    elif rest and rest[0][0] == score:
        line = f"{where}: {', '.join(f'{s} with {d}' for v, _, s, d in ranked if v == score)} tie at {pct(score)} %"
    else:
        line = (f"{where}: the highest worst case is **{scheme} with {defense}**, {pct(score)} % on average "
                f"over f ∈ {{{', '.join(map(str, fs))}}} (floor {pct(floor)} %)")
        top = robustness_by_seed(worst, scheme, defense, het)
        if rest:
            lead = paired_difference(top, robustness_by_seed(worst, rest[0][2], rest[0][3], het))
            line += f", {diff_text(lead)} points above the next pair ({rest[0][2]} with {rest[0][3]})"
        other = next((r for r in rest if r[2] != scheme), None)
        if other:
            lead = paired_difference(top, robustness_by_seed(worst, other[2], other[3], het))
            line += f" and {diff_text(lead)} above the best other scheme ({other[2]} with {other[3]})"
    undefended = next((r for r in ranked if r[3] == NO_DEFENSE), None)
    if undefended:
        line += f"; the best undefended scheme ({undefended[2]}) averages {pct(undefended[0])} %"
    if ceiling != "–":
        line += f"; centralized without attack: {ceiling} %"
    if partial:
        line += (". Not ranked, because some attack of the grid cannot target them (their worst case covers "
                 "fewer attacks): " + ", ".join(f"{s} with {d} ({pct(v)} %)" for v, _, s, d in partial))
    return line + "."


def _table(rows: list[dict], worst: dict, view: str, het: str, fs: list, pairs: list) -> str:
    head = ["scheme", "defense", "no attack (f = 0)"] + [f"worst, f = {f}" for f in fs] + ["mean", "worst attack"]
    full = max((c[3] for c in worst.values()), default=0)
    body = []
    for score, floor, s, d in pairs:
        cells = [worst.get((s, d, het, f)) for f in fs]
        lowest = min((c for c in cells if c is not None), default=None, key=lambda c: c[0].mean)
        covered = min((c[3] for c in cells if c is not None), default=full)
        body.append([s + (f" ({covered} of {full} attacks)" if covered < full else ""), d,
                     seed_text(rows, scheme=s, heterogeneity=het, scenario="no-attack", byzantine=0)]
                    + [c[0].text() if c else "–" for c in cells] + [pct(score)]
                    + [f"{lowest[1]} on {lowest[2]}" if lowest else "–"])
    return (f"**{het}, {view}** (final test accuracy, %, mean ± 95 % interval over seeds; the worst case over "
            "the view's attacks and channels, a diverged run counted at chance and shown as k/K diverged)\n\n"
            + markdown(head, body))


__all__ = ["VIEWS", "worst_cases", "ranking", "robustness_by_seed", "section"]
