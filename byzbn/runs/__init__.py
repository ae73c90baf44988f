"""byzbn.runs: one run configuration, from checked options to a trained, stored result.

    errors    ArgumentError and its helpers: a bad argument, reported by the commands on one line (exit 2)
    build     what a configuration means: schemes, algorithm, the Federation it builds
    config    options (attack_eval's names) -> a checked, loaded Plan, before anything is written
    execute   trains a Plan: checkpoints, resume, metrics, summary, curves
    results   the files a run writes, atomically
    run_config  RunConfig: one run's options, typed and frozen, as config.json holds them

The commands (byzbn.cli) and the sweep (byzbn.sweep) build on it; it imports neither. Imports nothing
here until asked (`byzbn.runs.RunConfig` loads run_config), so `byzbn.runs.errors` stays cheap to import.
"""


def __getattr__(name: str):
    if name == "RunConfig":
        from byzbn.runs.run_config import RunConfig

        return RunConfig
    raise AttributeError(f"module 'byzbn.runs' has no attribute {name!r}")
