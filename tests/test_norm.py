"""byzbn.nn: the federated BN layer against F.batch_norm references (float64), and its custom backward."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

from byzbn import stats as bnstats
from byzbn.nn import (BNPass, FederatedBatchNorm, KernelClientBatchNorm, KernelMoments, run_bn_pass, client_moments,
                      federated_bn_layers)

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def _layer(c: int, dtype=torch.float64, seed: int = 0) -> FederatedBatchNorm:
    gen = torch.Generator().manual_seed(seed)
    layer = FederatedBatchNorm(c).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(c, generator=gen, dtype=dtype) + 0.5)
        layer.bias.copy_(torch.randn(c, generator=gen, dtype=dtype))
        layer.running_mean.copy_(torch.randn(c, generator=gen, dtype=dtype))
        layer.running_var.copy_(torch.rand(c, generator=gen, dtype=dtype) + 0.5)
    return layer


def _batch(clients: int, b: int, c: int, spatial=(3, 2), dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    offsets = 3 * torch.randn(clients, 1, c, *[1] * len(spatial), generator=gen, dtype=dtype)
    x = torch.randn(clients, b, c, *spatial, generator=gen, dtype=dtype) * 2 + offsets
    return x.reshape(clients * b, c, *spatial)


@pytest.mark.parametrize("backend", ["kernel", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_client_moments_equal_the_stats_reference(backend, dtype):
    xs = _batch(5, 3, 4, dtype=dtype).view(5, 3, 4, 3, 2)
    mean, var = client_moments(xs, backend)
    ref = bnstats.client_stats(xs.double())
    torch.testing.assert_close(mean.double(), ref.mean, **TOL[dtype])
    torch.testing.assert_close(var.double(), ref.var, **TOL[dtype])
    assert mean.dtype == dtype and var.dtype == dtype


def test_kernel_moments_backward_passes_gradcheck():
    xs = _batch(3, 2, 2, spatial=(2,)).view(3, 2, 2, 2).requires_grad_(True)
    assert torch.autograd.gradcheck(KernelMoments.apply, (xs,))


def test_fused_client_batch_norm_passes_gradcheck():
    xs = _batch(3, 2, 2, spatial=(2,)).view(3, 2, 2, 2).requires_grad_(True)
    weight = (torch.rand(2, dtype=torch.float64) + 0.5).requires_grad_(True)
    bias = torch.randn(2, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, w, b: KernelClientBatchNorm.apply(x, w, b, 1e-5)[0], (xs, weight, bias))


def test_kernel_moments_backward_equals_autograd_through_torch_moments():
    xs = _batch(4, 3, 3).view(4, 3, 3, 3, 2)
    gen = torch.Generator().manual_seed(7)
    w_mean, w_var = torch.randn(4, 3, generator=gen, dtype=xs.dtype), torch.randn(4, 3, generator=gen, dtype=xs.dtype)
    grads = []
    for backend in ("kernel", "torch"):
        x = xs.clone().requires_grad_(True)
        mean, var = client_moments(x, backend)
        ((mean * w_mean).sum() + (var * w_var).sum()).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], **TOL[torch.float64])


def test_client_moments_rejects_an_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        client_moments(torch.zeros(1, 2, 1, 1), "cuda")


def _per_client_reference(layer, x, clients):
    """Each client's batch through F.batch_norm(training=True) on its own: what naive BN computes."""
    return torch.cat([F.batch_norm(xi, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)
                      for xi in x.chunk(clients)])



def _per_client_reference(layer, x, clients):
    """Each client's batch through F.batch_norm(training=True) on its own: what naive BN computes."""
    return torch.cat([F.batch_norm(xi, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)
                      for xi in x.chunk(clients)])


