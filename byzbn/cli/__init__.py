"""byzbn.cli: the commands (`python -m byzbn.attack_eval`, `python -m byzbn.reproduce`) and what they share.

    errors     ArgumentError and the one-line parser: a bad argument is one stderr line, exit status 2
    plugins    --plugin FILE_OR_MODULE, imported before the parser is built (its names become choices)
    options    the shared run options (one table) and add_run_options, which every command calls
    validate   parsed options -> a checked Plan (data loaded, objects built), before anything is written
    runner     trains a Plan: checkpoints, metrics, summary, curves
    attack_eval, reproduce   each command's own options and main

Imports nothing here, so `byzbn.cli.errors` stays cheap to import.
"""
