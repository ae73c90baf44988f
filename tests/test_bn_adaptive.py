"""bn-adaptive: the attack on batch normalization itself (attacks/bn_adaptive.py).

Unit tests on a small fixed model (rows, determinism, purity, the gradient against finite differences
of the evaluation loss, the direction against random ones, the gradient-channel fallback, errors),
the context's `field` set by attack_stats, runs through byzbn.fl, and an end-to-end check:
on a tiny fixed FBN run without defense, bn-adaptive lowers the test accuracy more than sign-flip.
"""
import copy
import math

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from byzbn.attacks import ATTACKS, AttackContext, BNAdaptive, attack_parameters, attack_stats, make_attack
from byzbn.attacks.bn_adaptive import running_statistics_gradient
from byzbn.data import load_dataset, partition
from byzbn.defenses import make_defense
from byzbn.fl import FedAvgFederation, Federation, make_scenario
from byzbn.nn import FederatedBatchNorm, federated_bn_layers, make_cnn
from byzbn.schemes import make_scheme
from byzbn.stats import ClientStats

N, F_BYZ = 7, 2
H = N - F_BYZ
SHAPE = (1, 8, 8)


def small_model(dtype=torch.float64, seed=0) -> nn.Module:
    """The paper's CNN at width 1/8 (BN channels 8 + 8 + 16 + 16 = 48) with non-trivial running statistics."""
    torch.manual_seed(seed)
    model = make_cnn(SHAPE, 10, 0.125, norm=FederatedBatchNorm, dropout=0.25).to(dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    for layer in federated_bn_layers(model):
        layer.running_mean.copy_(0.5 * torch.rand(layer.num_features, generator=gen, dtype=torch.float64))
        layer.running_var.copy_(0.5 + torch.rand(layer.num_features, generator=gen, dtype=torch.float64))
    return model


def small_batch(dtype=torch.float64, samples=20):
    gen = torch.Generator().manual_seed(7)
    return torch.randn(samples, *SHAPE, generator=gen).to(dtype), torch.arange(samples) % 10


def running(model, field: str) -> torch.Tensor:
    return torch.cat([getattr(layer, f"running_{field}") for layer in federated_bn_layers(model)])


def honest_rows(model, field: str, dtype=torch.float64) -> torch.Tensor:
    """h rows scattered around the model's running statistics (their mean is exactly those statistics)."""
    gen = torch.Generator().manual_seed(11)
    noise = 0.05 * torch.randn(H, running(model, field).numel(), generator=gen, dtype=torch.float64)
    return (running(model, field).double() + noise - noise.mean(dim=0)).to(dtype)


def stats_context(model, field, defense="mean", pre=None, batch=None):
    return AttackContext(N, F_BYZ, defense=make_defense(defense, F_BYZ, pre=pre), channel="stats", model=model,
                         batches=small_batch() if batch is None else batch, field=field)


def eval_loss_with(model, field: str, stats: torch.Tensor, batch) -> float:
    """The eval-mode loss of a copy of model whose running `field` statistics are `stats` (naive BN's server,
    which clamps negative variances to 0)."""
    if field == "var":
        stats = stats.clamp(min=0.0)
    twin = copy.deepcopy(model).eval()
    layers = federated_bn_layers(twin)
    with torch.no_grad():
        for layer, part in zip(layers, stats.split([layer.num_features for layer in layers])):
            getattr(layer, f"running_{field}").copy_(part)
        return float(F.cross_entropy(twin(batch[0]), batch[1]))


# ---------------------------------------------------------------- rows

def test_bn_adaptive_is_registered_with_the_line_search_parameters():
    assert ATTACKS["bn-adaptive"] is BNAdaptive
    assert attack_parameters("bn-adaptive") == ["min_scale", "max_scale", "grid", "iters", "brackets"]
    assert repr(make_attack("bn-adaptive", max_scale=10.0)) == (
        "make_attack('bn-adaptive', min_scale=0.01, max_scale=10.0, grid=17, iters=25, brackets=3)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("field", ["mean", "var"])
@pytest.mark.parametrize("defense, pre", [("mean", None), ("median", None), ("median", "nnm")])
def test_rows_are_f_finite_copies_and_deterministic(dtype, field, defense, pre):
    model = small_model(dtype)
    honest = honest_rows(model, field, dtype)
    context = stats_context(model, field, defense, pre, small_batch(dtype))
    attack = make_attack("bn-adaptive")
    rows = attack(honest, context)
    assert rows.shape == (F_BYZ, honest.shape[1]) and rows.dtype == dtype
    assert torch.isfinite(rows).all() and torch.equal(rows[0], rows[1])
    assert not torch.equal(rows[0], honest.mean(dim=0))  # it does attack
    assert torch.equal(attack(honest, context), rows)                       # the same instance, cached pass
    assert torch.equal(make_attack("bn-adaptive")(honest, context), rows)   # a fresh instance


def test_the_model_and_the_inputs_are_left_as_they_were():
    model = small_model()
    model.train()
    model.classifier.eval()  # mixed training flags must come back as they were
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    x, y = small_batch()
    x0, y0 = x.clone(), y.clone()
    honest = honest_rows(model, "var")
    honest0 = honest.clone()
    make_attack("bn-adaptive")(honest, stats_context(model, "var", batch=(x, y)))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    assert [m.training for m in model.modules()] == flags
    assert all(layer.active_pass is None for layer in federated_bn_layers(model))
    assert torch.equal(x, x0) and torch.equal(y, y0) and torch.equal(honest, honest0)


@pytest.mark.parametrize("field", ["mean", "var"])
def test_the_gradient_matches_finite_differences_of_the_evaluation_loss(field):
    # The reference is independent: eval mode normalizes through F.batch_norm, the attack's pass through
    # explicit torch ops with the running statistics as inputs.
    model, batch = small_model(), small_batch()
    grad_mean, grad_var = running_statistics_gradient(model, *batch)
    grad = grad_mean if field == "mean" else grad_var
    assert grad.shape == (48,)
    base = running(model, field).clone()
    for k in (0, 9, 17, 30, 47):
        delta = torch.zeros_like(base)
        delta[k] = 1e-6
        numeric = (eval_loss_with(model, field, base + delta, batch)
                   - eval_loss_with(model, field, base - delta, batch)) / 2e-6
        assert math.isclose(float(grad[k]), numeric, rel_tol=1e-5, abs_tol=1e-9), (k, float(grad[k]), numeric)


@pytest.mark.parametrize("field", ["mean", "var"])
@pytest.mark.parametrize("defense, pre", [("mean", None), ("median", None), ("median", "nnm"),
                                          ("trimmed-mean", None)])
def test_the_attack_raises_the_loss_more_than_random_directions_of_the_same_norm(field, defense, pre):
    # The server writes the aggregate as the running statistics (naive BN); the target loss is the
    # eval loss of the model normalizing with them. A random displacement of the Byzantine rows of the
    # same norm, through the same defense, raises it less (20 random directions, a fixed generator).
    # max_scale 0.1 keeps the comparison about the direction: the defaults' 100 breaks the model outright.
    model, batch = small_model(), small_batch()
    honest = honest_rows(model, field)
    context = stats_context(model, field, defense, pre, batch)
    rows = make_attack("bn-adaptive", min_scale=1e-3, max_scale=0.1)(honest, context)

    def loss_of(byzantine_row):
        aggregate = context.defense(torch.cat([honest, byzantine_row.expand(F_BYZ, -1)]))
        return eval_loss_with(model, field, aggregate, batch)

    centre = honest.mean(dim=0)
    attacked = loss_of(rows[0])
    assert attacked > loss_of(centre)
    length = torch.linalg.vector_norm(rows[0] - centre)
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        direction = torch.randn(centre.shape, generator=gen, dtype=torch.float64)
        assert loss_of(centre + length * direction / torch.linalg.vector_norm(direction)) < attacked


# ---------------------------------------------------------------- the gradient channel and errors

def test_on_the_gradient_channel_the_rows_move_the_aggregate_against_the_honest_mean():
    honest = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 4.0]], dtype=torch.float64)  # mean [3, 4]
    mean_context = AttackContext(5, 2, defense=make_defense("mean", 2), channel="grads")
    rows = make_attack("bn-adaptive")(honest, mean_context)
    # against the mean the first-order objective is linear: the search takes max_scale = 100 (times ‖mean‖)
    torch.testing.assert_close(rows, torch.tensor([[-297.0, -396.0]] * 2, dtype=torch.float64))
    median = make_defense("median", 2)
    rows = make_attack("bn-adaptive")(honest, AttackContext(5, 2, defense=median, channel="grads"))
    moved = median(torch.cat([honest, rows])) - honest.mean(dim=0)
    assert float(moved @ -honest.mean(dim=0)) > 0
    zeros = torch.zeros(3, 2, dtype=torch.float64)  # no ascent direction: the no-op rows
    assert torch.equal(make_attack("bn-adaptive")(zeros, mean_context), torch.zeros(2, 2, dtype=torch.float64))


