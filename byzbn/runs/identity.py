"""What a run computes with: the part of its configuration each scenario depends on.

A run is one scheme × scenario of a configuration (attack_eval's config.json). The no-attack scenario
reads neither the attack nor the defense (its Byzantine clients submit the no-op honest mean and the
server averages: byzbn.fl.scenario), and the undefended attack scenario does not read the defense (the
server averages). Without Byzantine clients (f = 0) no attack has anyone to submit for it (byzbn.attacks:
an attack returns no rows at f = 0), so the attack and its parameters are not read either (the target
channel still is: it decides which channels are aggregated per client). So two configurations that
differ only there train the same run, and the sweep (byzbn.grid) trains it once; what the validator
derives from the data (the partition: a data-poisoning attack gives its Byzantine clients shares) is
part of a run's identity in the sweep, so it never merges runs whose data differ.

Options only some schemes read are set to their defaults in the identity of the others (`scheme_unread`):
fixbn's T* and groupnorm's groups, and under fedavg E and the momentum reset for the centralized
reference, which never trains with FedAvg. So a grid over E or the momentum reset trains the centralized
reference once, and configurations at the defaults keep the keys they always had.

Every config key is classified below; a key added to the run options must be added to one of these sets
(tests/test_sweep_plan.py checks that none is left out), and a key nobody classified counts as
computing (a run is never merged with one it differs from).
"""
from __future__ import annotations

from byzbn.runs.build import ADDED_DEFAULTS, uses_fedavg
from byzbn.schemes import DEFAULT_FIXBN_FREEZE

# Read by the attack scenarios only.
ATTACK_KEYS = frozenset({"attack", "attack_params", "target", "attack_fields"})
# Read by the attack+defense scenario only.
DEFENSE_KEYS = frozenset({"defense", "pre", "defense_params", "pre_params"})
# Where and how a run is stored or shown, never what it computes (a resumed run computes the same).
NOT_COMPUTED = frozenset({"out", "resume", "quiet", "checkpoint_every", "plugins", "data_root", "download"})
# What every scenario computes with.
RUN_KEYS = frozenset({"schemes", "clients", "byzantine", "fixbn_freeze", "groups", "algorithm", "local_steps",
                      "reset_client_momentum", "dataset", "heterogeneity", "steps", "batch_size", "lr", "momentum",
                      "width", "eval_every", "seed", "device", "honest", "samples_per_client"})


# What an attack scenario without Byzantine clients does not read.
ATTACKER_KEYS = frozenset({"attack", "attack_params"})


def ignored_keys(scenario: str, byzantine: int) -> frozenset:
    """The config keys scenario `scenario` does not read (with `byzantine` Byzantine clients)."""
    if scenario == "no-attack":
        return ATTACK_KEYS | DEFENSE_KEYS
    unread = DEFENSE_KEYS if scenario == "attack" else frozenset()
    return (unread | ATTACKER_KEYS) if byzantine == 0 else unread


def scheme_unread(config: dict, scheme: str) -> dict:
    """The options scheme `scheme` does not read in `config`, at the values that stand for them in its identity."""
    unread = []
    if scheme != "fixbn":
        unread.append("fixbn_freeze")
    if scheme != "groupnorm":
        unread.append("groups")
    if not uses_fedavg(scheme, config):  # DSGD's values: what a config without these options ran with
        unread += ["algorithm", "local_steps", "reset_client_momentum"]
    defaults = {**ADDED_DEFAULTS, "fixbn_freeze": DEFAULT_FIXBN_FREEZE}
    return {key: defaults[key] for key in unread if key in config}


def run_identity(config: dict, scheme: str, scenario: str) -> dict:
    """The configuration that scheme × scenario of `config` computes with (JSON-ready, keys sorted).

    `config` is a validated Plan's config (byzbn.runs.config); its `schemes` list becomes the one
    `scheme`. Equal identities train to equal results on the same code and data.
    """
    skip = ignored_keys(scenario, config["byzantine"]) | NOT_COMPUTED | {"schemes"}
    identity = {key: value for key, value in config.items() if key not in skip}
    identity.update(scheme_unread(config, scheme))
    identity.update(scheme=scheme, scenario=scenario)
    return dict(sorted(identity.items()))


__all__ = ["ATTACK_KEYS", "DEFENSE_KEYS", "ATTACKER_KEYS", "NOT_COMPUTED", "RUN_KEYS", "ignored_keys", "scheme_unread",
           "run_identity"]
