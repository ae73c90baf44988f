"""The BN diagnostics of one run (`--diagnostics`, DESIGN.md §13), measured at every evaluation.

`RunDiagnostics(fed)` is built beside the federation; the runner calls `after_step()` after every step
(FedAvg: round) and adds `measure()` to each evaluation's record. Per BN layer and averaged over layers:

- share: the between-client share of the honest clients' batch statistics of the step just taken
  (FedAvg: averaged over the round's local steps; null at step 0 and when the step recorded none, e.g.
  FixBN after T*);
- mismatch_mean / mismatch_var: the server's running statistics against the exact statistics of a FIXED
  probe of the honest union (up to PROBE_PER_CLIENT samples of each honest client's partition, at most
  PROBE_CAP in all, drawn once from byzbn.fl.seeds.PROBE_STREAM), computed in BN pass mode "union";
- honest_mismatch_mean / honest_mismatch_var: the same for a shadow of the running statistics that
  the scheme's own server update keeps from the honest rows only (the Byzantine rows replaced by the
  no-op, the same rule); mismatch − honest mismatch is what the Byzantine rows caused. Reported for every
  scheme whose server update goes through the statistics channel or the layers' buffers (naive, fixbn,
  fbn, hbn, centralized) and for fedtan, whose shadow takes the honest-only twins of its in-forward merges;
- grad_deviation (DSGD only; null under FedAvg, whose clients step on their own model copies): on the
  probe split across the honest clients, ‖g_scheme − g_union‖ / ‖g_union‖, g_scheme the honest mean
  gradient with the scheme's BN pass of the step just taken (FedTAN synchronizing without the Byzantine
  rows), g_union the same with mode "union";
- reach_stats / reach_grads: ‖agg(honest ∪ Byzantine) − agg(honest)‖ / ‖agg(honest)‖ of the step just
  taken, per channel (0 for a channel the scenario leaves alone or that merged nothing submitted;
  agg(honest) is the same rule on the honest rows and the no-op rows; the statistics channel
  concatenates every merge of the step: means then variances); null at step 0.

With partial participation (--participation < 1) share, reach and the shadow read the step's sampled
clients (what the step recorded and merged), while the probe and the gradient deviation use the full
federation: every honest client's share and the run's rule, as at full participation.

Cost: per evaluation two forward/backward passes of the probe (one forward under FedAvg), per step one
more aggregation per attacked channel and the shadow's server update. On the default command's size
(mnist5k, width 0.125, n = 10, f = 2; one CPU thread) an evaluation's diagnostics took ~65 ms of CPU, about
two training steps (~33 ms each) and less than the test-set evaluation (~100 ms); the shadow ~1 ms a step;
the extra aggregation was within noise. The whole default command with --steps 60 --eval-every 20 (six
runs, four evaluations each, 2 CPU cores) took 79.4 s with diagnostics and 78.2 s without. Nothing the
run trains with changes: the probe and its passes draw from their own generators under fork_rng, buffers
and aggregation states are read, never written, and the model is left in the mode it was.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from byzbn.aggregation import AggregationState
from byzbn.fl import diagnostics as diag
from byzbn.fl import seeds
from byzbn.fl.aggregation import channel_generator
from byzbn.fl.client import client_batch_indices
from byzbn.fl.fedavg import FedAvgFederation
from byzbn.fl.federation import FederationBase
from byzbn.nn import BNPass, BNStats, run_bn_pass
from byzbn.runs.diagnostics_report import FIELDS, LAYERS_KEY, PER_LAYER, record_key
from byzbn.runs.results import finite_or_none
from byzbn.schemes import StatsChannel
from byzbn.stats import GlobalStats, merge_stats

PROBE_PER_CLIENT = 16
PROBE_CAP = 128


@dataclass
class ShadowLayer:
    """What a scheme's server update reads and writes of a BN layer: the shadow running statistics."""

    num_features: int
    momentum: float
    running_mean: torch.Tensor
    running_var: torch.Tensor