def test_invalid_calls_raise_clear_errors():
    model = small_model()
    honest = honest_rows(model, "mean")
    attack = make_attack("bn-adaptive")
    with pytest.raises(ValueError, match="needs defense"):
        attack(honest, AttackContext(N, F_BYZ, channel="stats", model=model, batches=small_batch(), field="mean"))
    defense = make_defense("mean", F_BYZ)
    with pytest.raises(ValueError, match=r"context.channel in \['stats', 'grads'\], got ''"):
        attack(honest, AttackContext(N, F_BYZ, defense=defense))
    with pytest.raises(ValueError, match="context.field 'mean' or 'var'"):
        attack(honest, AttackContext(N, F_BYZ, defense=defense, channel="stats", model=model, batches=small_batch()))
    with pytest.raises(ValueError, match="needs context.model"):
        attack(honest, AttackContext(N, F_BYZ, defense=defense, channel="stats", field="mean"))
    with pytest.raises(ValueError, match=r"has 48 BN channels, the rows have d=8 \(FedTAN"):
        attack(honest[:, :8], stats_context(model, "mean"))
    plain = make_cnn(SHAPE, 10, 0.125, norm=nn.BatchNorm2d)
    with pytest.raises(ValueError, match="no byzbn.nn.FederatedBatchNorm layer"):
        attack(honest, stats_context(plain, "mean", batch=small_batch(torch.float32)))
    with pytest.raises(ValueError, match="field must be one of"):
        AttackContext(N, F_BYZ, field="both")
    for params, match in [({"min_scale": 2.0, "max_scale": 1.0}, "0 < min_scale < max_scale"),
                          ({"grid": 1}, "grid=1 is out of range"), ({"iters": -1}, "iters=-1"),
                          ({"max_scale": float("inf")}, "max_scale must be a finite float")]:
        with pytest.raises(ValueError, match=match):
            make_attack("bn-adaptive", **params)


