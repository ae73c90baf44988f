"""The claim sections' figure: grouped bars of final accuracy per scheme across a preset's settings."""
from __future__ import annotations

from byzbn.grid.claims.common import select, values_of
from byzbn.grid.intervals import mean_interval
from byzbn.grid.worst import diverged


def bar_values(rows: list[dict], groups: list[str], match: dict, metric: str = "final_acc") -> dict:
    """{scheme: [(setting label, mean %, 95 % interval half-width % or None)]}: what `bars` draws, one entry
    per setting (diverged runs left out)."""
    rows = select(rows, **match)
    settings = list(dict.fromkeys(tuple(str(r[c]) for c in groups) for r in rows))
    out = {}
    for scheme in values_of(rows, "scheme"):
        entries = []
        for setting in settings:
            chosen = select(rows, scheme=scheme, **dict(zip(groups, setting)))
            interval = mean_interval({r["seed"]: 100 * r[metric] for r in chosen if not diverged(r)}.values())
            if interval is not None:
                entries.append((", ".join(f"{c}={v}" for c, v in zip(groups, setting)), interval.mean, interval.half))
        out[scheme] = entries
    return out


def bars(rows: list[dict], groups: list[str], match: dict, title: str, metric: str = "final_acc"):
    """A matplotlib figure: one group of bars per setting (values of `groups`), one bar per scheme."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = bar_values(rows, groups, match, metric)
    labels = list(dict.fromkeys(label for entries in values.values() for label, *_ in entries))
    width = 0.8 / max(len(values), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.4 * len(labels) * max(len(values), 1) + 2), 4.2))
    for i, (scheme, entries) in enumerate(values.items()):
        where = {label: (mean, std) for label, mean, std in entries}
        xs = [j + (i - (len(values) - 1) / 2) * width for j, label in enumerate(labels) if label in where]
        heights = [where[label][0] for label in labels if label in where]
        errors = [where[label][1] or 0.0 for label in labels if label in where]
        ax.bar(xs, heights, width, yerr=errors, label=scheme, capsize=2)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([label.replace(", ", "\n") for label in labels], fontsize=7)
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=min(len(values), 4))
    fig.tight_layout()
    return fig


__all__ = ["bar_values", "bars"]
