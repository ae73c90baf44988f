"""byzbn.fl (DSGD) and byzbn.schemes: the batched DSGD step against references.

- the batched engine (one stacked forward/backward, or the vmap'd per-client pass when gradients are
  attacked) produces the same update as the per-client loop, for every scheme;
- the centralized scheme equals plain nn.BatchNorm2d on the concatenated batch;
- FBN's and naive BN's server statistics equal the robust aggregation of the clients' statistics,
  computed here independently (hooks on a plain-BN copy of the model, byzbn.stats, hand-made attack rows).
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from byzbn import stats as bnstats
from byzbn.attacks import make_attack, register_attack
from byzbn.attacks.registry import ATTACKS
from byzbn.defenses import make_defense
from byzbn.fl import Federation, make_scenario, step_seed
from byzbn.fl.passes import loop_pass, vmap_pass
from byzbn.nn import FederatedBatchNorm
from byzbn.nn.models import make_cnn, norm_layers
from byzbn.schemes import SCHEMES, make_scheme
from federation_data import client_data



N_CLIENTS, F_BYZ = 6, 2
H = N_CLIENTS - F_BYZ
SHAPE = (1, 8, 8)
BATCH = 5


def _data(samples_per_client: int = 20, seed: int = 0):
    return client_data(H, SHAPE, samples_per_client, seed)


def _federation(scheme_name: str, scenario: str = "attack+defense", target: str = "stats", attack: str = "alie",
                defense: str = "median", steps: int = 4, dropout: float = 0.0, seed: int = 3, lr: float = 0.1,
                per_client_grads: str = "vmap", dtype: torch.dtype = torch.float32, **scheme_params) -> Federation:
    x, y, parts = _data()
    x = x.to(dtype)
    scheme = make_scheme(scheme_name, steps, **scheme_params)
    torch.manual_seed(0)
    model = make_cnn(SHAPE, 10, 0.25, norm=scheme.make_norm, dropout=dropout).to(dtype)
    sc = make_scenario(scenario, N_CLIENTS, F_BYZ, make_attack(attack), make_defense(defense, F_BYZ, pre="nnm"),
                       target=target, fields="both")
    return Federation(model, scheme, sc, x, y, parts, batch_size=BATCH, lr=lr, momentum=0.9, seed=seed,
                      per_client_grads=per_client_grads)


def _assert_same_state(a: Federation, b: Federation, rtol=1e-4, atol=1e-5):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=rtol, atol=atol, msg=lambda m: f"{key}: {m}")


CASES = [(s, sc, t) for s in ("naive", "fbn", "fixbn", "fedtan", "hbn") for sc, t in
         (("no-attack", "stats"), ("attack", "stats"), ("attack+defense", "grads"), ("attack", "both"))]
CASES += [("groupnorm", "no-attack", "stats"), ("groupnorm", "attack+defense", "grads")]
CASES += [("centralized", "no-attack", "stats"), ("centralized", "no-attack", "grads")]


@pytest.mark.parametrize("scheme,scenario,target", CASES)
def test_batched_and_loop_engines_give_the_same_update(scheme, scenario, target):
    # FedTAN in float64: attacked variances near 0 amplify float32 rounding (kernel vs torch moments)
    # step after step through every client's normalization; in float64 the engines agree to 1e-16.
    # Defended gradients too: NNM's neighbour choice is discrete, and float32 per-client gradients from
    # two engines can round a near-tie either way.
    dtype = torch.float64 if scheme == "fedtan" or scenario == "attack+defense" else torch.float32
    batched, loop = (_federation(scheme, scenario, target, freeze=0.5) if scheme == "fixbn"
                     else _federation(scheme, scenario, target, dtype=dtype) for _ in range(2))
    assert batched.per_client == (scenario != "no-attack" and target != "stats")
    for _ in range(4):  # fixbn: two naive steps, then two frozen ones
        la, lb = batched.step("batched"), loop.step("loop")
        assert math.isclose(la, lb, rel_tol=1e-5)
    _assert_same_state(batched, loop)
    if batched.per_client:
        torch.testing.assert_close(batched.momentum, loop.momentum, rtol=1e-4, atol=1e-6)
    assert batched.comm_rounds == loop.comm_rounds == 4 * batched.scheme.exchanges(0, len(batched.layers))
    assert all(layer.active_pass is None for layer in batched.layers + loop.layers)  # nothing left behind


def test_per_client_gradients_default_to_the_loop_on_cpu_and_vmap_matches_it():
    assert _federation("fbn", "attack", "grads", per_client_grads="auto").per_client_grads == "loop"
    vm, lp = _federation("naive", "attack", "grads"), _federation("naive", "attack", "grads", per_client_grads="loop")
    x, y = vm.client_batch(0)
    a = vmap_pass(vm.model, x, y, vm.scheme.bn_pass(0, vm.stats_channel(0, (x, y))), H)
    b = loop_pass(lp.model, x, y, lp.scheme.bn_pass(0, lp.stats_channel(0, (x, y))), H)
    torch.testing.assert_close(a.client_grads, b.client_grads, rtol=1e-4, atol=1e-6)
    assert len(a.bn.clients) == len(b.bn.clients) == len(vm.layers)
    for sa, sb in zip(a.bn.clients, b.bn.clients):
        torch.testing.assert_close(sa.mean, sb.mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sa.var, sb.var, rtol=1e-5, atol=1e-6)
        assert torch.equal(sa.count, sb.count)


def test_centralized_update_equals_plain_batchnorm_on_the_union():
    fed = _federation("centralized", "no-attack")
    torch.manual_seed(0)
    ref = make_cnn(SHAPE, 10, 0.25, norm=nn.BatchNorm2d, dropout=0.0)
    ref.load_state_dict(fed.model.state_dict(), strict=False)  # nn.BatchNorm2d adds num_batches_tracked
    params = list(ref.parameters())
    momentum = [torch.zeros_like(p) for p in params]
    for t in range(3):
        x, y = fed.client_batch(t)
        ref.train()
        grads = torch.autograd.grad(F.nll_loss(ref(x), y), params)
        with torch.no_grad():
            for p, m, g in zip(params, momentum, grads):
                m.mul_(0.9).add_(g, alpha=0.1)
                p.sub_(m, alpha=0.1)
        fed.step()
    got, want = fed.model.state_dict(), ref.state_dict()
    for key in got:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")


def _reference_client_stats(fed: Federation, x: torch.Tensor, own_batch_stats: bool = False) -> list[bnstats.ClientStats]:
    """Per layer, the h clients' batch statistics (float64) from a plain-BN copy of the model run on each
    client's batch alone: in eval mode (normalizing with the running statistics, as FBN) or in train mode
    (normalizing with the client's own batch statistics, as naive BN)."""
    ref = make_cnn(SHAPE, 10, 0.25, norm=nn.BatchNorm2d, dropout=0.0).double()
    ref.load_state_dict(fed.model.state_dict(), strict=False)
    ref.train(own_batch_stats)
    inputs: dict = {}
    hooks = [layer.register_forward_hook(lambda mod, args, out, i=i: inputs.setdefault(i, []).append(args[0]))
             for i, layer in enumerate(norm_layers(ref))]
    with torch.no_grad():
        for xi in x.double().chunk(H):
            ref(xi)
    for hook in hooks:
        hook.remove()
    return [bnstats.ClientStats(
        mean=torch.cat([bnstats.client_stats(a[None]).mean for a in inputs[i]]),
        var=torch.cat([bnstats.client_stats(a[None]).var for a in inputs[i]]),
        count=torch.full((H,), inputs[i][0][:, 0].numel(), dtype=torch.int64)) for i in sorted(inputs)]


def _sign_flipped(rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([rows, (-rows.mean(dim=0)).expand(F_BYZ, -1)])


@pytest.mark.parametrize("scenario,defense", [("attack", None), ("attack+defense", "median"),
                                              ("attack+defense", "trimmed-mean")])
def test_fbn_running_statistics_equal_the_robust_merge_of_the_client_statistics(scenario, defense):
    fed = _federation("fbn", scenario, "stats", attack="sign-flip", defense=defense or "median")
    before = [(layer.running_mean.double().clone(), layer.running_var.double().clone()) for layer in fed.layers]
    honest = _reference_client_stats(fed, fed.client_batch(0)[0])
    fed.step()
    concat = bnstats.concat_stats(honest)
    rows = bnstats.ClientStats(_sign_flipped(concat.mean), _sign_flipped(concat.var),
                               torch.cat([concat.count, concat.count[:F_BYZ]]))
    rule = make_defense(defense, F_BYZ, pre="nnm") if defense else make_defense("mean", F_BYZ, pre=None)
    merged = bnstats.robust_merge_stats(rows, rule)
    sizes = [s.mean.shape[1] for s in honest]
    for layer, (rm, rv), part, s in zip(fed.layers, before, bnstats.split_stats(merged, sizes), honest):
        total = N_CLIENTS * int(s.count[0])  # each layer's own N for N/(N-1)
        assert torch.all(part.count == total)  # carried through concat_stats and split_stats
        g = bnstats.GlobalStats(part.mean, part.var, part.var * total / (total - 1), part.count)
        want_mean, want_var = bnstats.update_running(rm, rv, g, 0.1)
        torch.testing.assert_close(layer.running_mean.double(), want_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.running_var.double(), want_var, rtol=1e-4, atol=1e-5)
    assert fed.stats_clamped == merged.clamped


def test_fbn_with_the_mean_and_no_attack_tracks_the_exact_union_means():
    fed = _federation("fbn", "no-attack")
    before = [layer.running_mean.double().clone() for layer in fed.layers]
    honest = _reference_client_stats(fed, fed.client_batch(0)[0])
    fed.step()
    for layer, rm, s in zip(fed.layers, before, honest):
        exact = bnstats.merge_stats(s)  # the no-op rows leave the mean of the means unchanged
        torch.testing.assert_close(layer.running_mean.double(), 0.9 * rm + 0.1 * exact.mean, rtol=1e-4, atol=1e-5)


def test_naive_server_aggregates_the_clients_running_statistics():
    fed = _federation("naive", "attack+defense", "stats", attack="sign-flip")
    before = [(layer.running_mean.double().clone(), layer.running_var.double().clone()) for layer in fed.layers]
    sink = _reference_client_stats(fed, fed.client_batch(0)[0], own_batch_stats=True)
    fed.step()
    client_means = torch.cat([(0.9 * rm + 0.1 * s.mean.double()) for (rm, _), s in zip(before, sink)], dim=1)
    client_vars = torch.cat([(0.9 * rv + 0.1 * s.var.double() * (c := int(s.count[0])) / (c - 1))
                             for (_, rv), s in zip(before, sink)], dim=1)
    rule = make_defense("median", F_BYZ, pre="nnm")
    want_mean, want_var = rule(_sign_flipped(client_means)), rule(_sign_flipped(client_vars)).clamp_min(0)
    got_mean = torch.cat([layer.running_mean for layer in fed.layers]).double()
    got_var = torch.cat([layer.running_var for layer in fed.layers]).double()
    torch.testing.assert_close(got_mean, want_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_var, want_var, rtol=1e-4, atol=1e-5)


def test_fixbn_freezes_the_statistics_at_t_star_and_then_trains_with_them():
    fed = _federation("fixbn", "attack", "stats", steps=6, freeze=0.5)
    assert fed.scheme.freeze_step == 3
    snapshots = []
    for t in range(6):
        x, y = fed.client_batch(t)
        spec = fed.scheme.bn_pass(t, fed.stats_channel(t, (x, y)))
        assert spec.mode == ("client" if t < 3 else "global") and spec.record == (t < 3)
        fed.step()
        snapshots.append([layer.running_var.clone() for layer in fed.layers])
        assert all(layer.active_pass is None for layer in fed.layers)
    assert not torch.equal(snapshots[1][0], snapshots[2][0])  # still learning before T*
    for later in snapshots[3:]:
        for a, b in zip(snapshots[2], later):
            assert torch.equal(a, b)
    assert fed.comm_rounds == 6


def test_client_batches_are_seeded_and_drawn_from_each_clients_partition():
    x, y, parts = _data()
    marked = torch.arange(len(x), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, *SHAPE).contiguous()
    fed = _federation("naive")
    fed.x_train = marked
    xb, _ = fed.client_batch(5)
    picked = xb[:, 0, 0, 0].long().view(H, BATCH)
    for i in range(H):
        assert set(picked[i].tolist()) <= set(parts[i].tolist()) and len(set(picked[i].tolist())) == BATCH
    assert torch.equal(fed.client_batch(5)[0], xb)
    assert not torch.equal(fed.client_batch(6)[0], xb)
    assert step_seed(0, 5, 0) != step_seed(0, 5, 1) != step_seed(1, 5, 0)


def test_resuming_from_a_state_dict_continues_bit_for_bit():
    straight = _federation("fbn", "attack+defense", "both", dropout=0.25)
    for _ in range(4):
        straight.step()
    first = _federation("fbn", "attack+defense", "both", dropout=0.25)
    for _ in range(2):
        first.step()
    state = copy.deepcopy(first.state_dict())
    resumed = _federation("fbn", "attack+defense", "both", dropout=0.25)
    resumed.load_state_dict(state)
    for _ in range(2):
        resumed.step()
    _assert_same_state(straight, resumed, rtol=0, atol=0)
    assert resumed.step_count == 4 and resumed.comm_rounds == 4


def test_evaluate_counts_non_finite_outputs_as_wrong_and_non_finite_reports_why():
    fed = _federation("fbn", "no-attack")
    x, y, _ = _data()
    acc, loss = fed.evaluate(x, y)
    assert 0 <= acc <= 1 and math.isfinite(loss) and fed.non_finite() is None
    fed.layers[0].running_var.fill_(float("nan"))
    acc, loss = fed.evaluate(x, y)
    assert acc == 0.0 and math.isnan(loss)
    assert fed.non_finite() == "non-finite running statistics"
    with torch.no_grad():
        fed.params[0].fill_(float("inf"))
    assert fed.non_finite() == "non-finite parameters"


def test_a_nan_attack_on_the_statistics_breaks_fbn_without_defense_but_not_with_it():
    broken = _federation("fbn", "attack", "stats", attack="nan")
    defended = _federation("fbn", "attack+defense", "stats", attack="nan")
    broken.step(), defended.step()
    assert broken.non_finite() == "non-finite running statistics"
    assert defended.non_finite() is None


def test_validation():
    x, y, parts = _data()
    mean = make_defense("mean", F_BYZ, pre=None)
    with pytest.raises(ValueError, match="unknown scenario"):
        make_scenario("attacked", N_CLIENTS, F_BYZ, None, mean)
    with pytest.raises(ValueError, match="f=3 is out of range"):
        make_scenario("no-attack", 6, 3, None, mean)
    with pytest.raises(ValueError, match="needs an attack"):
        make_scenario("attack", N_CLIENTS, F_BYZ, None, mean)
    with pytest.raises(ValueError, match="target must be one of"):
        make_scenario("no-attack", N_CLIENTS, F_BYZ, None, mean, target="weights")
    scheme = make_scheme("centralized", 3)
    model = make_cnn(SHAPE, 10, 0.25, norm=scheme.make_norm)
    attacked = make_scenario("attack", N_CLIENTS, F_BYZ, make_attack("sign-flip"), mean)
    with pytest.raises(ValueError, match="only the no-attack scenario"):
        Federation(model, scheme, attacked, x, y, parts, batch_size=BATCH, lr=0.1)
    fbn = make_scheme("fbn", 3)
    with pytest.raises(ValueError, match="client_indices must have shape"):
        Federation(model, fbn, attacked, x, y, parts[:3], batch_size=BATCH, lr=0.1)
    with pytest.raises(ValueError, match="batch_size=21 is out of range"):
        Federation(model, fbn, attacked, x, y, parts, batch_size=21, lr=0.1)
    with pytest.raises(ValueError, match="lr must be > 0"):
        Federation(model, fbn, attacked, x, y, parts, batch_size=BATCH, lr=0.0)
    with pytest.raises(ValueError, match="per_client_grads must be one of"):
        Federation(model, fbn, attacked, x, y, parts, batch_size=BATCH, lr=0.1, per_client_grads="threads")
    with pytest.raises(ValueError, match="engine must be one of"):
        Federation(model, fbn, attacked, x, y, parts, batch_size=BATCH, lr=0.1).step("threads")


def test_scheme_registry():
    assert {"centralized", "naive", "fbn", "fixbn", "fedtan", "hbn", "groupnorm"} <= set(SCHEMES)
    with pytest.raises(ValueError, match="unknown scheme 'batch'"):
        make_scheme("batch", 3)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['freeze'\] for scheme 'fbn'"):
        make_scheme("fbn", 3, freeze=0.5)
    with pytest.raises(ValueError, match="freeze must be a fraction"):
        make_scheme("fixbn", 3, freeze=1.5)
    with pytest.raises(ValueError, match="steps=0 is out of range"):
        make_scheme("naive", 0)
    assert isinstance(make_scheme("naive", 3).make_norm(4), FederatedBatchNorm)
    assert make_scheme("fixbn", 10, freeze=0.3).freeze_step == 3