# ---------------------------------------------------------------- attack_stats tells the field; one pass per step

def test_attack_stats_tells_the_attack_which_field_it_attacks():
    seen = []

    def recorder(honest, context):
        seen.append(context.field)
        return honest.mean(dim=0).expand(context.f, -1).clone()

    stats = ClientStats(torch.rand(H, 4), torch.rand(H, 4), torch.full((H,), 9))
    context = AttackContext(N, F_BYZ, channel="stats")
    for fields, expected in [("both", ["mean", "var"]), ("mean", ["mean"]), ("var", ["var"])]:
        seen.clear()
        attack_stats(stats, recorder, context, fields=fields)
        assert seen == expected
    assert context.field == ""  # the caller's context is not changed


def test_one_model_pass_serves_both_fields_until_the_model_changes():
    model = small_model()
    passes = []
    model.register_forward_hook(lambda module, args, out: passes.append(1))
    context = stats_context(model, "")
    stats = ClientStats(honest_rows(model, "mean"), honest_rows(model, "var"), torch.full((H,), 20))
    attack = make_attack("bn-adaptive")
    first = attack_stats(stats, attack, context)
    assert len(passes) == 1
    with torch.no_grad():
        model.classifier.fc2.bias.add_(0.5)  # an in-place update, as the server's step makes
    second = attack_stats(stats, attack, context)
    assert len(passes) == 2
    fresh = attack_stats(stats, make_attack("bn-adaptive"), context)
    assert torch.equal(second.mean, fresh.mean) and torch.equal(second.var, fresh.var)
    assert not torch.equal(first.mean, second.mean)


# ---------------------------------------------------------------- in the federated runner

