"""Tables and plots of python -m byzbn.reproduce: mean ± 95 % Student-t interval over seeds of the figure's runs.

Entries are the runs' summary entries and records their metric records (byzbn.runs.execute.run_one, read
from the sweep's store), both tagged with the gamma, seed and scenario label (byzbn.cli.reproduce).
Everything is aggregated per (gamma, scheme, label) over the seeds: the mean with the half-width of its
95 % Student-t interval (byzbn.grid.intervals), absent with one seed; a diverged run is counted, not averaged.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Optional

from byzbn.grid.intervals import mean_interval
from byzbn.runs import results

FIG4_FIXED_LABELS = ("no attack", "no defense")


def defended_label(defense: str, pre: str) -> str:
    """fig4's name of the attack+defense scenario: 'nnm∘median' (the pre-aggregators, then the rule)."""
    return results.defense_label(pre, defense)


def _mean_std(values: list[float]) -> tuple[float, Optional[float]]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) >= 2 else None)


def _half(values: list[float]) -> Optional[float]:
    """The half-width of the 95 % Student-t interval of the mean of `values` (None with fewer than two)."""
    interval = mean_interval(values)
    return None if interval is None else interval.half


def aggregate(entries: list[dict]) -> list[dict]:
    """One row per (gamma, scheme, label): final/best accuracy mean, std and 95 % interval half-width over the
    seeds whose run finished (a diverged run is counted in `diverged`, not averaged)."""
    groups: dict = {}
    for e in entries:
        groups.setdefault((e["gamma"], e["scheme"], e["label"]), []).append(e)
    rows = []
    for (gamma, scheme, label), group in groups.items():
        finished = [e for e in group if e["status"] == "ok"] or group  # all diverged: their last numbers
        final, best = [e["final_acc"] for e in finished], [e["best_acc"] for e in finished]
        final_mean, final_std = _mean_std(final)
        best_mean, best_std = _mean_std(best)
        rows.append({"gamma": gamma, "scheme": scheme, "label": label, "seeds": sorted(e["seed"] for e in group),
                     "final_mean": final_mean, "final_std": final_std, "best_mean": best_mean, "best_std": best_std,
                     "final_half": _half(final), "best_half": _half(best),
                     "diverged": sum(e["status"] != "ok" for e in group),
                     "wall_s": round(sum(e["wall_s"] for e in group), 3)})
    return rows


def curves(records: list[dict]) -> dict:
    """{(gamma, scheme, label): (steps, mean accuracy, 95 % interval half-width or 0)} over the seeds evaluated
    at each step."""
    points: dict = {}
    for r in records:
        points.setdefault((r["gamma"], r["scheme"], r["label"]), {}).setdefault(r["step"], []).append(r["test_acc"])
    out = {}
    for key, by_step in points.items():
        steps = sorted(by_step)
        out[key] = (steps, [statistics.fmean(by_step[s]) for s in steps], [_half(by_step[s]) or 0.0 for s in steps])
    return out


def _pct(mean: float, std: Optional[float]) -> str:
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def _cell(row: Optional[dict]) -> str:
    if row is None:
        return "–"
    mark = f" ({row['diverged']}/{len(row['seeds'])} diverged)" if row["diverged"] else ""
    return f"{_pct(row['final_mean'], row['final_half'])} / {_pct(row['best_mean'], row['best_half'])}{mark}"


