"""Hybrid BN's claim (HBN: "Resolving the Dilemma of Batch Normalisation in Federated Learning").

Cells are heterogeneity × batch size per client; comparisons are paired per seed
(byzbn.grid.claims.common). The rules, fixed before any run:

- *HBN improves on BN*: HBN − BN ≥ 0 in every cell (`combine(..., "all")`).
- *Most at small batch sizes and heterogeneous data*: in the corner (the smallest batch size on the most
  heterogeneous partition, the last in the grid) HBN − BN ≥ 0, and the corner's gain minus every other
  cell's gain ≥ 0 (a paired difference of differences, per seed); all of these.
- HBN against FBN (whose global statistics HBN mixes in) is byzbn's own comparison: reported, no verdict.
"""
from __future__ import annotations

from byzbn.grid.claims.common import (Claim, Section, by_seed, cell_verdicts, combine, diff_text, markdown, paired,
                                      seed_text, tally, values_of)
from byzbn.grid.claims.figure import bars
from byzbn.grid.intervals import paired_difference


def section(rows: list[dict], record: dict) -> Section:
    rows = [r for r in rows if r["scenario"] == "no-attack"]
    hets, batches = values_of(rows, "heterogeneity"), sorted(values_of(rows, "batch_size"), key=int)
    cells = [(h, b) for h in hets for b in batches]

    def at(scheme, h, b):
        return dict(scheme=scheme, heterogeneity=h, batch_size=b)

    def gain_by_seed(h, b):  # {seed: HBN − BN}
        hbn, naive = by_seed(rows, **at("hbn", h, b)), by_seed(rows, **at("naive", h, b))
        return {s: hbn[s] - naive[s] for s in hbn if s in naive}

    gains = {(h, b): d for h, b in cells if (d := paired(rows, at("hbn", h, b), at("naive", h, b))) is not None}
    above = cell_verdicts(list(gains.values()), 0.0)
    claims = [Claim("HBN improves on BN in federated learning", "HBN above BN across settings",
                    f"{tally(above)}; HBN − BN " + ", ".join(diff_text(g) for g in gains.values()) + " points",
                    combine(above, "all"), "HBN − BN ≥ 0 points; every cell")]
    corner = (hets[-1], batches[0]) if cells else None
    if corner in gains:
        versus = {cell: paired_difference(gain_by_seed(*corner), gain_by_seed(*cell)) for cell in gains if cell != corner}
        most = cell_verdicts([gains[corner]] + list(versus.values()), 0.0)
        text = (f"gain at batch {corner[1]}, {corner[0]}: {diff_text(gains[corner])} points; corner gain − other "
                "cells' gains " + ", ".join(f"{diff_text(d)} (batch {c[1]}, {c[0]})" for c, d in versus.items()))
        verdict_text = combine(most, "all")
    else:
        text, verdict_text = "no such cell", "no data"
    claims.append(Claim("… most at small batch sizes and heterogeneous data",
                        "largest gains at small batches on heterogeneous data", text, verdict_text,
                        "corner gain ≥ 0 and ≥ every other cell's gain; all"))
    vs_fbn = [d for h, b in cells if (d := paired(rows, at("hbn", h, b), at("fbn", h, b))) is not None]
    claims.append(Claim("(byzbn's question) HBN against FBN", "not compared",
                        "HBN − FBN " + ", ".join(diff_text(d) for d in vs_fbn) + " points", "–"))

    schemes = ["naive", "fbn", "hbn", "groupnorm"]
    head = ["heterogeneity", "batch"] + schemes + ["HBN − BN (points)"]
    body = [[h, b] + [seed_text(rows, **at(s, h, b)) for s in schemes] + [diff_text(gains.get((h, b)))]
            for h, b in cells]
    figure = bars(rows, ["heterogeneity", "batch_size"], {}, "DSGD: final test accuracy (%), mean ± 95 % interval "
                  "over seeds")
    return Section("hbn", claims, [markdown(head, body)], {"hbn.png": figure})


__all__ = ["section"]