def _federation(scheme_name, attack, scenario="attack+defense", target="stats", steps=2, local_steps=None,
                seed=0, data=None, n=N, width=0.125, lr=0.1, batch_size=5):
    if data is None:
        gen = torch.Generator().manual_seed(seed)
        h = n - F_BYZ
        y = torch.arange(h * 20) % 10
        x = torch.randn(h * 20, *SHAPE, generator=gen) + 0.5 * y.view(-1, 1, 1, 1)
        data = (x, y, torch.arange(h * 20).view(h, 20), SHAPE)
    x, y, parts, shape = data
    scheme = make_scheme(scheme_name, steps if local_steps is None else steps // local_steps)
    torch.manual_seed(seed)
    model = make_cnn(shape, 10, width, norm=scheme.make_norm, dropout=0.0)
    sc = make_scenario(scenario, n, F_BYZ,
                       None if attack is None else make_attack(attack),
                       make_defense("median", F_BYZ, pre="nnm"), target=target)
    common = dict(batch_size=batch_size, lr=lr, momentum=0.9, seed=seed)
    if local_steps is None:
        return Federation(model, scheme, sc, x, y, parts, **common)
    return FedAvgFederation(model, scheme, sc, x, y, parts, local_steps=local_steps, **common)


RUNS = ([(scheme, None, "stats") for scheme in ("naive", "fbn", "hbn", "fixbn")]
        + [("fbn", None, "both"), ("naive", 2, "stats"), ("fbn", 2, "both"), ("hbn", 2, "stats")])


@pytest.mark.parametrize("scheme, local_steps, target", RUNS)  # local_steps None: DSGD, else FedAvg
def test_bn_adaptive_runs_in_dsgd_and_fedavg(scheme, local_steps, target):
    fed = _federation(scheme, "bn-adaptive", target=target, steps=4, local_steps=local_steps)
    before = {k: v.clone() for k, v in fed.model.state_dict().items()}
    for _ in range(4 if local_steps is None else 2):
        assert math.isfinite(fed.step())
    assert fed.non_finite() is None
    assert any(not torch.equal(v, before[k]) for k, v in fed.model.state_dict().items() if "running" in k)


def test_fedtans_per_layer_submissions_are_refused_clearly():
    # The runner refuses the combination when the federation is built (byzbn.fl.scenario.incompatibility) ...
    with pytest.raises(ValueError, match="reads a statistics row of all BN layers, which scheme 'fedtan' never"):
        _federation("fedtan", "bn-adaptive")
    # ... and the attack itself refuses a per-layer row if it is handed one anyway.
    fed = _federation("naive", "bn-adaptive")
    x, y = fed.client_batch(0)
    layer_rows = torch.randn(fed.h, fed.layers[0].num_features)
    context = replace(fed.attack_context(0, "stats", (x, y)), field="mean")
    with pytest.raises(ValueError, match="FedTAN's per-layer submissions are not supported"):
        fed.scenario.attack(layer_rows, context)


def test_bn_adaptive_lowers_the_accuracy_of_an_undefended_fbn_run_more_than_sign_flip(tiny_npz):
    # The tiny 8×8 task, 4 honest clients with gamma:0.5 heterogeneity, 2 Byzantine, the mean (no
    # defense), 30 steps, seed 0. Without attack the model learns (0.82–1.0 test accuracy over seeds
    # 0–11 when this was written), sign-flip on the statistics barely hurts it (0.76–1.0), bn-adaptive
    # leaves it at chance (0.06–0.13, test loss ≈ ln 10): the margins below held for all 12 seeds.
    ds = load_dataset(f"npz:{tiny_npz}")
    parts = torch.stack(partition(ds.y_train, 6 - F_BYZ, "gamma:0.5", seed=0))
    data = (ds.x_train, ds.y_train, parts, ds.input_shape)
    results = {}
    for attack in (None, "sign-flip", "bn-adaptive"):
        fed = _federation("fbn", attack, scenario="no-attack" if attack is None else "attack", steps=30,
                          data=data, n=6, width=0.25, batch_size=8)
        for _ in range(30):
            fed.step()
        results[attack] = fed.evaluate(ds.x_test, ds.y_test)
    (clean, _), (flipped, flipped_loss), (adaptive, adaptive_loss) = results.values()
    assert clean >= 0.6                      # the setting is learnable in 30 steps
    assert adaptive <= flipped - 0.4         # bn-adaptive breaks what sign-flip leaves standing
    assert adaptive_loss > flipped_loss + 1.0
