"""A tiny attacked federation for the catalogue's rule and pre-aggregator tests (not a test module): which
d each stage is called with, on which channels, through DSGD and FedAvg."""
from __future__ import annotations

import torch

from byzbn.attacks import make_attack
from byzbn.fl import FedAvgFederation, Federation, make_scenario
from byzbn.nn.models import make_cnn
from byzbn.schemes import make_scheme
from federation_data import client_data

N, F_BYZ = 6, 2
SHAPE, BATCH = (1, 8, 8), 5


def run_attacked(defense, algorithm: str, monkeypatch, spied: type) -> tuple[set, object]:
    """Two DSGD steps or one FedAvg round (2 local steps) of FBN under sign-flip on both channels, the server
    aggregating with `defense`; returns ({d of every call of spied.__call__}, the federation)."""
    widths = set()
    original = spied.__call__

    def spy(self, x):
        widths.add(x.shape[1])
        return original(self, x)

    monkeypatch.setattr(spied, "__call__", spy)
    x, y, parts = client_data(N - F_BYZ, SHAPE, 20)
    scenario = make_scenario("attack+defense", N, F_BYZ, make_attack("sign-flip"), defense, target="both")
    steps = 2 if algorithm == "dsgd" else 1
    scheme = make_scheme("fbn", steps)
    torch.manual_seed(0)
    model = make_cnn(SHAPE, 10, 0.25, norm=scheme.make_norm, dropout=0.0)
    common = dict(batch_size=BATCH, lr=0.05, momentum=0.9, seed=0)
    fed = (FedAvgFederation(model, scheme, scenario, x, y, parts, local_steps=2, **common) if algorithm == "fedavg"
           else Federation(model, scheme, scenario, x, y, parts, **common))
    for _ in range(steps):
        fed.step()
    return widths, fed


def parameter_count(fed) -> int:
    return sum(p.numel() for p in fed.params)