def _markdown(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def gamma_text(g: float) -> str:
    return f"{g:g}" + (" (IID)" if g == 1 else " (extreme non-IID)" if g == 0 else "")


def labels_of(figure: str, config: dict) -> list[str]:
    if figure == "fig3":
        return ["no attack"]
    defenses = [d.strip() for d in config["defenses"].split(",") if d.strip()]
    return list(FIG4_FIXED_LABELS) + [defended_label(d, config["pre"]) for d in defenses]


def _attacked(config: dict) -> str:
    """What fig4's Byzantine clients attack, for the table's caption."""
    stats = f"the BN {config['attack_fields']} (statistics channel)"
    channel = {"stats": stats, "grads": "the gradients", "both": f"the gradients and {stats}"}[config["target"]]
    return f"{config['attack']} on {channel}"


def format_tables(figure: str, config: dict, rows: list[dict]) -> str:
    """Markdown: fig3 one table scheme × gamma; fig4 one table scheme × scenario per gamma."""
    index = {(r["gamma"], r["scheme"], r["label"]): r for r in rows}
    seeds = config["seeds"]
    who = (f"n = {config['clients']}, f = 0" if figure == "fig3" else
           f"n = {config['clients']}, f = {config['byzantine']}, {_attacked(config)}")
    lines = [f"Test accuracy (%) of the final / best evaluation, "
             f"{'mean ± the 95 % Student-t interval over ' if seeds > 1 else ''}"
             f"{seeds} seed{'s' if seeds > 1 else ''}: {config['dataset']}, {who}, {config['steps']} steps, "
             f"width {config['width']:g}, batch {config['batch_size']} per client.", ""]
    if figure == "fig3":
        head = ["scheme"] + [f"γ = {gamma_text(g)}" for g in config["gammas"]]
        body = [[s] + [_cell(index.get((g, s, "no attack"))) for g in config["gammas"]] for s in config["schemes"]]
        lines += _markdown(head, body)
    else:
        labels = labels_of(figure, config)
        for g in config["gammas"]:
            lines += [f"γ = {gamma_text(g)}", ""]
            body = [[s] + [_cell(index.get((g, s, label))) for label in labels] for s in config["schemes"]]
            lines += _markdown(["scheme"] + labels, body) + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _save(fig, path: Path) -> None:
    """Atomically, like every attack_eval output: a temporary file beside `path`, then os.replace."""
    import matplotlib.pyplot as plt

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png", dpi=90)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def _band(ax, xs, mean, std, color, label, style="-", linewidth=1.5):
    ys = [100 * m for m in mean]
    ax.plot(xs, ys, style, color=color, label=label, markersize=4, linewidth=linewidth)
    if any(std):
        ax.fill_between(xs, [100 * (m - s) for m, s in zip(mean, std)], [100 * (m + s) for m, s in zip(mean, std)],
                        color=color, alpha=0.2, linewidth=0)


def _line_style(figure: str, index: int) -> tuple[str, float]:
    """fig4's defended runs often lie on the no-attack line: that one is drawn wide, the defenses dashed."""
    if figure != "fig4":
        return "-", 1.5
    return ("-", 3.0) if index == 0 else ("-", 1.5) if index == 1 else ("--", 1.5)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fig3(path: Path, config: dict, rows: list[dict]) -> None:
    """Best and final accuracy against gamma, one line per scheme; the gammas are equally spaced in --gammas order."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    position = {g: i for i, g in enumerate(config["gammas"])}
    for ax, which in zip(axes, ("best", "final")):
        for i, scheme in enumerate(config["schemes"]):
            got = sorted((position[r["gamma"]], r[f"{which}_mean"], r[f"{which}_half"] or 0.0)
                         for r in rows if r["scheme"] == scheme)
            if got:
                xs, mean, std = zip(*got)
                _band(ax, xs, mean, std, f"C{i}", scheme, "-o")
        ax.set_xticks(range(len(position)), [f"{g:g}" for g in config["gammas"]])
        ax.set_xlim(-0.3, len(position) - 0.7)
        ax.set_xlabel("γ (1 = IID, 0 = extreme non-IID)")
        ax.set_title(f"{which} test accuracy")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_ylim(0, 100)
    axes[1].legend(loc="best", fontsize="small")
    fig.suptitle(_title(config), fontsize="small")
    fig.tight_layout()
    _save(fig, path)


def plot_curves_grid(path: Path, figure: str, config: dict, bands: dict) -> None:
    """fig3: one panel per gamma, a line per scheme; fig4: a row per gamma, a column per scheme, a line per scenario."""
    plt = _pyplot()
    gammas, schemes, labels = config["gammas"], config["schemes"], labels_of(figure, config)
    rows, cols = (1, len(gammas)) if figure == "fig3" else (len(gammas), len(schemes))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols + 0.6, 2.7 * rows + 0.5), sharey=True, sharex=True,
                             squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            if figure == "fig3":
                g = gammas[c]
                lines = [(s, (g, s, "no attack"), f"C{i}") for i, s in enumerate(schemes)]
                ax.set_title(f"γ = {gamma_text(g)}", fontsize="medium")
            else:
                g, scheme = gammas[r], schemes[c]
                lines = [(label, (g, scheme, label), f"C{i}") for i, label in enumerate(labels)]
                ax.set_title(f"{scheme}, γ = {gamma_text(g)}", fontsize="medium")
            for i, (name, key, color) in enumerate(lines):
                if key in bands:
                    _band(ax, *bands[key], color, name, *_line_style(figure, i))
            if "fixbn" in schemes and (figure == "fig3" or schemes[c] == "fixbn"):
                # FixBN's T* (byzbn.schemes.FixBN): naive BN before, frozen global statistics after.
                ax.axvline(round(config["fixbn_freeze"] * config["steps"]), color="gray", linestyle=":",
                           linewidth=1, label="fixbn T*")
            ax.grid(alpha=0.3)
            if r == rows - 1:
                ax.set_xlabel("step")
        axes[r][0].set_ylabel("test accuracy (%)")
    axes[0][0].set_ylim(0, 100)
    drawn = [ax for ax in axes.flat if ax.get_legend_handles_labels()[0]]  # cells still training draw nothing
    if drawn:
        drawn[-1].legend(loc="best", fontsize="x-small")
    fig.suptitle(_title(config), fontsize="small")
    fig.tight_layout()
    _save(fig, path)


def _title(config: dict) -> str:
    seeds = config["seeds"]
    return (f"{Path(config['dataset']).name}, width {config['width']:g}, {config['steps']} steps, "
            f"n = {config['clients']}" + (f", f = {config['byzantine']}" if "byzantine" in config else "")
            + (f", mean ± 95 % interval over {seeds} seeds" if seeds > 1 else ", 1 seed"))


def write_report(out: Path, figure: str, config: dict, entries: list[dict], records: list[dict],
                 wall_s: Optional[float] = None) -> str:
    """summary.json, table.md and the figure's PNGs in `out`; returns the table text."""
    rows = aggregate(entries)
    table = format_tables(figure, config, rows)
    summary = {"figure": figure, "config": config, "aggregate": rows, "runs": entries,
               "training_wall_s": round(sum(e["wall_s"] for e in entries), 3)}
    if wall_s is not None:
        summary["invocation_wall_s"] = round(wall_s, 3)
    results.atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    results.atomic_write_text(out / "table.md", f"# {figure}\n\n{table}")
    bands = curves(records)
    if figure == "fig3":
        plot_fig3(out / "fig3.png", config, rows)
        plot_curves_grid(out / "fig3_curves.png", figure, config, bands)
    else:
        plot_curves_grid(out / "fig4.png", figure, config, bands)
    return table


__all__ = ["FIG4_FIXED_LABELS", "defended_label", "aggregate", "curves", "format_tables", "plot_fig3",
           "plot_curves_grid", "write_report"]
