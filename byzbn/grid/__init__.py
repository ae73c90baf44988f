"""byzbn.grid: the sweep engine behind `python -m byzbn.sweep` and `python -m byzbn.reproduce` (DESIGN.md §10).

    spec      SweepSpec: the swept run options (axes) and the fixed ones; its points
    planner   every point validated; its scenario cells; the distinct runs they need (each trained once)
    store     one directory per distinct run, keyed by a hash of its configuration and byzbn's version
    worker    trains one distinct run in whatever process it lands (resuming from its checkpoint)
    backends  where the runs train: this process, local worker processes (--jobs), or Ray tasks
    table     results.csv: one row per scenario cell
    worst     worst case over attacks, breakdown points
    plots     heatmap.png and breakdown.png
    report    table.md, report.md and the docs page
    engine    plan -> train -> outputs, for the commands
    presets   the grids shipped inside the package (presets/*.toml)

Builds on byzbn.runs (one run: validation, training, files); the commands (byzbn.cli) build on it.
"""