def probe_batch(fed: FederationBase) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's fixed probe: P samples of each honest client's partition, client-major ([h·P, …], [h·P])."""
    per_client = max(1, min(PROBE_PER_CLIENT, fed.client_indices.shape[1], PROBE_CAP // fed.h))
    idx = torch.cat([client_batch_indices(fed.client_indices[i], per_client,
                                          seeds.generator(fed.seed, 0, seeds.PROBE_STREAM, i))
                     for i in range(fed.h)]).to(fed.x_train.device)
    return fed.x_train[idx], fed.y_train[idx]


class RunDiagnostics:
    """The diagnostics of one federation: its probe, its shadow statistics, and what an evaluation records."""

    def __init__(self, fed: FederationBase):
        fed.keep_last_step = True
        self.fed = fed
        self.rounds = isinstance(fed, FedAvgFederation)   # server_round per round, no gradient deviation
        self.probe = probe_batch(fed)
        self.shadow = [ShadowLayer(layer.num_features, layer.momentum, layer.running_mean.detach().clone(),
                                   layer.running_var.detach().clone()) for layer in fed.layers]
        self.state = AggregationState()

    # ------------------------------------------------------------------ every step
    @torch.no_grad()
    def after_step(self) -> None:
        """The shadow follows the step just taken: the scheme's server update with the honest rows only."""
        fed, last = self.fed, self.fed.last_step
        if last is None or not self.shadow or not last.bn or not fed.scheme.submits_stats(last.step):
            return
        steps = list(last.bn)
        if steps[0].merged is not None:  # FedTAN updates from its in-forward merges: their honest-only twins
            steps[0] = BNStats(steps[0].clients, [reference for _, reference in last.stats])
        self.state = self.state.next_step()
        channel = StatsChannel(None, last.channel.fields, last.channel.aggregator, last.channel.context, self.state,
                               channel_generator(fed.seed, last.step, "stats"), honest=last.channel.honest)
        if self.rounds:
            fed.scheme.server_round(self.shadow, steps, channel, last.step)
        else:
            fed.scheme.server_update(self.shadow, steps[0], channel, last.step)
        self.state = channel.state

    # ------------------------------------------------------------------ every evaluation
    def measure(self) -> dict:
        """The evaluation record's diagnostics: diag_<field> averaged over layers, diag_layers per layer."""
        fed, last = self.fed, self.fed.last_step
        if fed.non_finite() is not None:   # a diverged run: nothing meaningful to measure
            return {**{record_key(name): None for name in FIELDS}, LAYERS_KEY: {name: [] for name in PER_LAYER}}
        step = 0 if last is None else last.step
        exact, deviation = self._probe_passes(step)
        layers: dict[str, list] = {name: [] for name in PER_LAYER}
        if last is not None and last.bn:
            for k in range(len(last.bn[0].clients)):
                layers["share"].append(diag.layer_mean([diag.between_client_share(bn.clients[k]) for bn in last.bn]))
        if exact is not None:
            for layer, shadow, g in zip(fed.layers, self.shadow, exact):
                real = diag.statistics_mismatch(layer.running_mean, layer.running_var, g.mean, g.var_unbiased)
                honest = diag.statistics_mismatch(shadow.running_mean, shadow.running_var, g.mean, g.var_unbiased)
                for field in ("mean", "var"):
                    layers[f"mismatch_{field}"].append(real[field])
                    layers[f"honest_mismatch_{field}"].append(honest[field])
        averaged = {name: (diag.layer_mean(values) if values else None) for name, values in layers.items()}
        averaged["grad_deviation"] = deviation
        averaged.update(self._reach(last))
        record = {record_key(name): finite_or_none(averaged[name]) for name in FIELDS}
        record[LAYERS_KEY] = {name: [finite_or_none(v) for v in values] for name, values in layers.items()}
        return record

    def _reach(self, last) -> dict:
        if last is None:
            return {"reach_stats": None, "reach_grads": None}
        stats = 0.0   # no statistics merge this step (nothing submitted, or merged on one machine): nothing to reach
        if last.stats:
            stats = diag.attack_reach(torch.cat([_flat(a) for a, _ in last.stats]),
                                      torch.cat([_flat(r) for _, r in last.stats]))
        # Without a pair the gradient channel was not aggregated: the server took the honest mean.
        grads = 0.0 if last.grads is None else diag.attack_reach(*last.grads)
        return {"reach_stats": stats, "reach_grads": grads}

    def _probe_passes(self, step: int) -> tuple[Optional[list[GlobalStats]], Optional[float]]:
        """(the probe's exact per-layer statistics, the gradient deviation), the model's mode and every
        training stream left as they were."""
        fed = self.fed
        x, y = self.probe
        was_training = fed.model.training
        fed.model.train()
        dropout = seeds.step_seed(fed.seed, step, seeds.PROBE_STREAM)   # the same masks in both passes
        try:
            if self.rounds:
                with seeds.seeded_torch_rng(dropout, x.device), torch.no_grad(), \
                        run_bn_pass(fed.layers, BNPass(mode="union", record=True, clients=fed.h)) as record:
                    fed.model(x)
                bn, deviation = record.bn_stats(fed.h), None
            else:
                with seeds.seeded_torch_rng(dropout, x.device):
                    union, bn = self._probe_gradient(BNPass(mode="union", record=True))
                with seeds.seeded_torch_rng(dropout, x.device):
                    own, _ = self._probe_gradient(fed.scheme.bn_pass(step, self._probe_channel(step)))
                deviation = diag.gradient_deviation(own, union)
        finally:
            fed.model.train(was_training)
        exact = None if bn is None else [merge_stats(s) for s in bn.clients]
        return exact, deviation

    def _probe_gradient(self, spec: BNPass) -> tuple[list[torch.Tensor], Optional[BNStats]]:
        """The probe's mean loss gradient with the BN layers doing `spec` (the probe split across the honest
        clients), and what they recorded. A parameter the pass leaves unused (Hybrid BN's mixing weight in
        mode "union") has gradient 0."""
        fed = self.fed
        x, y = self.probe
        params = list(fed.model.parameters())
        with run_bn_pass(fed.layers, spec.replace(clients=fed.h, backend="kernel")) as record:
            loss = F.cross_entropy(fed.model(x), y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)], record.bn_stats(fed.h)

    def _probe_channel(self, step: int) -> StatsChannel:
        """A statistics channel for the probe's scheme pass: no attack, its own generator and a copy of the state."""
        fed = self.fed
        context = fed.attack_context(step, "stats", self.probe, fed.scenario)   # the probe spans every honest client
        return StatsChannel(None, fed.scenario.fields, fed.scenario.channel_aggregator("stats"), context,
                            fed.aggregates["stats"].next_step(), channel_generator(fed.seed, step, "stats"),
                            honest=fed.h)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"shadow_mean": [s.running_mean for s in self.shadow],
                "shadow_var": [s.running_var for s in self.shadow], "state": self.state.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for shadow, mean, var in zip(self.shadow, state["shadow_mean"], state["shadow_var"]):
            shadow.running_mean.copy_(mean)
            shadow.running_var.copy_(var)
        self.state = AggregationState.from_state_dict(state["state"])


def _flat(aggregate) -> torch.Tensor:
    """One vector of a statistics aggregate: a tensor, GlobalStats (mean, var) or a tuple of tensors (naive's)."""
    if isinstance(aggregate, GlobalStats):
        return torch.cat([aggregate.mean.reshape(-1), aggregate.var.reshape(-1)])
    if isinstance(aggregate, tuple):
        return torch.cat([part.reshape(-1) for part in aggregate])
    return aggregate.reshape(-1)


__all__ = ["PROBE_PER_CLIENT", "PROBE_CAP", "ShadowLayer", "probe_batch", "RunDiagnostics"]
