"""Per-client gradients from ONE forward/backward of the stacked batch, for schemes that couple the clients.

Under FedTAN every client's output depends on every client's batch through the synchronized
statistics, so a client's gradient is not the gradient of its own loss on its own: it is what the
client computes in the protocol, the part of the federation's gradient that flows through its own
computation (its activations, with the backward exchange supplying the gradient with respect to the
merged statistics). With the stacked batch client-major, that part is the sum over the client's rows
of each parameter's per-row contributions, which this module reads off the module inputs and the
gradients with respect to the module outputs (one backward):

    Linear:  dW_i = Σ_rows∈i  g ⊗ x,  db_i = Σ g
    Conv2d:  dW_i = conv2d_weight of client i's rows (all clients at once as a grouped convolution)
    FederatedBatchNorm (affine):  dw_i = Σ g·x̂,  db_i = Σ g   (x̂ returned by the layer: keep_normalized)

The loss is the mean over all h·B rows, so the parts sum to its gradient; the rows returned are h
times the parts, so that their mean is the federation's gradient and, for schemes that do not couple
the clients, row i is exactly the gradient of client i's own mean loss.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from byzbn.nn import BNPass, FederatedBatchNorm, HybridBatchNorm, PassRecord, run_bn_pass

SUPPORTED = (nn.Linear, nn.Conv2d, FederatedBatchNorm)


def _owners(model: nn.Module) -> list[nn.Module]:
    owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    for m in owners:
        if not isinstance(m, SUPPORTED) or isinstance(m, HybridBatchNorm):
            raise ValueError(f"client_split_grads supports parameters of {[c.__name__ for c in SUPPORTED]} "
                             f"(not HybridBatchNorm), got a {type(m).__name__}")
        if isinstance(m, nn.Conv2d) and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
            raise ValueError(f"client_split_grads supports Conv2d with numeric zero padding, got "
                             f"padding={m.padding!r}, padding_mode={m.padding_mode!r}")
    return owners


def _linear(m: nn.Linear, x: torch.Tensor, g: torch.Tensor, h: int) -> dict:
    xs, gs = x.reshape(h, -1, x.shape[-1]), g.reshape(h, -1, g.shape[-1])
    out = {id(m.weight): torch.einsum("hko,hki->hoi", gs, xs)}
    if m.bias is not None:
        out[id(m.bias)] = gs.sum(dim=1)
    return out


def _conv2d(m: nn.Conv2d, x: torch.Tensor, g: torch.Tensor, h: int) -> dict:
    b = x.shape[0] // h
    # Client i's rows as channel group i of one batch of B rows: the per-client weight gradients are
    # the weight gradient of a convolution with h·groups groups.
    xg = x.view(h, b, *x.shape[1:]).transpose(0, 1).reshape(b, h * x.shape[1], *x.shape[2:])
    gg = g.view(h, b, *g.shape[1:]).transpose(0, 1).reshape(b, h * g.shape[1], *g.shape[2:])
    size = (h * m.out_channels, m.in_channels // m.groups, *m.kernel_size)
    weight = torch.nn.grad.conv2d_weight(xg, size, gg, m.stride, m.padding, m.dilation, h * m.groups)
    out = {id(m.weight): weight.view(h, *m.weight.shape)}
    if m.bias is not None:
        out[id(m.bias)] = g.view(h, b, g.shape[1], -1).sum(dim=(1, 3))
    return out


def _batch_norm(m: FederatedBatchNorm, g: torch.Tensor, h: int, record: PassRecord) -> dict:
    output = record.output(m)
    normalized = None if output is None else output.normalized
    if normalized is None or normalized.shape[0] * normalized.shape[1] != g.shape[0]:
        raise ValueError("the FederatedBatchNorm returned no normalized input for this pass (keep_normalized was off)")
    gs = g.view(normalized.shape)
    dims = (1,) + tuple(range(3, gs.dim()))
    mixed = normalized.shape[0] != h  # the layer ran with clients=1 on the stacked batch: split its rows
    xhat = normalized.reshape(h, -1, *normalized.shape[2:]) if mixed else normalized
    gs = gs.reshape(xhat.shape)
    return {id(m.weight): (gs * xhat).sum(dim=dims), id(m.bias): gs.sum(dim=dims)}


def client_split_grads(model: nn.Module, params: list[nn.Parameter], loss_fn: Callable[[], torch.Tensor],
                       clients: int, spec: BNPass) -> tuple[torch.Tensor, torch.Tensor, PassRecord]:
    """(loss, [clients, d] per-client gradients, the pass record) from one forward and one backward.

    `loss_fn()` runs the forward of the stacked batch client-major, with the loss the mean over all
    its rows, inside a BN pass `spec` (with x̂ kept); `params` gives the order of the flattened
    gradient (each parameter used once per row).
    """
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise ValueError(f"clients must be an int >= 1, got {clients!r}")
    owners = _owners(model)
    captured: dict = {}

    def keep(module, args, output):
        if module in captured:
            raise ValueError(f"client_split_grads needs each parametrized module called once, "
                             f"{type(module).__name__} was called twice")
        captured[module] = (args[0].detach(), output)

    layers = [m for m in model.modules() if isinstance(m, FederatedBatchNorm)]
    handles = [m.register_forward_hook(keep) for m in owners]
    try:
        with run_bn_pass(layers, spec.replace(keep_normalized=True)) as record:
            loss = loss_fn()
    finally:
        for handle in handles:
            handle.remove()
    grads_out = torch.autograd.grad(loss, [captured[m][1] for m in owners], allow_unused=True)
    parts: dict = {}
    for m, g in zip(owners, grads_out):
        x, out = captured[m]
        if g is None:
            g = torch.zeros_like(out)
        if isinstance(m, nn.Linear):
            parts.update(_linear(m, x, g, clients))
        elif isinstance(m, nn.Conv2d):
            parts.update(_conv2d(m, x, g, clients))
        else:
            parts.update(_batch_norm(m, g, clients, record))
    missing = [i for i, p in enumerate(params) if id(p) not in parts]
    if missing:
        raise ValueError(f"params[{missing[0]}] is not a parameter of the model's supported modules")
    flat = torch.cat([parts[id(p)].reshape(clients, -1) for p in params], dim=1)
    return loss.detach(), flat * clients, record


__all__ = ["SUPPORTED", "client_split_grads"]