@pytest.mark.parametrize("backend", ["kernel", "torch"])
def test_client_mode_equals_bn_on_each_client_batch_with_gradients(backend):
    layer, x, clients = _layer(3), _batch(4, 5, 3), 4
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with run_bn_pass([layer], BNPass(mode="client", clients=clients, backend=backend)):
        out = layer(x1)
    ref = _per_client_reference(layer, x2, clients)
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    up = torch.randn_like(out)
    g = torch.autograd.grad((out * up).sum(), [x1, layer.weight, layer.bias])
    g_ref = torch.autograd.grad((ref * up).sum(), [x2, layer.weight, layer.bias])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("backend", ["kernel", "torch"])
def test_union_mode_equals_bn_on_the_concatenated_batch_with_gradients(backend):
    layer, x = _layer(2), _batch(3, 4, 2)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with run_bn_pass([layer], BNPass(mode="union", clients=3, backend=backend)):
        out = layer(x1)
    ref = F.batch_norm(x2, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    up = torch.randn_like(out)
    g = torch.autograd.grad((out * up).sum(), [x1, layer.weight, layer.bias])
    g_ref = torch.autograd.grad((ref * up).sum(), [x2, layer.weight, layer.bias])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_global_mode_normalizes_with_the_running_statistics_as_constants():
    layer, x = _layer(3), _batch(2, 4, 3).requires_grad_(True)
    with run_bn_pass([layer], BNPass(mode="global", clients=2)):
        out = layer(x)
    ref = (x - layer.running_mean.view(1, 3, 1, 1)) / torch.sqrt(layer.running_var.view(1, 3, 1, 1) + layer.eps) \
        * layer.weight.view(1, 3, 1, 1) + layer.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    # No gradient path through batch statistics: d out / d x is the constant per-channel scale.
    (gx,) = torch.autograd.grad(out.sum(), [x])
    scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
    torch.testing.assert_close(gx, scale.view(1, 3, 1, 1).expand_as(x), **TOL[torch.float64])


@pytest.mark.parametrize("mode", ["client", "union", "global"])
def test_recording_returns_the_per_client_batch_statistics_and_counts(mode):
    layer, x = _layer(3), _batch(4, 2, 3)
    with run_bn_pass([layer], BNPass(mode=mode, clients=4, record=True)) as record:
        layer(x)
    outputs = record.outputs()
    assert len(outputs) == 1 and record.output(layer) is outputs[0]
    ref = bnstats.client_stats(x.view(4, 2, 3, 3, 2))
    torch.testing.assert_close(outputs[0].mean, ref.mean, **TOL[torch.float64])
    torch.testing.assert_close(outputs[0].var, ref.var, **TOL[torch.float64])
    assert not outputs[0].mean.requires_grad and outputs[0].count == 2 * 3 * 2
    # The record's BNStats: one ClientStats per layer, the count per client as an int64 tensor.
    (stats,) = record.bn_stats(4).clients
    torch.testing.assert_close(stats.mean, ref.mean, **TOL[torch.float64])
    assert torch.equal(stats.count, torch.full((4,), 12, dtype=torch.int64))
    assert record.bn_stats(4).merged is None  # only a synchronized (FedTAN) pass merges in the forward


def test_eval_mode_is_bn_with_the_running_statistics_and_ignores_the_mode():
    layer, x = _layer(3), _batch(2, 3, 3)
    layer.eval()
    ref = F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, layer.eps)
    with run_bn_pass([layer], BNPass(mode="client", clients=2, record=True)) as record:
        out = layer(x)
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    assert record.outputs() == []  # eval mode returns nothing into the pass


