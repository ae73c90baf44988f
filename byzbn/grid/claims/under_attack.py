"""Every BN scheme under attack: which scheme × defense is the most robust per heterogeneity level.

No seed paper asked this, so there is no claim to check: the section ranks the scheme × defense pairs.
For each pair, heterogeneity and f > 0, the *worst case* is the lowest final accuracy (mean over seeds)
over the grid's attacks and attacked channels (statistics only, both channels); a pair's *robustness* is
the mean of its worst cases over the grid's f > 0, and its floor the lowest of them. The centralized
reference has no Byzantine clients: its no-attack accuracy is the ceiling the ranking is read against.
A pair some attack cannot target (fedtan under the BN-adaptive attack) has a worst case over fewer
attacks than the others: it is shown with its coverage and left out of the ranking, not crowned by it.
"""
from __future__ import annotations

import statistics

from byzbn.grid.claims.common import Section, markdown, pct, seed_mean, values_of
from byzbn.grid.worst import NO_DEFENSE, attack_of, defense_of


def worst_cases(rows: list[dict]) -> dict:
    """{(scheme, defense, heterogeneity, f): (worst mean accuracy, its attack, its target, the number of
    attacks it is the worst over)}. A scheme without statistics (groupnorm) is attacked on the channels it
    has: the statistics-only cells it lacks have nothing to attack, so they do not lower its coverage."""
    groups: dict = {}
    for row in rows:
        if row["scenario"] == "no-attack" or row.get("final_acc") is None:
            continue
        key = (row["scheme"], defense_of(row), row["heterogeneity"], row["byzantine"])
        by_seed = groups.setdefault(key, {}).setdefault((attack_of(row), row["target"]), {})
        by_seed[row["seed"]] = row["final_acc"]
    return {key: min((statistics.fmean(seeds.values()), attack, target)
                     for (attack, target), seeds in attacks.items()) + (len({a for a, _ in attacks}),)
            for key, attacks in groups.items()}


def ranking(worst: dict, het: str, full_only: bool = True) -> list[tuple]:
    """[(robustness, floor, scheme, defense)] at heterogeneity `het`, most robust first (f > 0 only);
    with `full_only`, only the pairs whose worst cases cover every attack the grid has."""
    pairs: dict = {}
    for (scheme, defense, h, f), (value, *_, covered) in worst.items():
        if h == het and f > 0:
            pairs.setdefault((scheme, defense), []).append((value, covered))
    full = max((c for values in pairs.values() for _, c in values), default=0)
    return sorted(((statistics.fmean(v for v, _ in values), min(v for v, _ in values), s, d)
                   for (s, d), values in pairs.items() if not full_only or all(c == full for _, c in values)),
                  reverse=True)


# The views of the ranking: every attacked cell, then the cells whose attack reaches the statistics only.
VIEWS = (("attacks on either channel", None), ("attacks on the BN statistics only", "stats"))


def section(rows: list[dict], record: dict) -> Section:
    findings, tables = [], []
    for view, target in VIEWS:
        chosen = [r for r in rows if target is None or r["scenario"] == "no-attack" or r["target"] == target]
        worst = worst_cases(chosen)
        fs = sorted({f for (*_, f) in worst if f > 0})
        for het in values_of(rows, "heterogeneity"):
            ranked, shown = ranking(worst, het), ranking(worst, het, full_only=False)
            if ranked:
                partial = [r for r in shown if r not in ranked]
                findings.append(_finding(rows, view, het, fs, ranked, partial))
                tables.append(_table(rows, worst, view, het, fs, ranked + partial))
    return Section("schemes-under-attack", [], tables, {"heatmap.png": "heatmap.png", "breakdown.png": "breakdown.png"},
                   findings)


def _finding(rows: list[dict], view: str, het: str, fs: list, ranked: list, partial: list) -> str:
    ceiling = seed_mean(rows, scheme="centralized", heterogeneity=het, scenario="no-attack", byzantine=0)
    (score, floor, scheme, defense), rest = ranked[0], ranked[1:]
    other = next((r for r in rest if r[2] != scheme), None)
    undefended = next((r for r in ranked if r[3] == NO_DEFENSE), None)
    line = (f"{het}, {view}: the most robust is **{scheme} with {defense}**, worst case {pct(score)} % on average "
            f"over f ∈ {{{', '.join(map(str, fs))}}} (floor {pct(floor)} %)")
    if rest:
        line += f", {100 * (score - rest[0][0]):.1f} points above the next pair ({rest[0][2]} with {rest[0][3]})"
    if other:
        line += f" and {100 * (score - other[0]):.1f} above the best other scheme ({other[2]} with {other[3]})"
    if undefended:
        line += f"; the best undefended scheme ({undefended[2]}) averages {pct(undefended[0])} %"
    if ceiling is not None:
        line += f"; centralized without attack: {pct(ceiling)} %"
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
        lowest = min((c for c in cells if c is not None), default=None)
        covered = min((c[3] for c in cells if c is not None), default=full)
        body.append([s + (f" ({covered} of {full} attacks)" if covered < full else ""), d,
                     pct(seed_mean(rows, scheme=s, heterogeneity=het, scenario="no-attack", byzantine=0))]
                    + [pct(c[0]) if c else "–" for c in cells] + [pct(score)]
                    + [f"{lowest[1]} on {lowest[2]}" if lowest else "–"])
    return (f"**{het}, {view}** (final test accuracy, %; the worst case over the view's attacks and channels; "
            "0.0: the run diverged)\n\n" + markdown(head, body))


__all__ = ["VIEWS", "worst_cases", "ranking", "section"]
