"""byzbn's ClientApp: one client of a FedAvg round, computed exactly as byzbn's in-process loop computes it.

A node's client index is its `partition-id` (node config; the Simulation Engine numbers its nodes 0 … N − 1,
a real SuperNode is started with `--node-config "partition-id=3"`). On a train message it

1. rebuilds its data share (byzbn.data: load_dataset, partition with the run's seed, share `client`),
   the model (byzbn.nn.build_model: --model federated for the scheme) and the scheme;
2. loads the broadcast parameters and BN running statistics, and its own momentum from the node's
   state (zeroed when a new run starts, or every round with reset-client-momentum);
3. takes the E local steps of byzbn.fl.client.local_steps on its batches (byzbn.fl.client.client_batch:
   drawn from its generator (seed, step, client)), the BN layers doing the scheme's local_bn_pass;
4. replies with its update Δθ and, apart, each local step's per-layer BN statistics (byzbn.flower.records).

Byzantine nodes. Clients h … n − 1 are the designated Byzantine ones. In the simulated mode the server
forges their rows (omniscient attacks) and sends them nothing, except under a data-poisoning attack
(label-flip), where they train on their poisoned share and reply genuinely. In the self mode, and on any
node whose node config names `byzantine-attack` (a real deployment), the node trains on its own share
and transforms its own reply with an attack that needs no one else's data (SELF_ATTACKS), as if it
were the only Byzantine client among two: its update (target grads/both) and each local step's
statistics (target stats/both, the fields of attack-fields), with noise seeded by (seed, round,
channel, client).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from byzbn._threads import one_cpu_thread
from byzbn.attacks import AttackContext, attack_stats, byzantine_rows, make_attack, poisons_data
from byzbn.fl import seeds
from byzbn.fl.client import client_batch, flat_parameters, load_flat_parameters, local_steps
from byzbn.flower import records
from byzbn.flower.experiment import SELF_ATTACKS
from byzbn.flower.spec import ClientSpec
from byzbn.nn import BNStats, build_model
from byzbn.schemes import make_scheme
from byzbn.stats import ClientStats, concat_stats

PARTITION_ID = "partition-id"
NODE_ATTACK = "byzantine-attack"     # node config of a real Byzantine SuperNode
MOMENTUM_STATE, RUN_STATE = "byzbn-momentum", "byzbn-run"


def client_index(context: Context) -> int:
    """The node's client index: its partition-id."""
    if PARTITION_ID not in context.node_config:
        raise ValueError(f"node config has no {PARTITION_ID!r}: start the SuperNode with --node-config "
                         f"\"{PARTITION_ID}=I\", I its client index")
    return int(context.node_config[PARTITION_ID])


def _dataset(dataset: str, data_root: str):
    from byzbn.data import load_dataset  # cached there

    return load_dataset(dataset, data_root=data_root or None)


@functools.lru_cache(maxsize=2)
def _partition(dataset: str, data_root: str, heterogeneity: str, seed: int, shares: int) -> list:
    """The same partition of the training set as the in-process runner's (byzbn.data.partition)."""
    from byzbn.data import partition

    return partition(_dataset(dataset, data_root).y_train, shares, heterogeneity, seed)


def data_share(spec: ClientSpec, client: int):
    """(dataset, this client's sample indices)."""
    if not 0 <= client < spec.shares:
        raise ValueError(f"client index {client} has no data share: the partition has {spec.shares} shares")
    parts = _partition(spec.dataset, spec.data_root, spec.heterogeneity, spec.seed, spec.shares)
    return _dataset(spec.dataset, spec.data_root), parts[client]


@functools.lru_cache(maxsize=4)
def _model(scheme: str, steps: int, params: tuple, input_shape: tuple, num_classes: int, width: float, model: str):
    built = make_scheme(scheme, steps, **dict(params))
    return built, build_model(model, input_shape, num_classes, width, built)


def _load_plugins(plugins: list[str]) -> None:
    if plugins:
        from byzbn.cli.plugins import load_plugin

        for spec in plugins:
            load_plugin(spec)


def node_attack(spec: ClientSpec, context: Context, client: int) -> tuple[Optional[object], bool]:
    """(the attack this node trains under or applies, whether it transforms its own reply itself).

    An honest node: (None, False). A node whose node config names `byzantine-attack` (a real deployment)
    or a designated client (index >= h) in the self mode: (attack, True) — or (attack, False) for a
    data-poisoning attack, which acts through the labels. A designated client in the simulated mode is
    asked to train only under a data-poisoning attack (the server forges its rows otherwise).
    """
    own = context.node_config.get(NODE_ATTACK)
    if own:
        name, params = str(own), {}
    elif client >= spec.honest and spec.attack != "none":
        name, params = spec.attack, spec.params()
    else:
        return None, False
    attack = make_attack(name, **params)
    if poisons_data(attack):
        return attack, False
    if not own and spec.byzantine_mode != "self":
        raise ValueError(f"client {client} is Byzantine in the simulated mode: the server forges its rows "
                         f"({name!r}), it trains only under a data-poisoning attack")
    if name not in SELF_ATTACKS:
        raise ValueError(f"attack {name!r} needs the other clients' rows: a Byzantine node can run only "
                         f"{list(SELF_ATTACKS)} on its own reply")
    return attack, True