def test_running_buffers_are_not_touched_by_a_training_pass():
    layer, x = _layer(3), _batch(2, 3, 3)
    before = (layer.running_mean.clone(), layer.running_var.clone())
    for mode in ("client", "union", "global"):
        with run_bn_pass([layer], BNPass(mode=mode, clients=2, record=True)):
            layer(x)
    torch.testing.assert_close(layer.running_mean, before[0], rtol=0, atol=0)
    torch.testing.assert_close(layer.running_var, before[1], rtol=0, atol=0)


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="num_features"):
        FederatedBatchNorm(0)
    with pytest.raises(ValueError, match="eps"):
        FederatedBatchNorm(2, eps=0.0)
    with pytest.raises(ValueError, match="momentum"):
        FederatedBatchNorm(2, momentum=1.5)
    layer = FederatedBatchNorm(2)
    with pytest.raises(ValueError, match=r"shape \[N, 2"):
        layer(torch.zeros(4, 3, 2, 2))
    with pytest.raises(ValueError, match="clients=3"), run_bn_pass([layer], BNPass(clients=3)):
        layer(torch.zeros(4, 2, 2, 2))
    with pytest.raises(ValueError, match="mode must be one of"):
        BNPass(mode="batch")
    with pytest.raises(ValueError, match="clients must be"):
        BNPass(clients=0)
    with pytest.raises(ValueError, match="clients must be"):
        BNPass(clients=True)
    with pytest.raises(ValueError, match="backend must be one of"):
        BNPass(backend="cuda")
    with pytest.raises(ValueError, match="mode must be one of"):
        BNPass().replace(mode="batch")  # a changed copy is validated too
    # A record (the old sink) always comes with the pass: what can go wrong is a spec that is not a
    # BNPass, or a layer running twice into one record (two forwards in one pass).
    with pytest.raises(ValueError, match="spec must be a BNPass"), run_bn_pass([layer], "client"):
        pass
    with pytest.raises(ValueError, match="ran twice in one pass"), run_bn_pass([layer], BNPass(record=True)):
        layer(torch.randn(4, 2, 2, 2))
        layer(torch.randn(4, 2, 2, 2))


def test_federated_bn_layers_lists_the_layers_in_forward_order():
    from byzbn.nn.models import make_cnn, norm_layers

    model = make_cnn((1, 8, 8), 10, 0.125, norm=FederatedBatchNorm)
    assert federated_bn_layers(model) == norm_layers(model)
    assert [layer.num_features for layer in federated_bn_layers(model)] == [8, 8, 16, 16]


@given(clients=st.integers(1, 5), b=st.integers(1, 4), c=st.integers(1, 3),
       spatial=st.sampled_from([(), (1,), (2, 2), (3, 1)]), seed=st.integers(0, 2**31 - 1))
def test_client_mode_property(clients, b, c, spatial, seed):
    assume(b * max(1, int(torch.tensor(spatial).prod())) >= 2)  # BN in training needs 2 elements per channel
    layer, x = _layer(c, seed=seed), _batch(clients, b, c, spatial=spatial, seed=seed + 1)
    with run_bn_pass([layer], BNPass(mode="client", clients=clients)):
        out = layer(x)
    torch.testing.assert_close(out, _per_client_reference(layer, x, clients), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode,backend", [("client", "kernel"), ("client", "torch"), ("union", "kernel"),
                                          ("global", "kernel")])
def test_keeping_the_normalized_input_changes_neither_output_nor_gradients(mode, backend):
    layer, x = _layer(3), _batch(4, 3, 3)
    outs, grads, kept = [], [], []
    up = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    for keep in (False, True):
        xi = x.clone().requires_grad_(True)
        with run_bn_pass([layer], BNPass(mode=mode, clients=4, backend=backend, keep_normalized=keep)) as record:
            out = layer(xi)
        outs.append(out)
        kept.append(record.output(layer).normalized)
        grads.append(torch.autograd.grad((out * up).sum(), [xi, layer.weight, layer.bias]))
    torch.testing.assert_close(outs[0], outs[1], **TOL[torch.float64])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    assert kept[0] is None  # x̂ is returned only when asked for
    expected = (outs[1] - layer.bias.view(1, 3, 1, 1)) / layer.weight.view(1, 3, 1, 1)
    assert kept[1].shape == (4, 3, 3, 3, 2) and not kept[1].requires_grad
    torch.testing.assert_close(kept[1].reshape(x.shape), expected.detach(), **TOL[torch.float64])


def test_sync_mode_needs_the_schemes_callable():
    with pytest.raises(ValueError, match="needs the scheme's sync callable"):
        BNPass(mode="sync", clients=2)
    with pytest.raises(ValueError, match="sync must be a callable"):
        BNPass(sync=3)
