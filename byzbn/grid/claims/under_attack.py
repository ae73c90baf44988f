"""Every BN scheme under attack: which scheme × defense is the most robust per heterogeneity level.

No seed paper asked this, so there is no claim to check: the section ranks the scheme × defense pairs.
For each pair, heterogeneity and f > 0, the *worst case* is the lowest final accuracy (mean over seeds)
over the grid's attacks and attacked channels (statistics only, both channels); a pair's *robustness* is
the mean of its worst cases over the grid's f > 0, and its floor the lowest of them. The centralized
reference has no Byzantine clients: its no-attack accuracy is the ceiling the ranking is read against.
"""
from __future__ import annotations

import statistics

from byzbn.grid.claims.common import Section, markdown, pct, seed_mean, values_of
from byzbn.grid.worst import NO_DEFENSE, attack_of, defense_of


def worst_cases(rows: list[dict]) -> dict:
    """{(scheme, defense, heterogeneity, f): (worst mean accuracy over attacks × targets, its attack, target)}."""
    groups: dict = {}
    for row in rows:
        if row["scenario"] == "no-attack" or row.get("final_acc") is None:
            continue
        key = (row["scheme"], defense_of(row), row["heterogeneity"], row["byzantine"])
        by_seed = groups.setdefault(key, {}).setdefault((attack_of(row), row["target"]), {})
        by_seed[row["seed"]] = row["final_acc"]
    return {key: min((statistics.fmean(seeds.values()), attack, target)
                     for (attack, target), seeds in attacks.items())
            for key, attacks in groups.items()}


def ranking(worst: dict, het: str) -> list[tuple]:
    """[(robustness, floor, scheme, defense)] at heterogeneity `het`, most robust first (f > 0 only)."""
    pairs: dict = {}
    for (scheme, defense, h, f), (value, *_) in worst.items():
        if h == het and f > 0:
            pairs.setdefault((scheme, defense), []).append(value)
    return sorted(((statistics.fmean(v), min(v), s, d) for (s, d), v in pairs.items()), reverse=True)


def section(rows: list[dict], record: dict) -> Section:
    worst = worst_cases(rows)
    fs = sorted({f for (*_, f) in worst if f > 0})
    findings, tables = [], []
    for het in values_of(rows, "heterogeneity"):
        ranked = ranking(worst, het)
        if not ranked:
            continue
        ceiling = seed_mean(rows, scheme="centralized", heterogeneity=het, scenario="no-attack", byzantine=0)
        (score, floor, scheme, defense), rest = ranked[0], ranked[1:]
        other = next((r for r in rest if r[2] != scheme), None)
        undefended = next((r for r in ranked if r[3] == NO_DEFENSE), None)
        line = (f"{het}: the most robust is **{scheme} with {defense}**, worst case {pct(score)} % on average over "
                f"f ∈ {{{', '.join(map(str, fs))}}} (floor {pct(floor)} %)")
        if rest:
            line += f", {100 * (score - rest[0][0]):.1f} points above the next pair ({rest[0][2]} with {rest[0][3]})"
        if other:
            line += f" and {100 * (score - other[0]):.1f} above the best other scheme ({other[2]} with {other[3]})"
        if undefended:
            line += f"; the best undefended scheme ({undefended[2]}) averages {pct(undefended[0])} %"
        if ceiling is not None:
            line += f"; centralized without attack: {pct(ceiling)} %"
        findings.append(line + ".")
        head = ["scheme", "defense", "no attack (f = 0)"] + [f"worst, f = {f}" for f in fs] + ["mean", "worst attack"]
        body = []
        for score, floor, s, d in ranked:
            cells = [worst.get((s, d, het, f)) for f in fs]
            lowest = min((c for c in cells if c is not None), default=None)
            body.append([s, d, pct(seed_mean(rows, scheme=s, heterogeneity=het, scenario="no-attack", byzantine=0))]
                        + [pct(c[0]) if c else "–" for c in cells] + [pct(score)]
                        + [f"{lowest[1]} on {lowest[2]}" if lowest else "–"])
        tables.append(f"**{het}** (final test accuracy, %; worst case over attacks and attacked channels)\n\n"
                      + markdown(head, body))
    return Section("schemes-under-attack", [], tables, {"heatmap.png": "heatmap.png", "breakdown.png": "breakdown.png"},
                   findings)


__all__ = ["worst_cases", "ranking", "section"]
