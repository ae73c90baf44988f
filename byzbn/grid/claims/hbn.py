"""Hybrid BN's claim (HBN: "Resolving the Dilemma of Batch Normalisation in Federated Learning").

Cells are heterogeneity × batch size per client, final accuracy averaged over seeds. The rules, fixed
before any run:

- *HBN improves on BN*: HBN above naive BN in every cell.
- *Most at small batch sizes and heterogeneous data*: HBN's gain over naive BN at the smallest batch
  size on the most heterogeneous partition (the last in the grid) positive and at least its gain in
  every other cell.
- HBN against FBN (whose global statistics HBN mixes in) is byzbn's own comparison: reported, no verdict.
"""
from __future__ import annotations

from byzbn.grid.claims.common import (Claim, Section, count_text, difference, markdown, points, seed_mean, seed_text,
                                      values_of, verdict)
from byzbn.grid.claims.figure import bars


def section(rows: list[dict], record: dict) -> Section:
    rows = [r for r in rows if r["scenario"] == "no-attack"]
    hets, batches = values_of(rows, "heterogeneity"), sorted(values_of(rows, "batch_size"), key=int)
    cells = [(h, b) for h in hets for b in batches]

    def acc(scheme, h, b):
        return seed_mean(rows, scheme=scheme, heterogeneity=h, batch_size=b)

    gains = {(h, b): d for h, b in cells if (d := difference(acc("hbn", h, b), acc("naive", h, b))) is not None}
    above = [g > 0 for g in gains.values()]
    claims = [Claim("HBN improves on BN in federated learning", "HBN above BN across settings",
                    f"HBN above BN in {count_text(above)}", verdict(above))]
    corner = (hets[-1], batches[0]) if hets and batches else None
    if corner in gains:
        most = [gains[corner] > 0] + [gains[corner] >= g for cell, g in gains.items() if cell != corner]
        best = max(gains, key=gains.get)
        text = (f"gain at batch {corner[1]}, {corner[0]}: {points(gains[corner])} points; largest gain "
                f"{points(gains[best])} at batch {best[1]}, {best[0]}")
    else:
        most, text = [], "no such cell"
    claims.append(Claim("… most at small batch sizes and heterogeneous data",
                        "largest gains at small batches on heterogeneous data", text, verdict(most)))
    vs_fbn = {(h, b): d for h, b in cells if (d := difference(acc("hbn", h, b), acc("fbn", h, b))) is not None}
    claims.append(Claim("(byzbn's question) HBN against FBN", "not compared",
                        f"HBN above FBN in {count_text([d > 0 for d in vs_fbn.values()])}; HBN − FBN "
                        f"{min(vs_fbn.values(), default=0) * 100:+.1f} to {max(vs_fbn.values(), default=0) * 100:+.1f}"
                        " points", "–"))

    schemes = ["naive", "fbn", "hbn", "groupnorm"]
    head = ["heterogeneity", "batch"] + schemes + ["HBN − BN (points)"]
    body = [[h, b] + [seed_text(rows, scheme=s, heterogeneity=h, batch_size=b) for s in schemes]
            + [points(gains.get((h, b)))] for h, b in cells]
    figure = bars(rows, ["heterogeneity", "batch_size"], {}, "DSGD: final test accuracy (%), mean ± std over seeds")
    return Section("hbn", claims, [markdown(head, body)], {"hbn.png": figure})


__all__ = ["section"]
