"""What is registered is what the runner calls: plugin rules, pre-aggregators and attacks in
DSGD and FedAvg, on the statistics and the gradient channel; attacks see a per-step context whose
generator draws fresh, reproducible noise."""
from __future__ import annotations

import pytest
import torch

import byzbn.aggregation as aggregation
from byzbn.attacks import ATTACKS, make_attack, register_attack
from byzbn.defenses import AGGREGATORS, PRE_AGGREGATORS, make_defense, register_aggregator, register_pre_aggregator
from byzbn.fl import FedAvgFederation, Federation, make_scenario
from byzbn.nn.models import make_cnn
from byzbn.schemes import make_scheme
from federation_data import client_data

N, F_BYZ = 6, 2
H = N - F_BYZ
SHAPE, BATCH = (1, 8, 8), 5
CALLS: list = []


@pytest.fixture(autouse=True)
def _plugins():
    """A rule, a pre-aggregator and an attack that log every call; unregistered afterwards."""

    @register_aggregator("test-logged-median")
    class LoggedMedian:
        def __init__(self, f, scale: float = 1.0):
            self.f, self.scale = f, scale

        def __call__(self, x):
            CALLS.append(("rule", tuple(x.shape)))
            return x.median(dim=0).values * self.scale

    @register_pre_aggregator("test-drop-last")
    class DropLast:
        def __init__(self, f):
            self.f = f

        def __call__(self, x):
            CALLS.append(("pre", tuple(x.shape)))
            return x[:-1]

    @register_attack("test-noise")
    class LoggedNoise:
        def __init__(self, sigma: float = 1.0):
            self.sigma = sigma

        def __call__(self, honest, context):
            noise = torch.randn(context.f, honest.shape[1], generator=context.generator, dtype=torch.float64)
            CALLS.append(("attack", context.channel, context.step, float(noise[0, 0])))
            return honest.mean(dim=0) + self.sigma * noise.to(honest.dtype)

    CALLS.clear()
    yield
    for registry, name in ((AGGREGATORS, "test-logged-median"), (PRE_AGGREGATORS, "test-drop-last"),
                           (ATTACKS, "test-noise")):
        registry.pop(name, None)


def _run(algorithm: str, scheme: str, target: str, steps: int = 3, seed: int = 3, pre=("test-drop-last",)):
    x, y, parts = client_data(H, SHAPE, 20)
    defense = make_defense("test-logged-median", F_BYZ, pre=list(pre), scale=1.0)
    scenario = make_scenario("attack+defense", N, F_BYZ, make_attack("test-noise", sigma=0.5), defense, target=target)
    sch = make_scheme(scheme, steps)
    torch.manual_seed(0)
    model = make_cnn(SHAPE, 10, 0.25, norm=sch.make_norm, dropout=0.0)
    common = dict(batch_size=BATCH, lr=0.05, momentum=0.9, seed=seed)
    fed = (FedAvgFederation(model, sch, scenario, x, y, parts, local_steps=2, **common) if algorithm == "fedavg"
           else Federation(model, sch, scenario, x, y, parts, **common))
    for _ in range(steps):
        fed.step()
    return fed


@pytest.mark.parametrize("algorithm", ["dsgd", "fedavg"])
@pytest.mark.parametrize("target", ["stats", "grads"])
def test_plugin_rule_pre_aggregator_and_attack_are_called_by_the_runner(algorithm, target):
    scheme = "fbn"
    _run(algorithm, scheme, target)
    attacks = [c for c in CALLS if c[0] == "attack"]
    per_step = 2 if target == "stats" else 1              # statistics: the means, then the variances
    assert [c[2] for c in attacks] == [t for t in range(3) for _ in range(per_step)]  # per step (FedAvg: round)
    assert {c[1] for c in attacks} == {target}
    rows = [c[1] for c in CALLS if c[0] == "pre"]
    assert rows and all(r[0] == N for r in rows)          # the pre-aggregator sees all n rows ...
    assert all(c[1][0] == N - 1 for c in CALLS if c[0] == "rule")  # ... and the rule its output
    draws = [c[3] for c in attacks]
    assert len(set(draws)) == len(draws)                  # fresh noise every step


@pytest.mark.parametrize("algorithm", ["dsgd", "fedavg"])
def test_attack_noise_is_reproducible_from_the_seed(algorithm):
    _run(algorithm, "naive", "both")
    first = [c for c in CALLS if c[0] == "attack"]
    CALLS.clear()
    _run(algorithm, "naive", "both")
    assert [c for c in CALLS if c[0] == "attack"] == first
    assert {c[1] for c in first} == {"stats", "grads"}
    stats_draws = [c[3] for c in first if c[1] == "stats"]
    grads_draws = [c[3] for c in first if c[1] == "grads"]
    assert stats_draws != grads_draws                     # the channels draw from different streams
    CALLS.clear()
    _run(algorithm, "naive", "both", seed=4)
    assert [c[3] for c in CALLS if c[0] == "attack"] != [c[3] for c in first]


def test_the_builtin_gaussian_attack_differs_between_steps_and_not_between_runs():
    def final_state(seed):
        x, y, parts = client_data(H, SHAPE, 20)
        sch = make_scheme("fbn", 3)
        scenario = make_scenario("attack", N, F_BYZ, make_attack("gaussian", sigma=5.0),
                                 make_defense("median", F_BYZ), target="stats")
        torch.manual_seed(0)
        fed = Federation(make_cnn(SHAPE, 10, 0.25, norm=sch.make_norm, dropout=0.0), sch, scenario, x, y, parts,
                         batch_size=BATCH, lr=0.05, seed=seed)
        submitted = []
        original = aggregation.submission

        def spy(*args, **kwargs):
            rows = original(*args, **kwargs)
            submitted.append(rows.mean[H:].clone())
            return rows

        aggregation.submission = spy
        try:
            for _ in range(3):
                fed.step()
        finally:
            aggregation.submission = original
        return submitted

    a, b = final_state(1), final_state(1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[1], a[2])
    assert not torch.equal(a[0][0], a[0][1])  # the f Byzantine rows differ too
