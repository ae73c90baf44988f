"""byzbn.cli: the commands (`python -m byzbn.attack_eval`, `python -m byzbn.reproduce`, `python -m byzbn.sweep`)
and the argparse pieces they share; what a run is and how it trains live below, in byzbn.runs.

    errors     the one-line parser and report (ArgumentError itself is byzbn.runs.errors'): a bad argument is
               one stderr line, exit status 2
    plugins    --plugin FILE_OR_MODULE, imported before the parser is built (its names become choices)
    options    the shared run options (one table) and add_run_options, which every command calls
    attack_eval, reproduce, sweep   each command's own options and main

Imports nothing here, so `byzbn.cli.errors` stays cheap to import.
"""