def node_momentum(context: Context, spec: ClientSpec, d: int) -> torch.Tensor:
    """The node's client momentum for this run (zeros at a run's start, or every round when reset)."""
    run = context.state.get(RUN_STATE)
    same_run = run is not None and run["run"] == spec.run
    if same_run and not spec.reset_client_momentum and MOMENTUM_STATE in context.state:
        return records.record_tensor(context.state[MOMENTUM_STATE])
    return torch.zeros(d)


def _self_attack(attack, delta: torch.Tensor, recorded: list, spec: ClientSpec, r: int, client: int):
    """The node's own rows transformed by a local attack (see the module docstring)."""
    if spec.target in ("grads", "both"):
        ctx = AttackContext(2, 1, generator=seeds.generator(spec.seed, r, seeds.ATTACK_STREAMS["grads"], client),
                            step=r, channel="grads")
        delta = byzantine_rows(delta.unsqueeze(0), attack, ctx)[0]
    if spec.target in ("stats", "both"):
        out = []
        for e, bn in enumerate(recorded):
            if bn is None:
                out.append(None)
                continue
            ctx = AttackContext(2, 1, generator=seeds.generator(spec.seed, r, seeds.ATTACK_STREAMS["stats"], client, e),
                                step=r, channel="stats")
            rows = attack_stats(concat_stats(bn.clients), attack, ctx, fields=spec.attack_fields)
            sizes = [s.mean.shape[1] for s in bn.clients]
            means, variances = rows.mean[1:].split(sizes, dim=1), rows.var[1:].split(sizes, dim=1)
            out.append(BNStats([ClientStats(m, v, s.count) for m, v, s in zip(means, variances, bn.clients)]))
        recorded = out
    return delta, recorded


def local_round(content: RecordDict, context: Context) -> RecordDict:
    """A train message's content -> the reply's: one FedAvg round on this node's share (module docstring)."""
    spec = ClientSpec.from_config(content[records.CONFIG])
    _load_plugins(spec.plugin_list())
    client = client_index(context)
    r = int(content[records.CONFIG]["server-round"]) - 1
    attack, attacks_itself = node_attack(spec, context, client)
    poisoning = poisons_data(attack)

    data, indices = data_share(spec, client)
    params = tuple(sorted(spec.scheme_kwargs().items()))
    scheme, model = _model(spec.scheme, spec.scheme_steps, params, data.input_shape, data.num_classes, spec.width,
                           spec.model)
    load_flat_parameters(model, records.record_flat(content[records.PARAMETERS], model))
    records.load_running(model, content[records.RUNNING])
    model.train()

    E = spec.local_steps
    batches = []
    for e in range(E):
        x, y = client_batch(data.x_train, data.y_train, indices, spec.batch_size, spec.seed, r * E + e, client)
        batches.append((x, attack.poison(y, data.num_classes) if poisoning else y))
    specs = [scheme.local_bn_pass(r, e, None) for e in range(E)]
    theta0 = flat_parameters(model)
    theta = theta0.clone()
    momentum = node_momentum(context, spec, theta.numel())
    with one_cpu_thread(theta.device):
        losses, recorded = local_steps(model, theta, momentum, batches, specs, seed=spec.seed, round=r, client=client,
                                       lr=spec.lr, beta=spec.momentum)
    context.state[MOMENTUM_STATE] = records.tensor_record(momentum)
    context.state[RUN_STATE] = ConfigRecord({"run": spec.run})

    delta = theta - theta0
    if attacks_itself:
        delta, recorded = _self_attack(attack, delta, recorded, spec, r, client)
    layer_names = records.bn_layer_names(model)
    return RecordDict({
        records.UPDATE: records.flat_record(delta, model),
        records.STATS: records.stats_record(recorded, layer_names),
        records.METRICS: MetricRecord({"client": client, "num-examples": spec.batch_size * E, "train-loss": losses}),
    })


def train(message: Message, context: Context) -> Message:
    """The ClientApp's train handler: local_round on the message's content."""
    return Message(local_round(message.content, context), reply_to=message)


def query(message: Message, context: Context) -> Message:
    """Who this node is: its client index (the server maps node ids to clients with it)."""
    return Message(RecordDict({records.METRICS: MetricRecord({"client": client_index(context)})}), reply_to=message)


def make_client_app() -> ClientApp:
    """A ClientApp answering byzbn's train and query messages."""
    app = ClientApp()
    app.train()(train)
    app.query()(query)
    return app


__all__ = ["PARTITION_ID", "NODE_ATTACK", "MOMENTUM_STATE", "RUN_STATE", "client_index", "data_share", "node_attack",
           "node_momentum", "local_round", "train", "query", "make_client_app"]
