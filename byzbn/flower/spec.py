"""The client's part of a run: what byzbn's ServerApp tells every ClientApp in each train message.

A ClientApp holds no configuration of its own: the server's ConfigRecord carries what a client needs to
rebuild its data share, the model, the scheme's BN behaviour and its optimizer (attack_eval's options,
under Flower's hyphenated names), and the run it belongs to, so that one set of SuperNodes serves every
scheme × scenario run of a comparison in turn (a node resets its momentum when the run changes).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

from flwr.app import ConfigRecord

from byzbn.data import NPZ_PREFIX
from byzbn.runs.build import scheme_params
from byzbn.runs.run_config import RunConfig


def absolute_dataset(spec: str) -> str:
    """npz:PATH with PATH absolute (a SuperNode's working directory is not the command's); others unchanged."""
    if spec.startswith(NPZ_PREFIX):
        return NPZ_PREFIX + str(Path(spec[len(NPZ_PREFIX):]).expanduser().resolve())
    return spec


def absolute_plugin(spec: str) -> str:
    """A --plugin file as an absolute path (a dotted module name is left as it is)."""
    if spec.endswith(".py") or "/" in spec or "\\" in spec or Path(spec).is_file():
        return str(Path(spec).expanduser().resolve())
    return spec


def absolute_model(spec: str) -> str:
    """--model FILE.py:FUNCTION with FILE absolute (a name or package.module:FUNCTION is left as it is)."""
    source, colon, function = spec.rpartition(":")
    return f"{absolute_plugin(source)}:{function}" if colon and source else spec


@dataclass(frozen=True)
class ClientSpec:
    """Everything a client needs for one run (one scheme × scenario); sent in every train message."""

    run: str                      # "scheme/scenario": a node resets its momentum when this changes
    scheme: str
    scheme_steps: int             # the scheme's `steps`: communication rounds
    scheme_params: str            # JSON object: the scheme's parameters (byzbn.runs.build.scheme_params)
    dataset: str                  # npz paths absolute
    data_root: str                # "" for none
    heterogeneity: str
    seed: int
    shares: int                   # the partition's share count (h, or n when Byzantine clients hold data)
    width: float
    model: str                    # --model, a FILE.py:FUNCTION with FILE absolute
    batch_size: int
    lr: float
    momentum: float
    local_steps: int
    reset_client_momentum: bool
    clients: int                  # n
    byzantine: int                # f: clients h … n − 1 are the designated Byzantine ones
    byzantine_mode: str           # "simulated" (the server forges their rows) or "self" (they attack themselves)
    attack: str                   # the scenario's attack ("none" in no-attack)
    attack_params: str            # JSON object
    target: str
    attack_fields: str
    plugins: str                  # JSON list of --plugin values (files absolute)

    @property
    def honest(self) -> int:
        return self.clients - self.byzantine

    def params(self) -> dict:
        return json.loads(self.attack_params)

    def scheme_kwargs(self) -> dict:
        """The keyword parameters the scheme is built with (make_scheme's)."""
        return json.loads(self.scheme_params)

    def plugin_list(self) -> list[str]:
        return json.loads(self.plugins)

    def to_config(self, server_round: Optional[int] = None) -> ConfigRecord:
        record = ConfigRecord({key.replace("_", "-"): value for key, value in asdict(self).items()})
        if server_round is not None:
            record["server-round"] = server_round
        return record

    @classmethod
    def from_config(cls, record: ConfigRecord) -> "ClientSpec":
        missing = [f.name for f in fields(cls) if f.name.replace("_", "-") not in record]
        if missing:
            raise ValueError(f"the train message's config lacks {missing}: is the server byzbn's ServerApp?")
        values = {}
        for f in fields(cls):
            value = record[f.name.replace("_", "-")]
            values[f.name] = float(value) if f.type == "float" else value
        return cls(**values)


def client_spec(config: RunConfig, scheme: str, scenario: str, scheme_steps: int, shares: int, attack: str,
                byzantine_mode: str) -> ClientSpec:
    """The ClientSpec of one run from a validated run configuration (attack_eval's config.json keys)."""
    c = config
    return ClientSpec(
        run=f"{scheme}/{scenario}", scheme=scheme, scheme_steps=scheme_steps,
        scheme_params=json.dumps(scheme_params(scheme, c), sort_keys=True), dataset=absolute_dataset(c.dataset),
        data_root=c.data_root or "",
        heterogeneity=c.heterogeneity, seed=c.seed, shares=shares, width=c.width, model=absolute_model(c.model),
        batch_size=c.batch_size, lr=c.lr, momentum=c.momentum,
        local_steps=c.local_steps, reset_client_momentum=c.reset_client_momentum,
        clients=c.clients, byzantine=c.byzantine, byzantine_mode=byzantine_mode, attack=attack,
        attack_params=json.dumps(c.attack_params, sort_keys=True), target=c.target,
        attack_fields=c.attack_fields, plugins=json.dumps([absolute_plugin(p) for p in c.plugins]))


__all__ = ["absolute_dataset", "absolute_plugin", "absolute_model", "ClientSpec", "client_spec"]
