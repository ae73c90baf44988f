"""FedTAN's claim (Wang, Shi, Chang, "Why Batch Normalization Damage Federated Learning on Non-IID Data?").

Cells are heterogeneity × local steps E; accuracy comparisons are paired per seed (byzbn.grid.claims.common);
communication rounds as results.csv counts them (one per FedAvg round for every scheme, plus FedTAN's
layer-wise exchanges). The rules, fixed before any run:

- *Layer-wise aggregation beats FedAvg with BN on non-IID data*: FedTAN − BN ≥ 0 in every non-IID cell
  (every heterogeneity but iid), `combine(..., "all")`.
- *At a communication cost*: FedTAN's communication rounds above naive BN's in every cell (counted, not
  measured: no interval); the ratio is reported.
- FedTAN against FBN is byzbn's own comparison (no claim of the paper): reported, no verdict.
"""
from __future__ import annotations

from byzbn.grid.claims.common import (Claim, Section, cell_verdicts, combine, count_text, diff_text, markdown, paired,
                                      seed_text, select, tally, values_of)
from byzbn.grid.claims.figure import bars


def section(rows: list[dict], record: dict) -> Section:
    rows = [r for r in rows if r["scenario"] == "no-attack"]
    hets, steps = values_of(rows, "heterogeneity"), values_of(rows, "local_steps")
    cells = [(h, e) for h in hets for e in steps]
    non_iid = [(h, e) for h, e in cells if h != "iid"]

    def at(scheme, h, e):
        return dict(scheme=scheme, heterogeneity=h, local_steps=e)

    def rounds(scheme, h, e):
        chosen = select(rows, **at(scheme, h, e))
        return chosen[0]["comm_rounds"] if chosen else None

    wins = [d for h, e in non_iid if (d := paired(rows, at("fedtan", h, e), at("naive", h, e))) is not None]
    verdicts = cell_verdicts(wins, 0.0)
    claims = [Claim("Layer-wise aggregation (FedTAN) beats FedAvg with BN on non-IID data",
                    "FedTAN above FedAvg with BN on non-IID data, closer to centralized",
                    f"{tally(verdicts)}; FedTAN − BN " + ", ".join(diff_text(w) for w in wins) + " points",
                    combine(verdicts, "all"), "FedTAN − BN ≥ 0 points; every non-IID cell")]
    ratios = [(rounds("fedtan", h, e), rounds("naive", h, e)) for h, e in cells]
    ratios = [(t, n) for t, n in ratios if t is not None and n]
    costs = [t > n for t, n in ratios]
    ratio_text = ", ".join(sorted({f"{t / n:.0f}×" for t, n in ratios}))
    claims.append(Claim("… at a communication cost", "statistics exchanged layer by layer, more communication",
                        f"FedTAN communicates more in {count_text(costs)} ({ratio_text} BN's rounds)",
                        ("yes" if all(costs) else "no") if costs else "no data",
                        "FedTAN's rounds > BN's; every cell (counted)"))
    vs_fbn = [d for h, e in non_iid if (d := paired(rows, at("fedtan", h, e), at("fbn", h, e))) is not None]
    claims.append(Claim("(byzbn's question) FedTAN against FBN on non-IID data", "not compared",
                        "FedTAN − FBN " + ", ".join(diff_text(d) for d in vs_fbn) + " points", "–"))

    schemes = ["centralized", "naive", "fbn", "fedtan"]
    head = ["heterogeneity", "E"] + schemes + [f"rounds: {s}" for s in schemes[1:]]
    body = [[h, e] + [seed_text(rows, **at(s, h, e)) for s in schemes]
            + [str(r) if (r := rounds(s, h, e)) is not None else "–" for s in schemes[1:]] for h, e in cells]
    figure = bars(rows, ["heterogeneity", "local_steps"], {}, f"FedAvg, n = {rows[0]['clients'] if rows else '?'}: "
                  "final test accuracy (%), mean ± 95 % interval over seeds")
    return Section("fedtan", claims, [markdown(head, body)], {"fedtan.png": figure})


__all__ = ["section"]
