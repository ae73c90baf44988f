"""bn-adaptive: an omniscient attack on batch normalization itself.

Objective. The BN statistics the server broadcasts are what the next model normalizes with: FBN's
clients train with them (BNPass(mode="global"): every layer normalizes with its running mean and
variance as constants) and every scheme evaluates with them. Let L(r) be the mean cross-entropy of
the global model (context.model; byzbn's runner submits the statistics after the step's parameter
update, so this is the model the server uses next) on the honest clients' stacked batch of this step
(context.batches) when every FederatedBatchNorm layer normalizes with running statistics
r = (r_mean, r_var), dropout off. The attack takes g = ∇_r L at the server's current statistics (the
model's buffers) and, for the field the rows hold (context.field, set by attack_stats: the
concatenated means or variances of all BN layers, in layer order), the unit ascent direction
u = g_field / ‖g_field‖. All f Byzantine clients submit

    row(t) = mean(H) + t · s · u,        s = ‖mean(H)‖ (1 when that is 0),

with the scale t maximising the first-order loss increase of the server's aggregate,

    φ(t) = ⟨D(cat(H, row(t), …, row(t))) − mean(H), u⟩,        D = context.defense,

found over t ∈ ±[min_scale, max_scale] ∪ {0} by the optimal attacks' bracketed line search
(byzbn.attacks.optimal.bracketed_line_search: geometric grid in both directions, golden-section
refinement of the best peaks). Against the undefended mean φ is linear and the search takes
max_scale; a robust defense saturates it and the search finds the largest displacement along u that
the defense lets through.

Why one objective serves FBN and naive BN. FBN's rows are batch statistics; the server's running
statistics move by m·(aggregate − running) (m the BN momentum; variances rescaled by N/(N − 1)), so
moving the aggregate along u moves them along u. Naive BN's rows are running statistics that the
server writes as they are: the aggregate is the next running statistics. Either way ⟨g, Δaggregate⟩
is the first-order change of L, up to the positive factor m. FBN's training forward is L's forward
with dropout on; the attack leaves dropout out, so its objective is deterministic and is exactly the
loss of the model the server evaluates. Each field is attacked as if the other were honest (the
attack sees one field's rows per call): under FBN's two-phase merge a Byzantine variance row also
carries the squared deviation of its mean row.

Gradient channel (context.channel "grads"): the rows have no BN meaning, so the attack falls back to
the loss-increasing direction of the parameters, u = −mean(H)/‖mean(H)‖ (the server steps
θ ← θ − lr·aggregate along DSGD's momentums, and θ ← θ + aggregate along FedAvg's updates, which
point downhill: either way −mean(H) is uphill to first order), with the same line search. No model
pass is needed there. Any other channel is a ValueError, as is a statistics row whose width is not
the model's total BN channel count (FedTAN submits one layer at a time: not supported).

Cost per step (statistics channel). One forward and one backward of the global model on the honest
batch (h·B samples): the backward computes activation gradients only (parameters enter detached),
and gives both fields' gradients at once; the second field's call reuses them while the model's
tensors and the batch are unchanged (a one-entry cache holding references to them). Memory: the
activations of one training forward on the honest batch, plus 2·d floats (d = BN channels, 384 for
the paper's CNN). The line search adds at most 2·grid + 1 + brackets·(iters + 2) defense evaluations
of an [n, d] matrix per field (116 with the defaults). The model is never modified: parameters,
buffers, .grad and training flags are as before the call (the pass runs under
torch.func.functional_call with copies of the running statistics as inputs).

Measured on the 2-core CPU container, load average ≈ 8, 2026-11-30 (best of 5, h = 8 clients): at
width 1/8 on 8 × 16 MNIST-shaped images (1 thread) the attack's pass took 99 ms next to 128 ms for
FBN's training pass; at width 1 on 8 × 32 CIFAR-shaped images (2 threads) 10.1 s next to 9.6 s: about
one training pass per step. The line search took 14 ms (d = 48) and 19 ms (d = 384) per field
against the mean, 118 ms and 155 ms against NNM∘median.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.func import functional_call

from byzbn.attacks.context import AttackContext
from byzbn.attacks.optimal import bracketed_line_search, set_search_parameters
from byzbn.attacks.registry import Attack, register_attack, repeat_row
from byzbn.nn import BNPass, run_bn_pass, federated_bn_layers

CHANNELS = ("stats", "grads")


def running_statistics_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂running_mean, ∂L/∂running_var), each [d]: all FederatedBatchNorm layers concatenated in order.

    L is the mean cross-entropy of `model` on (x, y) with every BN layer normalizing with its running
    statistics (as in eval mode and FBN's training pass) and dropout off, at the model's current
    statistics. The model is left exactly as it was (parameters, buffers, .grad, training flags).
    """
    layers = federated_bn_layers(model)
    if not layers:
        raise ValueError(f"model has no byzbn.nn.FederatedBatchNorm layer: no BN statistics to attack "
                         f"(got {type(model).__name__})")
    names = {id(module): name for name, module in model.named_modules()}
    means, variances = [], []
    inputs = {name: p.detach() for name, p in model.named_parameters()}
    for layer in layers:
        prefix = names[id(layer)]
        means.append(layer.running_mean.detach().clone().requires_grad_(True))
        variances.append(layer.running_var.detach().clone().requires_grad_(True))
        inputs[f"{prefix}.running_mean"], inputs[f"{prefix}.running_var"] = means[-1], variances[-1]
    training = [(module, module.training) for module in model.modules()]
    try:
        model.eval()  # dropout off
        for layer in layers:
            layer.train()  # the pass below applies only in training mode
        # keep_normalized makes the global pass normalize with explicit torch ops: F.batch_norm's eval
        # path (what the layer uses otherwise) cannot differentiate with respect to running statistics.
        spec = BNPass(mode="global", keep_normalized=True)
        with torch.enable_grad(), run_bn_pass(layers, spec):
            loss = F.cross_entropy(functional_call(model, inputs, (x,)), y)
            grads = torch.autograd.grad(loss, means + variances, allow_unused=True)
    finally:
        for module, flag in training:
            module.training = flag
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, means + variances)]
    return torch.cat(grads[: len(layers)]), torch.cat(grads[len(layers):])


