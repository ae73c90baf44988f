"""results.csv: one row per scenario cell, tidy (one column per variable), in grid order.

Columns: scheme, scenario, every other axis of the grid, the configuration columns the tables and plots
group by (byzbn.grid.planner.ID_COLUMNS), then the cell's result: final and best test accuracy, status,
steps done, communication rounds, clamped statistics, wall time of its run (with --diagnostics, the
final and mean value of each averaged diagnostic), and the run's key and directory. Cells answered by
one shared run repeat its result. Cells whose run has not finished (a partial results.csv) have empty
result columns.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional

from byzbn.runs import results
from byzbn.runs.diagnostics_report import SUMMARY_COLUMNS as DIAGNOSTIC_COLUMNS, has_diagnostics

RESULT_COLUMNS = ("final_acc", "best_acc", "status", "steps_done", "comm_rounds", "stats_clamped", "wall_s")
RUN_COLUMNS = ("run", "run_dir")
INTEGER_COLUMNS = frozenset({"clients", "byzantine", "seed", "steps_done", "comm_rounds", "stats_clamped"})
# A sweep with a clipping rule (centered clipping) adds the mean fraction of rows it clipped per call.
CLIPPED_COLUMN = "clipped_fraction"
FLOAT_COLUMNS = frozenset({"final_acc", "best_acc", "wall_s", CLIPPED_COLUMN, *DIAGNOSTIC_COLUMNS})


def cell_rows(cells, outcomes: dict, store_path) -> list[dict]:
    """The rows of results.csv: `cells` (byzbn.grid.planner.Cell) with `outcomes` {key: summary entry}."""
    rows = []
    # A sweep with --diagnostics adds their final and mean values (byzbn.runs.diagnostics_report).
    columns = RESULT_COLUMNS + (DIAGNOSTIC_COLUMNS if any(map(has_diagnostics, outcomes.values())) else ())
    if any(entry.get(CLIPPED_COLUMN) is not None for entry in outcomes.values()):
        columns += (CLIPPED_COLUMN,)
    for cell in cells:
        entry: Optional[dict] = outcomes.get(cell.key)
        row = {"scheme": cell.scheme, "scenario": cell.scenario, **cell.columns}
        row.update({c: ("" if entry is None else entry.get(c)) for c in columns})
        row.update(run=cell.key, run_dir=str(store_path(cell.key)))
        rows.append(row)
    return rows


def markdown_lines(head: list[str], body: list[list[str]]) -> list[str]:
    """A markdown table's lines: the header, the rule, one line per row."""
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"] + \
           ["| " + " | ".join(row) + " |" for row in body]


def write_results(path: Path, rows: list[dict]) -> None:
    """results.csv, atomically; the columns are the first row's (every row has the same)."""
    text = io.StringIO()
    if rows:
        writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    results.atomic_write_text(Path(path), text.getvalue())


def _parse(column: str, text: str):
    if text == "":
        return None
    if column in INTEGER_COLUMNS:
        return int(text)
    if column in FLOAT_COLUMNS:
        return float(text)
    return text


def read_results(path: Path) -> list[dict]:
    """results.csv's rows with numbers parsed (integers, accuracies, wall time); other columns stay text."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: _parse(k, v) for k, v in row.items()} for row in csv.DictReader(handle)]


__all__ = ["RESULT_COLUMNS", "DIAGNOSTIC_COLUMNS", "RUN_COLUMNS", "cell_rows", "markdown_lines", "write_results",
           "read_results"]
