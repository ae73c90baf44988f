"""The FBN paper's Figure 3: BN schemes across heterogeneity, without Byzantine clients.

Cells are heterogeneity levels (gamma-similarity: gamma:1.0 is IID, gamma:0.0 extreme non-IID); every
comparison is paired per seed (byzbn.grid.claims.common), margins in accuracy points. The rules, fixed
before any run:

- *Low heterogeneity: all schemes perform about the same*: at the most homogeneous level of the grid
  (the largest γ, gamma:1.0), |scheme − centralized| ≤ SAME for each of naive BN, FixBN and FBN
  (equivalence, `within`); all.
- *Naive BN loses accuracy at γ = 0.5*: naive − centralized ≤ −LOSS at gamma:0.5 (`at_most`).
- *Naive BN collapses at γ = 0*: naive − centralized ≤ −LOSS at gamma:0.0.
- *FixBN at γ = 0 lies between naive BN and FBN*: FixBN − naive ≥ 0 and FBN − FixBN ≥ 0 at gamma:0.0; all.
- *FBN matches centralized BN at γ = 0*: |FBN − centralized| ≤ SAME at gamma:0.0 (equivalence).

A level the grid lacks makes its claim "no data". A diverged run (status not ok) is left out of its
cell's mean and of the paired differences, and shown as "k/K diverged" in the tables.
"""
from __future__ import annotations

from typing import Optional

from byzbn.grid.claims.common import (Claim, Section, at_most, cell_verdicts, combine, diff_text, markdown, paired,
                                      seed_text, tally, values_of, within)
from byzbn.grid.claims.figure import bars

SAME = 0.03  # "about the same" / "matches": the paired difference within ±3 points
LOSS = 0.10  # "loses accuracy" / "collapses": at least 10 points below centralized
SCHEMES = ("centralized", "naive", "fixbn", "fbn")
NAMES = {"centralized": "centralized", "naive": "naive BN", "fixbn": "FixBN", "fbn": "FBN"}


def gamma_of(level: str) -> Optional[float]:
    """The gamma-similarity of a heterogeneity level ('iid' 1, 'extreme' 0, 'gamma:G' G); None for others."""
    if level == "iid":
        return 1.0
    if level == "extreme":
        return 0.0
    if level.startswith("gamma:"):
        try:
            return float(level.split(":", 1)[1])
        except ValueError:
            return None
    return None


def level_at(levels: list[str], gamma: float) -> Optional[str]:
    """The grid's level with this gamma-similarity (the first, when several spell it), None when absent."""
    return next((h for h in levels if gamma_of(h) == gamma), None)


def most_homogeneous(levels: list[str]) -> Optional[str]:
    """The grid's level with the largest gamma-similarity (the first level when none is a gamma level)."""
    gammas = [(g, -i, h) for i, h in enumerate(levels) if (g := gamma_of(h)) is not None]
    return max(gammas)[2] if gammas else (levels[0] if levels else None)


def section(rows: list[dict], record: dict) -> Section:
    rows = [r for r in rows if r["scenario"] == "no-attack"]
    hets = values_of(rows, "heterogeneity")
    schemes = list(SCHEMES) + [s for s in values_of(rows, "scheme") if s not in SCHEMES]

    def at(scheme, h):
        return dict(scheme=scheme, heterogeneity=h)

    def gap(scheme, h):  # scheme − centralized at level h
        return paired(rows, at(scheme, h), at("centralized", h))

    low, half, zero = most_homogeneous(hets), level_at(hets, 0.5), level_at(hets, 0.0)
    claims = []

    # 1. about the same at low heterogeneity
    gaps = [(s, d) for s in ("naive", "fixbn", "fbn") if low is not None and (d := gap(s, low)) is not None]
    verdicts = [within(d, SAME) for _, d in gaps]
    text = (f"{tally(verdicts)} at {low}; " + ", ".join(f"{NAMES[s]} − centralized {diff_text(d)}" for s, d in gaps)
            + " points") if gaps else "no pair in the grid"
    claims.append(Claim("Low heterogeneity: all schemes perform about the same", "≈ 80 % for all", text,
                        combine(verdicts, "all"), f"−{100 * SAME:g} ≤ scheme − centralized ≤ +{100 * SAME:g} points "
                        "at the most homogeneous level; every scheme"))

    # 2. and 3. naive BN's losses
    for level, gamma, claim_text, paper in ((half, "0.5", "Naive BN loses accuracy at γ = 0.5",
                                             "≈ 40 % against ≈ 80 % (40 points lost)"),
                                            (zero, "0.0", "Naive BN collapses at γ = 0", "best ≈ 17 %")):
        d = gap("naive", level) if level is not None else None
        text = (f"naive BN − centralized {diff_text(d)} points at {level}" if d is not None
                else f"no gamma:{gamma} cell in the grid")
        claims.append(Claim(claim_text, paper, text, at_most(d, -LOSS),
                            f"naive BN − centralized ≤ −{100 * LOSS:g} points at gamma:{gamma}"))

    # 4. FixBN between naive BN and FBN at γ = 0
    if zero is not None:
        steps = [("FixBN − naive BN", paired(rows, at("fixbn", zero), at("naive", zero))),
                 ("FBN − FixBN", paired(rows, at("fbn", zero), at("fixbn", zero)))]
        steps = [(w, d) for w, d in steps if d is not None]
        verdicts = cell_verdicts([d for _, d in steps], 0.0)
        text = ", ".join(f"{w} {diff_text(d)}" for w, d in steps) + f" points at {zero}" if steps else "no pair"
        if steps and (fix := gap("fixbn", zero)) is not None:
            text += f" (FixBN − centralized {diff_text(fix)})"
    else:
        verdicts, text = [], "no gamma:0.0 cell in the grid"
    claims.append(Claim("FixBN at γ = 0 lies between naive BN and FBN", "max ≈ 75 %, 5 points below centralized",
                        text, combine(verdicts, "all"), "FixBN − naive BN ≥ 0 and FBN − FixBN ≥ 0 points at "
                        "gamma:0.0; both"))

    # 5. FBN matches centralized at γ = 0
    d = gap("fbn", zero) if zero is not None else None
    claims.append(Claim("FBN matches centralized BN at γ = 0", "≈ 80 %, matches centralized",
                        f"FBN − centralized {diff_text(d)} points at {zero}" if d is not None
                        else "no gamma:0.0 cell in the grid", within(d, SAME),
                        f"−{100 * SAME:g} ≤ FBN − centralized ≤ +{100 * SAME:g} points at gamma:0.0"))

    accuracy = ("Final test accuracy (%), mean ± 95 % interval over seeds\n\n"
                + markdown(["scheme"] + hets, [[NAMES.get(s, s)] + [seed_text(rows, **at(s, h)) for h in hets]
                                                       for s in schemes]))
    differences = ("Paired difference scheme − centralized (points), per seed, mean ± 95 % interval\n\n"
                   + markdown(["scheme − centralized"] + hets,
                              [[NAMES.get(s, s)] + [diff_text(gap(s, h)) for h in hets] for s in schemes[1:]]))
    figure = bars(rows, ["heterogeneity"], {}, f"DSGD, n = {rows[0]['clients'] if rows else '?'}, no attack: "
                  "final test accuracy (%), mean ± 95 % interval over seeds")
    return Section("fig3", claims, [accuracy, differences], {"fig3.png": figure})


__all__ = ["SAME", "LOSS", "gamma_of", "level_at", "most_homogeneous", "section"]
