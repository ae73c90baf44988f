"""What a run computes with: the part of its configuration each scenario depends on.

A run is one scheme × scenario of a configuration (attack_eval's config.json). The no-attack scenario
reads neither the attack nor the defense (its Byzantine clients submit the no-op honest mean and the
server averages: byzbn.fl.scenario), and the undefended attack scenario does not read the defense (the
server averages). Without Byzantine clients (f = 0) no attack has anyone to submit for it (byzbn.attacks:
an attack returns no rows at f = 0), so the attack, its parameters and fields are not read either, and
the undefended attack scenario computes exactly the no-attack run (`computed_scenario`): one run answers
the no-attack cell and every undefended attack cell at f = 0, whatever the attack or the target. The
defended scenario at f = 0 still reads the defense and the target (the channels the defense aggregates). So two configurations that
differ only there train the same run, and the sweep (byzbn.grid) trains it once; what the validator
derives from the data (the partition: a data-poisoning attack gives its Byzantine clients shares) is
part of a run's identity in the sweep, so it never merges runs whose data differ.

Options only some schemes read are set to their defaults in the identity of the others (`scheme_unread`):
fixbn's T* and groupnorm's groups, and under fedavg E and the momentum reset for the centralized
reference, which never trains with FedAvg. So a grid over E or the momentum reset trains the centralized
reference once, and configurations at the defaults keep the keys they always had.

Every config key is classified below; a key added to the run options must be added to one of these sets
(tests/test_sweep_plan.py checks that none is left out), and a key nobody classified counts as
computing (a run is never merged with one it differs from). Options added later (`LATER_KEYS`) are left
out of an identity while at the value older configurations ran with, so those keep the keys they had;
a scheme's --scheme-param values are in its own identity only.

Besides the options, an identity holds the content of the run's inputs that its options only name
(byzbn.runs.digests): the sha256 of an npz data file and of every plugin's source.
"""
from __future__ import annotations

from typing import Union

from byzbn.runs.digests import input_digests
from byzbn.runs.run_config import RunConfig, added_defaults
from byzbn.schemes import DEFAULT_FIXBN_FREEZE, SCHEMES

# Read by the attack scenarios only.
ATTACK_KEYS = frozenset({"attack", "attack_params", "target", "attack_fields"})
# Read by the attack+defense scenario only.
DEFENSE_KEYS = frozenset({"defense", "pre", "defense_params", "pre_params", "defense_f"})
# Where and how a run is stored or shown, never what it computes (a resumed run computes the same).
NOT_COMPUTED = frozenset({"out", "resume", "quiet", "checkpoint_every", "plugins", "data_root", "download"})
# What every scenario computes with.
RUN_KEYS = frozenset({"schemes", "clients", "byzantine", "fixbn_freeze", "groups", "algorithm", "local_steps",
                      "reset_client_momentum", "dataset", "heterogeneity", "steps", "batch_size", "lr", "momentum",
                      "width", "eval_every", "seed", "device", "honest", "samples_per_client", "scheme_params",
                      "model", "participation", "diagnostics"})
# Options added after the store's first keys: left out of an identity at their default (scheme_params
# is replaced by the one scheme's entry).
LATER_KEYS = ("scheme_params", "model", "participation", "diagnostics", "defense_f")


# What an attack scenario without Byzantine clients does not read.
ATTACKER_KEYS = frozenset({"attack", "attack_params"})


def computed_scenario(scenario: str, byzantine: int) -> str:
    """The scenario a run computes: without Byzantine clients the undefended attack is no-attack (nobody
    submits for the attack and the server averages either way), so both are answered by one run."""
    return "no-attack" if scenario == "attack" and byzantine == 0 else scenario


def averages_when_defended(config: dict) -> bool:
    """Whether the "defense" is the plain mean with no pre-aggregator: then attack+defense computes exactly
    the undefended attack (the server averages either way), so both are answered by one run."""
    return (config.get("defense") == "mean" and config.get("pre") in ("", "none", None)
            and not config.get("defense_params"))


def ignored_keys(scenario: str, byzantine: int) -> frozenset:
    """The config keys scenario `scenario` does not read (with `byzantine` Byzantine clients). Without
    Byzantine clients the defended scenario still reads the target (the channels the defense aggregates)."""
    scenario = computed_scenario(scenario, byzantine)
    if scenario == "no-attack":
        return ATTACK_KEYS | DEFENSE_KEYS
    unread = DEFENSE_KEYS if scenario == "attack" else frozenset()
    return (unread | ATTACKER_KEYS | {"attack_fields"}) if byzantine == 0 else unread


def scheme_unread(config: dict, scheme: str) -> dict:
    """The options scheme `scheme` does not read in `config` (config.json's dict), at the values that stand for
    them in its identity."""
    unread = []
    if scheme != "fixbn":
        unread.append("fixbn_freeze")
    if scheme != "groupnorm":
        unread.append("groups")
    # byzbn.runs.build.uses_fedavg on the dict: DSGD's values are what a config without these options ran with
    if not (config.get("algorithm", "dsgd") == "fedavg" and SCHEMES[scheme].attackable):
        unread += ["algorithm", "local_steps", "reset_client_momentum"]
    # the centralized reference samples no clients; the defense's f mode is read only when clients are sampled
    if not SCHEMES[scheme].attackable or config.get("participation", 1.0) == 1.0:
        unread.append("defense_f")
    if not SCHEMES[scheme].attackable:
        unread.append("participation")
    defaults = {**added_defaults(), "fixbn_freeze": DEFAULT_FIXBN_FREEZE}
    return {key: defaults[key] for key in unread if key in config}


def run_identity(config: Union[RunConfig, dict], scheme: str, scenario: str) -> dict:
    """The configuration that scheme × scenario of `config` computes with (JSON-ready, keys sorted).

    `config` is a validated Plan's config (byzbn.runs.config), or the dict its config.json holds; its
    `schemes` list becomes the one `scheme`, and the content of its data file and plugins is added as
    `inputs`. Equal identities train to equal results on the same code and data.
    """
    config = config.to_json() if isinstance(config, RunConfig) else dict(config)
    if scenario == "attack+defense" and averages_when_defended(config):
        scenario = "attack"
    skip = ignored_keys(scenario, config["byzantine"]) | NOT_COMPUTED | {"schemes"}
    identity = {key: value for key, value in config.items() if key not in skip and key not in LATER_KEYS}
    defaults = added_defaults()
    later = {key: config[key] for key in LATER_KEYS if key in config and key not in skip}
    later["scheme_params"] = (later.get("scheme_params") or {}).get(scheme, {})
    identity.update({key: value for key, value in later.items() if value != defaults[key]})
    inputs = input_digests(config.get("dataset", ""), config.get("plugins") or [])
    if inputs:
        identity["inputs"] = inputs
    identity.update(scheme_unread(config, scheme))
    identity = {key: value for key, value in identity.items() if key not in LATER_KEYS or value != defaults[key]}
    identity.update(scheme=scheme, scenario=computed_scenario(scenario, config["byzantine"]))
    return dict(sorted(identity.items()))


__all__ = ["ATTACK_KEYS", "DEFENSE_KEYS", "ATTACKER_KEYS", "NOT_COMPUTED", "RUN_KEYS", "LATER_KEYS",
           "computed_scenario", "averages_when_defended", "ignored_keys", "scheme_unread", "run_identity"]
