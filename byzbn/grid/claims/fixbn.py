"""The FixBN paper's claims (Zhong et al., "Making Batch Normalization Great in Federated Deep Learning").

Cells are heterogeneity × local steps E (× client momentum kept or reset), final accuracy averaged over
seeds. The rules, fixed before any run:

- *BN beats GN except at high communication frequency with extreme non-IID data*: FedAvg with BN (naive)
  above GroupNorm in every cell with momentum kept except E = 1 on extreme non-IID data, and GroupNorm at
  or above BN in that cell. Each of those comparisons is one cell of the verdict.
- *FixBN recovers (or nears) centralized accuracy*: FixBN within 2 points of the centralized reference,
  cell by cell (momentum kept).
- *Maintained momentum helps*: momentum kept above reset, cell by cell, for BN and FixBN.
"""
from __future__ import annotations

from byzbn.grid.claims.common import (Claim, Section, count_text, markdown, points, seed_mean, seed_text, values_of,
                                      verdict)
from byzbn.grid.claims.figure import bars

NEAR = 0.02  # "nears centralized": within 2 points of accuracy
KEPT, RESET = "false", "true"  # reset_client_momentum


def section(rows: list[dict], record: dict) -> Section:
    rows = [r for r in rows if r["scenario"] == "no-attack"]
    hets, steps = values_of(rows, "heterogeneity"), values_of(rows, "local_steps")
    extreme = [h for h in hets if h in ("extreme", "gamma:0", "gamma:0.0")]
    high_frequency = min(steps, key=int)

    def acc(scheme, het, e, reset=KEPT):
        return seed_mean(rows, scheme=scheme, heterogeneity=het, local_steps=e, reset_client_momentum=reset)

    cells = [(h, e) for h in hets for e in steps]
    others, exceptions = [], []
    for h, e in cells:
        bn, gn = acc("naive", h, e), acc("groupnorm", h, e)
        if bn is None or gn is None:
            continue
        if h in extreme and e == high_frequency:
            exceptions.append((h, e, gn - bn))
        else:
            others.append(bn > gn)
    gn_text = "; ".join(f"GN − BN at {h}, E = {e}: {points(d)}" for h, e, d in exceptions)
    claims = [Claim("BN beats GN except at high communication frequency with extreme non-IID data",
                    "BN outperforms GN in most settings; GN excels at high communication frequency with "
                    "extreme non-IID data",
                    f"BN above GN in {count_text(others)} besides that one; {gn_text or 'no such cell'}",
                    verdict(others + [d >= 0 for *_, d in exceptions]))]

    gaps, naive_gaps = [], []
    for h, e in cells:
        central, fix, bn = acc("centralized", h, e), acc("fixbn", h, e), acc("naive", h, e)
        if None not in (central, fix, bn):
            gaps.append(central - fix)
            naive_gaps.append(central - bn)
    near = [g <= NEAR for g in gaps]
    claims.append(Claim("FixBN recovers (or nears) centralized accuracy",
                        "FixBN recovers centralized accuracy in many cases",
                        f"within {100 * NEAR:.0f} points in {count_text(near)}; centralized − FixBN "
                        f"{_span(gaps)} points (centralized − BN {_span(naive_gaps)})", verdict(near)))

    helps = []
    for scheme in ("naive", "fixbn"):
        for h, e in cells:
            kept, reset = acc(scheme, h, e), acc(scheme, h, e, RESET)
            if kept is not None and reset is not None:
                helps.append(kept - reset)
    claims.append(Claim("Maintained (not reset) client momentum helps",
                        "keeping local momentum across rounds stabilizes training and improves accuracy",
                        f"kept above reset in {count_text([d > 0 for d in helps])} (BN and FixBN); kept − reset "
                        f"{_span(helps)} points", verdict([d > 0 for d in helps])))

    head = ["heterogeneity", "E", "centralized", "BN", "BN (reset)", "GN", "GN (reset)", "FixBN", "FixBN (reset)"]
    body = [[h, e] + [seed_text(rows, scheme=s, heterogeneity=h, local_steps=e, reset_client_momentum=m)
                      for s, m in [("centralized", KEPT), ("naive", KEPT), ("naive", RESET), ("groupnorm", KEPT),
                                   ("groupnorm", RESET), ("fixbn", KEPT), ("fixbn", RESET)]]
            for h, e in cells]
    figure = bars(rows, ["heterogeneity", "local_steps"], {"reset_client_momentum": KEPT},
                  "FedAvg, client momentum kept: final test accuracy (%)")
    return Section("fixbn", claims, [markdown(head, body)], {"fixbn.png": figure})


def _span(values: list[float]) -> str:
    if not values:
        return "–"
    low, high = min(values), max(values)
    return f"{100 * low:+.1f}" if low == high else f"{100 * low:+.1f} to {100 * high:+.1f}"


__all__ = ["NEAR", "section"]
