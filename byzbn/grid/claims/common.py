"""What every claim section is made of: claims with verdicts, data tables, the numbers they rest on.

A section is computed from a sweep's results.csv rows (byzbn.grid.table.read_results) and sweep.json
record, nothing else: `python -m byzbn.claims PRESET OUT` prints it and `--page` writes it into a docs
page, so no number in docs/RESULTS.md is typed by hand. Verdicts follow fixed rules stated in each
preset's module (never tuned to the outcome): a claim is reproduced ("yes") when its direction holds in
every compared cell, "partly" when in more than half of them, and "no" otherwise.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Optional

from byzbn.grid.table import markdown_lines


@dataclass(frozen=True)
class Claim:
    """One row of the claim table: what the paper says, what byzbn measured, and the verdict."""

    claim: str
    paper: str
    byzbn: str
    verdict: str


@dataclass
class Section:
    """A preset's generated part of docs/RESULTS.md: claims, data tables (markdown), figures (file names)."""

    preset: str
    claims: list[Claim] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)  # file name -> a matplotlib figure, or a file of the sweep to copy
    findings: list[str] = field(default_factory=list)  # sentences computed from the rows


def markdown(head: list[str], body: list[list[str]]) -> str:
    return "\n".join(markdown_lines(head, body)) + "\n"


def pct(value: Optional[float], digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def points(value: Optional[float]) -> str:
    """A difference of accuracies in percentage points, signed."""
    return "–" if value is None else f"{100 * value:+.1f}"


def select(rows: list[dict], **match) -> list[dict]:
    """The finished rows whose columns equal `match` (values compared as results.csv text or numbers)."""
    return [r for r in rows if r.get("final_acc") is not None and all(str(r[k]) == str(v) for k, v in match.items())]


def seed_mean(rows: list[dict], metric: str = "final_acc", **match) -> Optional[float]:
    """The mean over seeds of `metric` over the rows matching `match` (one value per seed), None if none."""
    by_seed = {r["seed"]: r[metric] for r in select(rows, **match)}
    return statistics.fmean(by_seed.values()) if by_seed else None


def difference(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """a − b, or None when either is missing."""
    return None if a is None or b is None else a - b


def seed_text(rows: list[dict], metric: str = "final_acc", **match) -> str:
    """'52.3' (one seed) or '52.3 ± 1.1' (mean ± sample std over seeds), in %."""
    values = list({r["seed"]: r[metric] for r in select(rows, **match)}.values())
    if not values:
        return "–"
    if len(values) == 1:
        return pct(values[0])
    return f"{pct(statistics.fmean(values))} ± {pct(statistics.stdev(values))}"


def values_of(rows: list[dict], column: str) -> list:
    """The values a column takes, in results.csv order."""
    return list(dict.fromkeys(str(r[column]) for r in rows))


def verdict(holds: list[bool]) -> str:
    """'yes' if the claimed direction holds in every compared cell, 'partly' in more than half, else 'no'."""
    if not holds:
        return "no data"
    if all(holds):
        return "yes"
    return "partly" if sum(holds) > len(holds) / 2 else "no"


def count_text(holds: list[bool]) -> str:
    return f"{sum(holds)} of {len(holds)} cells"


__all__ = ["Claim", "Section", "markdown", "pct", "points", "select", "seed_mean", "difference",
           "seed_text", "values_of",
           "verdict", "count_text"]
