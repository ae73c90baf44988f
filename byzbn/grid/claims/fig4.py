"""The FBN paper's Figure 4: sign-flip on the BN means, without defense and with NNM∘median / NNM∘trimmed mean.

Cells are heterogeneity levels; each cell compares a scheme's servers on the same seeds: *no attack*
(scenario no-attack), *no defense* (scenario attack) and the defended runs (scenario attack+defense with
pre-aggregation nnm and the rule median or trimmed-mean). Every comparison is paired per seed
(byzbn.grid.claims.common), margins in accuracy points. The rules, fixed before any run:

- *Naive BN without defense degrades*: naive BN attacked − naive BN without attack ≤ −DROP at every
  level (`at_most`); all.
- *FBN without defense learns, then degrades*: the same for FBN (final accuracy only: the learning
  before the fall is not checked); all.
- *NNM∘median gives naive BN back its own no-attack accuracy*: |naive BN with NNM∘median − naive BN
  without attack| ≤ SAME at every level (equivalence, `within`); all.
- *NNM∘median keeps FBN at its no-attack accuracy*: the same for FBN; all.
- *NNM∘trimmed mean behaves like the median*: |NNM∘trimmed mean − NNM∘median| ≤ SAME for every scheme
  × level (equivalence); all.
- Defended FBN against defended naive BN (NNM∘median) is byzbn's own comparison: reported, no verdict.

A cell the grid lacks is left out (a claim with none says "no data"). A diverged run (status not ok) is
left out of its cell's mean and of the paired differences, and shown as "k/K diverged" in the tables.
"""
from __future__ import annotations

from byzbn.grid.claims.common import (Claim, Section, at_most, combine, diff_text, markdown, paired, seed_text, tally,
                                      values_of, within)
from byzbn.grid.claims.figure import bars
from byzbn.grid.worst import NO_ATTACK, NO_DEFENSE, defense_of
from byzbn.runs.results import defense_label

SAME = 0.03  # "the same as" / "keeps" / "behaves like": the paired difference within ±3 points
DROP = 0.10  # "degrades": at least 10 points below the scheme's own no-attack accuracy
PRE, MEDIAN, TRIMMED = "nnm", "median", "trimmed-mean"
SCHEMES = ("naive", "fbn")
NAMES = {"naive": "naive BN", "fbn": "FBN"}
SERVERS = (NO_ATTACK, NO_DEFENSE, MEDIAN, TRIMMED)


def at(scheme: str, het: str, server: str) -> dict:
    """The columns of a cell: `server` is NO_ATTACK, NO_DEFENSE or a defense rule applied after PRE."""
    if server == NO_ATTACK:
        return dict(scheme=scheme, heterogeneity=het, scenario="no-attack")
    if server == NO_DEFENSE:
        return dict(scheme=scheme, heterogeneity=het, scenario="attack")
    return dict(scheme=scheme, heterogeneity=het, scenario="attack+defense", pre=PRE, defense=server)


def label(server: str) -> str:
    return server if server in (NO_ATTACK, NO_DEFENSE) else defense_label(PRE, server)


