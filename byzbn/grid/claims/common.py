"""What every claim section is made of: claims with verdicts, data tables, the numbers they rest on.

A section is computed from a sweep's results.csv rows (byzbn.grid.table.read_results) and sweep.json
record, nothing else: `python -m byzbn.claims PRESET OUT` prints it and `--page` writes it into a docs
page, so no number in docs/RESULTS.md is typed by hand. Verdicts follow fixed rules stated in each
preset's module (never tuned to the outcome), three-valued per compared cell (byzbn.grid.intervals): a
cell says yes when the 95 % interval of its paired difference (per seed) lies wholly on the claimed side
of the claim's margin, no when wholly on the other side, inconclusive otherwise (`at_most` for a claim
'A − B ≤ m'; `within`, an equivalence '|A − B| ≤ m', says yes when the interval lies inside [−m, +m] and no
when it lies wholly outside); a claim combines its cells by the rule its module states (`combine`: all
cells, or most of them). A cell the scale cannot test (e.g. too few FedAvg rounds) is left out with the
reason, computed from the sweep's configuration.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from byzbn.grid.intervals import INCONCLUSIVE, NO, YES, Interval, combine, mean_interval, paired_difference
from byzbn.grid.intervals import verdict as interval_verdict
from byzbn.grid.table import markdown_lines
from byzbn.grid.worst import diverged


@dataclass(frozen=True)
class Claim:
    """One row of the claim table: what the paper says, what byzbn measured, and the verdict."""

    claim: str
    paper: str
    byzbn: str
    verdict: str
    margin: str = "–"  # the rule the verdict applies, fixed in code: e.g. "FixBN − centralized ≥ −2 points"


@dataclass
class Section:
    """A preset's generated part of docs/RESULTS.md: claims, data tables (markdown), figures (file names)."""

    preset: str
    claims: list[Claim] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)  # file name -> a matplotlib figure, or a file of the sweep to copy
    findings: list[str] = field(default_factory=list)  # sentences computed from the rows
    statistics: str = ""  # how the numbers were computed and the noise floor (byzbn.grid.claims.section_of)


def markdown(head: list[str], body: list[list[str]]) -> str:
    return "\n".join(markdown_lines(head, body)) + "\n"


def pct(value: Optional[float], digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"



def select(rows: list[dict], **match) -> list[dict]:
    """The finished rows whose columns equal `match` (values compared as results.csv text or numbers)."""
    return [r for r in rows if r.get("final_acc") is not None and all(str(r[k]) == str(v) for k, v in match.items())]


def by_seed(rows: list[dict], metric: str = "final_acc", **match) -> dict:
    """{seed: metric} of the finished, not diverged rows matching `match`."""
    return {r["seed"]: r[metric] for r in select(rows, **match) if not diverged(r)}



def paired(rows: list[dict], a: dict, b: dict, metric: str = "final_acc") -> Optional[Interval]:
    """A − B (the rows matching `a` and `b`) as the mean of per-seed differences with its 95 % interval."""
    return paired_difference(by_seed(rows, metric, **a), by_seed(rows, metric, **b))


def diff_text(value: Optional[Interval]) -> str:
    """A paired difference in signed percentage points with its interval: '+3.1 ± 2.0'."""
    return "–" if value is None else value.text(signed=True)


def cell_verdicts(differences: list[Optional[Interval]], margin: float) -> list[str]:
    """Each cell's three-valued verdict on 'difference ≥ margin' (cells without data left out)."""
    return [interval_verdict(d, margin) for d in differences if d is not None]


def at_most(difference: Optional[Interval], margin: float) -> str:
    """The three-valued verdict on 'difference ≤ margin': yes when the whole interval lies at or below the
    margin, no when wholly above it, inconclusive otherwise (and with one seed); 'no data' for None."""
    if difference is None:
        return "no data"
    return interval_verdict(Interval(-difference.mean, difference.half, difference.count, difference.std), -margin)


def within(difference: Optional[Interval], margin: float) -> str:
    """The three-valued verdict on '|difference| ≤ margin' (equivalence): yes when the whole interval lies
    inside [−margin, +margin], no when it lies wholly outside (above +margin or below −margin),
    inconclusive otherwise (and with one seed); 'no data' for None."""
    if difference is None:
        return "no data"
    if difference.half is None:
        return INCONCLUSIVE
    if -margin <= difference.low and difference.high <= margin:
        return YES
    if difference.low > margin or difference.high < -margin:
        return NO
    return INCONCLUSIVE


def tally(verdicts: list[str]) -> str:
    """'yes in 2, inconclusive in 1 of 3 cells'."""
    counts = [(v, sum(x == v for x in verdicts)) for v in (YES, NO, INCONCLUSIVE)]
    return ", ".join(f"{v} in {c}" for v, c in counts if c) + f" of {len(verdicts)} cell{'s' if len(verdicts) != 1 else ''}"


def untestable(reasons: list[str]) -> str:
    """The verdict of a claim whose every cell is out of the scale's reach."""
    return "not testable at this scale (" + "; ".join(dict.fromkeys(reasons)) + ")"



def seed_text(rows: list[dict], metric: str = "final_acc", **match) -> str:
    """'52.3' (one seed) or '52.3 ± 1.1' (mean ± 95 % interval over seeds), in %; the mean of the finished
    runs with 'k/K diverged' beside it when some seed diverged."""
    chosen = {r["seed"]: r for r in select(rows, **match)}
    if not chosen:
        return "–"
    bad = sum(diverged(r) for r in chosen.values())
    interval = mean_interval(r[metric] for r in chosen.values() if not diverged(r))
    text = "–" if interval is None else interval.text()
    return text + (f" ({bad}/{len(chosen)} diverged)" if bad else "")


def values_of(rows: list[dict], column: str) -> list:
    """The values a column takes, in results.csv order."""
    return list(dict.fromkeys(str(r[column]) for r in rows))


def count_text(holds: list[bool]) -> str:
    return f"{sum(holds)} of {len(holds)} cells"


__all__ = ["Claim", "Section", "markdown", "pct", "select", "by_seed", "paired", "diff_text",
           "cell_verdicts", "at_most", "within", "tally", "untestable", "combine", "seed_text", "values_of",
           "count_text", "YES", "NO", "INCONCLUSIVE"]
