"""The FixBN paper's claims (Zhong et al., "Making Batch Normalization Great in Federated Deep Learning").

Cells are heterogeneity × local steps E (× client momentum kept or reset); every comparison is paired
per seed (byzbn.grid.claims.common). The rules, fixed before any run:

- *BN beats GN except at high communication frequency with extreme non-IID data*: in every cell with
  momentum kept except E = 1 on extreme non-IID data, BN − GN ≥ 0; in that cell GN − BN ≥ 0. The claim
  holds in *most* cells (`combine(..., "most")`).
- *FixBN recovers (or nears) centralized accuracy*: FixBN − centralized ≥ −NEAR, in most cells.
- *Maintained momentum helps*: kept − reset ≥ 0 for BN and FixBN, in most cells.

A cell whose FedAvg run has fewer than MIN_ROUNDS communication rounds (steps / E, from the sweep's
configuration) measures FedAvg's shortfall rather than BN's: it is left out, and a claim with no cell
left says "not testable at this scale" with the rounds it had.
"""
from __future__ import annotations

from byzbn.grid.claims.common import (Claim, Section, cell_verdicts, combine, diff_text, markdown, paired, seed_text,
                                      tally, untestable, values_of)
from byzbn.grid.claims.figure import bars

NEAR = 0.02  # "nears centralized": FixBN at most 2 points below it
MIN_ROUNDS = 10  # FedAvg rounds (steps / E) a cell needs for its BN comparison to mean anything
KEPT, RESET = "false", "true"  # reset_client_momentum


def steps_of(rows: list[dict], record: dict):
    """The run length in local steps: the sweep's fixed `steps` (or the rows' column when swept); None if unknown."""
    fixed = (record or {}).get("fixed", {}).get("steps")
    if fixed not in (None, ""):
        return int(fixed)
    values = {int(r["steps"]) for r in rows if r.get("steps") not in (None, "")}
    return min(values) if values else None


def section(rows: list[dict], record: dict) -> Section:
    rows = [r for r in rows if r["scenario"] == "no-attack"]
    hets, steps = values_of(rows, "heterogeneity"), values_of(rows, "local_steps")
    extreme = [h for h in hets if h in ("extreme", "gamma:0", "gamma:0.0")]
    high_frequency = min(steps, key=int)
    length = steps_of(rows, record)
    short = {e: f"E = {e}: {length // int(e)} rounds < {MIN_ROUNDS}" for e in steps
             if length is not None and length // int(e) < MIN_ROUNDS}

    def at(scheme, het, e, reset=KEPT):
        return dict(scheme=scheme, heterogeneity=het, local_steps=e, reset_client_momentum=reset)

    cells = [(h, e) for h in hets for e in steps]
    tested = [(h, e) for h, e in cells if e not in short]

    def claim(text, paper, differences, margin, rule, detail=""):
        verdicts = cell_verdicts([d for _, d in differences], margin)
        if not differences and short:
            return Claim(text, paper, "–", untestable(list(short.values())), rule)
        shown = "; ".join(f"{where}: {diff_text(d)}" for where, d in differences)
        left = f" ({'; '.join(short.values())}: left out)" if short else ""
        return Claim(text, paper, f"{tally(verdicts)}{left}; {shown}{detail}", combine(verdicts, "most"), rule)

    differences = []
    for h, e in tested:
        if h in extreme and e == high_frequency:
            differences.append((f"GN − BN at {h}, E = {e}", paired(rows, at("groupnorm", h, e), at("naive", h, e))))
        else:
            differences.append((f"BN − GN at {h}, E = {e}", paired(rows, at("naive", h, e), at("groupnorm", h, e))))
    differences = [(w, d) for w, d in differences if d is not None]
    claims = [claim("BN beats GN except at high communication frequency with extreme non-IID data",
                    "BN outperforms GN in most settings; GN excels at high communication frequency with extreme "
                    "non-IID data", differences, 0.0, "each cell's difference ≥ 0 points; most cells")]

    gaps = [(f"{h}, E = {e}", paired(rows, at("fixbn", h, e), at("centralized", h, e))) for h, e in tested]
    claims.append(claim("FixBN recovers (or nears) centralized accuracy",
                        "FixBN recovers centralized accuracy in many cases",
                        [(w, d) for w, d in gaps if d is not None], -NEAR,
                        f"FixBN − centralized ≥ −{100 * NEAR:g} points; most cells", " (FixBN − centralized)"))

    helps = [(f"{scheme} at {h}, E = {e}", paired(rows, at(scheme, h, e), at(scheme, h, e, RESET)))
             for scheme in ("naive", "fixbn") for h, e in tested]
    claims.append(claim("Maintained (not reset) client momentum helps",
                        "keeping local momentum across rounds stabilizes training and improves accuracy",
                        [(w, d) for w, d in helps if d is not None], 0.0, "kept − reset ≥ 0 points; most cells",
                        " (kept − reset)"))

    head = ["heterogeneity", "E", "centralized", "BN", "BN (reset)", "GN", "GN (reset)", "FixBN", "FixBN (reset)"]
    body = [[h, e] + [seed_text(rows, **at(s, h, e, m))
                      for s, m in [("centralized", KEPT), ("naive", KEPT), ("naive", RESET), ("groupnorm", KEPT),
                                   ("groupnorm", RESET), ("fixbn", KEPT), ("fixbn", RESET)]]
            for h, e in cells]
    figure = bars(rows, ["heterogeneity", "local_steps"], {"reset_client_momentum": KEPT},
                  "FedAvg, client momentum kept: final test accuracy (%)")
    return Section("fixbn", claims, [markdown(head, body)], {"fixbn.png": figure})


__all__ = ["NEAR", "MIN_ROUNDS", "steps_of", "section"]
