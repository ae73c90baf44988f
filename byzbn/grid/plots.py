"""heatmap.png and breakdown.png: the worst case over attacks (byzbn.grid.worst) at a glance.

heatmap.png: one panel per scheme (× other swept option) and defense; x = f, y = heterogeneity, colour and
number = worst-case final accuracy (%), a second line ± its 95 % interval over seeds, hatched when the
interval is wider than WIDE points either side. breakdown.png: one panel per heterogeneity (× other
swept option) and scheme; worst-case accuracy against f/n, one line per defense with its 95 % interval
as a band, and the no-attack reference dashed. Both read nothing but results.csv's rows; `heatmap_matrices` and
`breakdown_lines` are exactly what is drawn.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from byzbn.grid.worst import DEFAULT_CLASSES, METRICS, NO_ATTACK, axes_of, panel_text, reference, worst_case
from byzbn.runs.results import atomic_write_bytes

MARKERS = "osD^vP*Xh<>"  # one per defense: coinciding curves stay visible
WIDE = 5.0  # a heatmap cell whose 95 % interval is wider than ± this many points is hatched
CHANCE = 1 / DEFAULT_CLASSES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())


def heatmap_matrices(rows: list[dict], metric: str = "final_acc", chance: float = CHANCE, half: bool = False) -> dict:
    """{(scheme, panel, defense): [heterogeneity × f] array of worst-case accuracy in %, NaN where absent};
    with `half`, the half-widths of their 95 % intervals instead (NaN with one seed)."""
    worst, axes = worst_case(rows, metric, chance), axes_of(rows)
    hets, fs = axes["heterogeneities"], axes["fs"]
    out = {}
    for scheme in axes["schemes"]:
        for panel in axes["panels"]:
            for defense in axes["defenses"]:
                grid = np.full((len(hets), len(fs)), np.nan)
                for i, het in enumerate(hets):
                    for j, f in enumerate(fs):
                        value = worst.get((scheme, defense, panel, het, f))
                        if value is not None and not (half and value.half is None):
                            grid[i, j] = 100 * (value.half if half else value.mean)
                if not np.isnan(grid).all():
                    out[(scheme, panel, defense)] = grid
    return out


def heatmap_figure(rows: list[dict], metric: str = "final_acc", chance: float = CHANCE):
    """The heatmap figure; its axes follow heatmap_matrices' order, row-major."""
    plt = _pyplot()
    matrices, axes_order = heatmap_matrices(rows, metric, chance), axes_of(rows)
    halves = heatmap_matrices(rows, metric, chance, half=True)
    hets, fs, defenses = axes_order["heterogeneities"], axes_order["fs"], axes_order["defenses"]
    row_keys = list(dict.fromkeys((scheme, panel) for scheme, panel, _ in matrices))
    cols = len(defenses)
    label_width = 0.09 * max(len(h) for h in hets)  # inches for the heterogeneity labels of the first column
    fig, grid = plt.subplots(len(row_keys), cols, squeeze=False, layout="constrained",
                             figsize=(1.2 + label_width + cols * max(2.2, 0.5 * len(fs) + 0.8),
                                      0.6 + len(row_keys) * max(1.9, 0.4 * len(hets) + 1.2)))
    image = None
    for r, (scheme, panel) in enumerate(row_keys):
        for c, defense in enumerate(defenses):
            ax = grid[r][c]
            matrix = matrices.get((scheme, panel, defense))
            if matrix is None:
                ax.axis("off")
                continue
            image = ax.imshow(matrix, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
            spread = halves.get((scheme, panel, defense))
            for i in range(len(hets)):
                for j in range(len(fs)):
                    text = "–" if np.isnan(matrix[i, j]) else f"{matrix[i, j]:.0f}"
                    ax.text(j, i, text, ha="center", va="center", fontsize="small")
                    if spread is not None and not np.isnan(spread[i, j]):
                        ax.text(j, i + 0.3, f"±{spread[i, j]:.0f}", ha="center", va="center", fontsize="x-small")
                        if spread[i, j] > WIDE:
                            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//",
                                                       linewidth=0, alpha=0.4))
            ax.set_xticks(range(len(fs)), [str(f) for f in fs])
            ax.set_yticks(range(len(hets)), hets if c == 0 else [], fontsize="small")
            ax.set_title(" · ".join(filter(None, [scheme, defense, panel_text(panel)])), fontsize="small")
            if r == len(row_keys) - 1:
                ax.set_xlabel("f (Byzantine clients)")
    if image is not None:
        fig.colorbar(image, ax=grid.ravel().tolist(), shrink=0.8, label="worst case over attacks (%)")
    return fig