@register_attack("bn-adaptive")
class BNAdaptive(Attack):
    """f copies of mean(H) + t·‖mean(H)‖·u, u the loss-ascent direction of the BN statistics (module docstring).

    min_scale, max_scale, grid, iters, brackets: the line search over t, as the optimal attacks'
    (t in units of ‖mean(H)‖, searched in both directions).
    """

    needs_defense = True
    # A statistics row here is every BN layer's channels concatenated: FedTAN's per-layer exchange never
    # submits one, so the runner refuses this attack on FedTAN's statistics.
    needs_whole_submission = True

    def __init__(self, min_scale: float = 1e-2, max_scale: float = 1e2, grid: int = 17, iters: int = 25,
                 brackets: int = 3):
        set_search_parameters(self, min_scale, max_scale, grid, iters, brackets)
        self._last = None  # (objects, versions, gradients) of the last statistics pass

    # ---------------------------------------------------------------- the direction
    def direction(self, honest: torch.Tensor, context: AttackContext) -> torch.Tensor:
        """The ascent direction [d] in float64 (not normalized; zero when there is none)."""
        if context.channel == "grads":
            return -honest.double().mean(dim=0)
        if context.channel != "stats":
            raise ValueError(f"attack 'bn-adaptive' needs context.channel in {list(CHANNELS)}, "
                             f"got {context.channel!r}")
        if context.field not in ("mean", "var"):
            raise ValueError(f"attack 'bn-adaptive' on the statistics channel needs context.field 'mean' or 'var' "
                             f"(set by attack_stats), got {context.field!r}")
        if context.model is None or context.batches is None or len(context.batches) != 2:
            raise ValueError("attack 'bn-adaptive' on the statistics channel needs context.model (the global model) "
                             "and context.batches (the honest clients' stacked batch (x, y))")
        grad_mean, grad_var = self._gradients(context.model, *context.batches)
        grad = grad_mean if context.field == "mean" else grad_var
        if grad.numel() != honest.shape[1]:
            raise ValueError(f"attack 'bn-adaptive' needs statistics rows of all BN layers concatenated: the model "
                             f"has {grad.numel()} BN channels, the rows have d={honest.shape[1]} (FedTAN's "
                             f"per-layer submissions are not supported)")
        return grad.double().to(honest.device)

    def _gradients(self, model, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        # attack_stats calls the attack once per field on the same model and batch: one pass serves both.
        # A tensor's _version counts its in-place writes, so the server's update of the model invalidates it.
        objects = [model, x, y, *model.parameters(), *model.buffers()]
        versions = [t._version for t in objects[1:]]
        last = self._last
        if (last is not None and len(last[0]) == len(objects) and all(a is b for a, b in zip(last[0], objects))
                and last[1] == versions):
            return last[2]
        grads = running_statistics_gradient(model, x, y)
        self._last = (objects, versions, grads)
        return grads

    # ---------------------------------------------------------------- the rows
    def rows(self, honest, context):
        honest_mean = honest.double().mean(dim=0)
        direction = self.direction(honest, context)
        norm = float(torch.linalg.vector_norm(direction))
        if not (math.isfinite(norm) and norm > 0):  # no ascent direction: the no-op rows
            return repeat_row(honest.mean(dim=0), context.f)
        unit = direction / norm
        length = float(torch.linalg.vector_norm(honest_mean))
        step = unit * (length if math.isfinite(length) and length > 0 else 1.0)

        def along(scale: float) -> float:
            row = (honest_mean + scale * step).to(honest.dtype)
            out = context.defense(torch.cat([honest, repeat_row(row, context.f)]))
            if not isinstance(out, torch.Tensor) or out.shape != (honest.shape[1],):
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"defense must map [n, d] to a tensor of shape [d]={honest.shape[1]}, got {got}")
            value = float(torch.dot(out.double() - honest_mean, unit))
            return -math.inf if math.isnan(value) else value

        scale, _ = bracketed_line_search(along, [], min_scale=self.min_scale, max_scale=self.max_scale,
                                         grid=self.grid, iters=self.iters, brackets=self.brackets)
        return repeat_row((honest_mean + scale * step).to(honest.dtype), context.f)


__all__ = ["CHANNELS", "running_statistics_gradient", "BNAdaptive"]