def section(rows: list[dict], record: dict) -> Section:
    hets = values_of(rows, "heterogeneity")
    schemes = [s for s in SCHEMES if s in values_of(rows, "scheme")] + \
        [s for s in values_of(rows, "scheme") if s not in SCHEMES]

    def diff(scheme, h, a, b):  # the scheme's server a − server b at level h
        return paired(rows, at(scheme, h, a), at(scheme, h, b))

    def claim(text, paper, cells, rule, margin_text, need="all"):
        """cells: [(where, difference)]; rule: the per-cell verdict function."""
        cells = [(w, d) for w, d in cells if d is not None]
        verdicts = [rule(d) for _, d in cells]
        shown = "; ".join(f"{w}: {diff_text(d)}" for w, d in cells)
        return Claim(text, paper, f"{tally(verdicts)}; {shown} points" if cells else "no cell in the grid",
                     combine(verdicts, need), margin_text)

    median, trimmed = label(MEDIAN), label(TRIMMED)
    claims = []
    for scheme, text, paper in (("naive", "Naive BN without defense degrades", "stuck near 10 %"),
                                ("fbn", "FBN without defense learns, then degrades",
                                 "learns (≈ 70 %), then degrades, above all at γ = 0")):
        claims.append(claim(text, paper, [(h, diff(scheme, h, NO_DEFENSE, NO_ATTACK)) for h in hets],
                            lambda d: at_most(d, -DROP),
                            f"{NAMES[scheme]}: no defense − no attack ≤ −{100 * DROP:g} points; every level"))
    for scheme, text, paper in (("naive", "NNM∘median gives naive BN back its own no-attack accuracy",
                                 "the same as naive BN without attack, which is itself poor (max 30 % at the "
                                 "moderate γ)"),
                                ("fbn", "NNM∘median keeps FBN at its no-attack accuracy",
                                 "matches FBN without attack")):
        claims.append(claim(text, paper, [(h, diff(scheme, h, MEDIAN, NO_ATTACK)) for h in hets],
                            lambda d: within(d, SAME),
                            f"{NAMES[scheme]}: −{100 * SAME:g} ≤ {median} − no attack ≤ +{100 * SAME:g} points; "
                            "every level"))
    claims.append(claim("NNM∘trimmed mean behaves like the median", "like the median (Appendix C.3)",
                        [(f"{NAMES.get(s, s)} at {h}", diff(s, h, TRIMMED, MEDIAN)) for s in schemes for h in hets],
                        lambda d: within(d, SAME),
                        f"−{100 * SAME:g} ≤ {trimmed} − {median} ≤ +{100 * SAME:g} points; every scheme and level"))
    versus = [(h, d) for h in hets if (d := paired(rows, at("fbn", h, MEDIAN), at("naive", h, MEDIAN))) is not None]
    claims.append(Claim(f"(byzbn's question) defended FBN against defended naive BN ({median})", "not compared",
                        ("FBN − naive BN, " + "; ".join(f"{h}: {diff_text(d)}" for h, d in versus) + " points")
                        if versus else "no cell in the grid", "–"))

    head = ["scheme"] + [label(s) for s in SERVERS]
    tables = [f"**{h}**: final test accuracy (%), mean ± 95 % interval over seeds\n\n"
              + markdown(head, [[NAMES.get(s, s)] + [seed_text(rows, **at(s, h, v)) for v in SERVERS]
                                for s in schemes]) for h in hets]
    comparisons = ([(f"{NAMES.get(s, s)}: {NO_DEFENSE} − {NO_ATTACK}", s, NO_DEFENSE, NO_ATTACK) for s in schemes]
                   + [(f"{NAMES.get(s, s)}: {median} − {NO_ATTACK}", s, MEDIAN, NO_ATTACK) for s in schemes]
                   + [(f"{NAMES.get(s, s)}: {trimmed} − {median}", s, TRIMMED, MEDIAN) for s in schemes])
    body = [[what] + [diff_text(diff(s, h, a, b)) for h in hets] for what, s, a, b in comparisons]
    body.append([f"FBN − naive BN, both {median}"]
                + [diff_text(paired(rows, at("fbn", h, MEDIAN), at("naive", h, MEDIAN))) for h in hets])
    tables.append("Paired differences (points), per seed, mean ± 95 % interval\n\n"
                  + markdown(["difference"] + hets, body))

    served = [dict(r, server=defense_of(r)) for r in rows
              if r["scenario"] != "attack+defense" or str(r.get("pre")) == PRE]
    attacked = [r for r in rows if r["scenario"] != "no-attack"]
    attacks = ", ".join(f"{a} on {t}" for a, t in dict.fromkeys((r["attack"], r["target"]) for r in attacked))
    figure = bars(served, ["heterogeneity", "server"], {},
                  f"DSGD, n = {rows[0]['clients'] if rows else '?'}, f = {', '.join(values_of(attacked, 'byzantine'))}"
                  f", {attacks or 'no attack'}: final test accuracy (%), mean ± 95 % interval over seeds")
    axes = figure.axes[0]  # the settings' names without their column names: "gamma:0.5\nnnm∘median"
    names = [t.get_text().replace("heterogeneity=", "").replace("server=", "") for t in axes.get_xticklabels()]
    axes.set_xticklabels(names, fontsize=7)
    figure.set_size_inches(max(figure.get_size_inches()[0], 1.2 * len(names) + 1.5), 4.2)
    figure.tight_layout()
    return Section("fig4", claims, tables, {"fig4.png": figure})


__all__ = ["SAME", "DROP", "at", "label", "section"]