def breakdown_lines(rows: list[dict], metric: str = "final_acc", chance: float = CHANCE) -> dict:
    """{(heterogeneity, panel, scheme, line): (f/n list, mean % list, 95 % interval half-width % list)};
    line is a defense or 'no attack' (the reference)."""
    worst, ref, axes = worst_case(rows, metric, chance), reference(rows, metric, chance), axes_of(rows)
    out = {}
    for het in axes["heterogeneities"]:
        for panel in axes["panels"]:
            for scheme in axes["schemes"]:
                for line in [NO_ATTACK] + axes["defenses"]:
                    points = []
                    for f in axes["fs"]:
                        value = (ref.get((scheme, panel, het, f)) if line == NO_ATTACK
                                 else worst.get((scheme, line, panel, het, f)))
                        if value is not None:
                            points.append((f / value.clients, 100 * value.mean, 100 * (value.half or 0.0)))
                    if points:
                        out[(het, panel, scheme, line)] = tuple(list(t) for t in zip(*points))
    return out


def breakdown_figure(rows: list[dict], metric: str = "final_acc", chance: float = CHANCE):
    """The breakdown figure: a row per heterogeneity (× panel), a column per scheme."""
    plt = _pyplot()
    lines, axes = breakdown_lines(rows, metric, chance), axes_of(rows)
    row_keys = [(het, panel) for het in axes["heterogeneities"] for panel in axes["panels"]
                if any(k[:2] == (het, panel) for k in lines)]
    schemes = axes["schemes"]
    styles = {d: dict(color=f"C{i % 10}", marker=MARKERS[i % len(MARKERS)], markersize=4, linewidth=1.5)
              for i, d in enumerate(axes["defenses"])}
    styles[NO_ATTACK] = dict(color="black", linestyle="--", linewidth=1, marker=None, zorder=3)
    fig, grid = plt.subplots(len(row_keys), len(schemes), squeeze=False, sharex=True, sharey=True,
                             figsize=(0.8 + 3.6 * len(schemes), 0.8 + 2.8 * len(row_keys)))
    for r, (het, panel) in enumerate(row_keys):
        for c, scheme in enumerate(schemes):
            ax = grid[r][c]
            for line in [NO_ATTACK] + axes["defenses"]:
                data = lines.get((het, panel, scheme, line))
                if data is None:
                    continue
                xs, ys, halves = data
                style = styles[line]
                ax.plot(xs, ys, label=line, **style)
                if any(halves):
                    ax.fill_between(xs, [y - s for y, s in zip(ys, halves)], [y + s for y, s in zip(ys, halves)],
                                    alpha=0.15, linewidth=0, color=style["color"])
            ax.set_title(" · ".join(filter(None, [scheme, f"heterogeneity {het}", panel_text(panel)])),
                         fontsize="small")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            if r == len(row_keys) - 1:
                ax.set_xlabel("f / n")
        grid[r][0].set_ylabel(f"worst-case {METRICS.get(metric, metric)} (%)", fontsize="small")
    handles = {}
    for ax in grid.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        grid[0][-1].legend(list(handles.values()), list(handles), loc="best", fontsize="x-small")
    fig.tight_layout()
    return fig


def write_plots(out: Path, rows: list[dict], metric: str = "final_acc", chance: float = CHANCE) -> list[str]:
    """heatmap.png and breakdown.png in `out` when the grid has attack cells; the names written."""
    if not any(r["scenario"] != "no-attack" and r.get(metric) is not None for r in rows):
        return []
    _save(heatmap_figure(rows, metric, chance), Path(out) / "heatmap.png")
    _save(breakdown_figure(rows, metric, chance), Path(out) / "breakdown.png")
    return ["heatmap.png", "breakdown.png"]


__all__ = ["heatmap_matrices", "heatmap_figure", "breakdown_lines", "breakdown_figure", "write_plots"]
