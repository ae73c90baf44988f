"""byzbn.flower: FBN and robust statistics aggregation as a Flower app (flwr 1.42, Message API).

Needs the optional extra: pip install -c constraints.txt "byzbn[flower]".

    client     the ClientApp: a client's E local steps (byzbn.fl.client), its update and, apart, its BN statistics
    strategy   the Strategy: byzbn defenses on the updates, the scheme's robust statistics merge, evaluation
    server     the ServerApp's main: every scheme × scenario run on one set of SuperNodes, attack_eval's outputs
    records    what travels: parameters, running statistics, updates and statistics as Flower records
    spec       the client's part of a run, sent in every train message
    experiment the options (attack_eval's, through byzbn.cli's parser and byzbn.runs' validator) and Flower's
    simulation the in-process Simulation Engine; command / __main__: `python -m byzbn.flower`
    app        the components `flwr run .` loads (pyproject.toml's [tool.flwr.app])

Imports nothing here, so that `python -m byzbn.flower` can say what is missing when flwr is not installed.
"""
