"""The engine's public functions: per-sample gradient statistics of every parameter group.

A *layer* (parameter group) is a module's own parameters — conv/linear ``[weight, bias]``,
norm ``[γ, β]``, an attention module's packed ``[in_proj_weight, in_proj_bias]`` — or, for
parameters of the network's root (a ViT's class token), that parameter alone. Its gradient vector is
the concatenation of its parameters; ``std`` is the population standard deviation (ddof = 0) of it,
``mean`` its arithmetic mean. Groups are reported in **forward order** (the order the forward first
reaches them) everywhere: :class:`LayerStats`, :func:`parametrised_layers`, the coverage report.
"""

from __future__ import annotations

import weakref
from typing import Callable, Sequence

import torch
from torch import nn

from gradviz.engine.capture import param_table
from gradviz.engine.gradient_pass import GradientPass, root_of
from gradviz.engine.kernels import fused_kernel, resolve_mode
from gradviz.engine.losses import loss_gradient
from gradviz.engine.plans import Job
from gradviz.engine.reduce import PARTS, STATS, LayerStats, check_stats, finish, rank_one_parts, rescale
from gradviz.errors import GradvizError

__all__ = ["STATS", "LayerStats", "layer_gradient_stats", "layer_sq_l2_norms", "head_gradient_stats",
           "parametrised_layers", "layer_parameters", "FORWARD_BATCH"]

# Largest sub-batch run through one captured forward; bounds the memory of saved activations.
FORWARD_BATCH = 256


def _over_sub_batches(model, x, layers, progress, run: Callable[[GradientPass, Callable | None], tuple]):
    """Run ``run(pass, progress)`` on sub-batches of at most FORWARD_BATCH; concatenates values."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] == 0:
        raise GradvizError("expected a non-empty batch tensor (B, C, H, W)")
    starts = list(range(0, x.shape[0], FORWARD_BATCH))
    results = []
    for i, start in enumerate(starts):
        sub = None
        if progress is not None:  # scale each sub-batch's chunk count to the whole batch
            sub = lambda d, t, i=i: progress(i * t + d, t * len(starts))  # noqa: E731
        gp = GradientPass(model, x[start:start + FORWARD_BATCH], layers)
        results.append(run(gp, sub))
        del gp
    first = results[0]
    return first[:-1] + (torch.cat([r[-1] for r in results], dim=0),)


def layer_gradient_stats(model: nn.Module, x: torch.Tensor, loss: str | Callable = "nll_pred",
                         stats: Sequence[str] = STATS, layers: Sequence[str] | None = None,
                         chunk_mib: float | None = None, progress: Callable[[int, int], None] | None = None,
                         c_kernel: bool | str | None = None) -> LayerStats:
    """Per-sample statistics of ∇_{θ_l} ℓ_b for every parameter group l (Oberdiek et al. 2018).

    ``loss`` names a per-sample loss by its logit gradient (:data:`~gradviz.engine.losses.LOSSES`;
    default the pseudo-label NLL −log p_ŷ) or is a callable ``logits -> ∂ℓ/∂logits``. ``stats`` ⊆
    :data:`STATS`; ``layers`` restricts to some groups (see :func:`parametrised_layers`). Gradients are
    materialised in chunks of at most ``chunk_mib`` MiB (default ``settings().chunk_mib``);
    ``progress(done, total)`` is called after each chunk. ``c_kernel``, the compiled C statistics
    kernel (:mod:`~gradviz.engine.kernels`; not ``torch.compile``): ``"auto"`` (default, ``GRADVIZ_COMPILE``)
    uses it once it is built (in the background), ``"on"``/True builds it now, ``"off"``/False stays eager
    PyTorch; where it cannot be built eager is used.
    Returns :class:`LayerStats` with values (B, L, S) float32, layers in forward order.
    """
    stats = check_stats(stats)
    Job(stats, chunk_mib, c_kernel)  # validate before any forward
    loss_gradient(loss)
    names, numels, values = _over_sub_batches(
        model, x, layers, progress, lambda gp, prog: gp.reduce(loss, layers, Job(stats, chunk_mib, c_kernel), prog))
    return LayerStats(names, stats, values.float(), numels)


def layer_sq_l2_norms(model: nn.Module, x: torch.Tensor, loss: str | Callable = "confounding_sigmoid",
                      layers: Sequence[str] | None = None, chunk_mib: float | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      c_kernel: bool | str | None = None) -> tuple[list[str], torch.Tensor]:
    """(layer names, ‖∇_{θ_l} ℓ_b‖² as (B, L) float32): the fast L2-only path (Lee & AlRegib 2020).

    Per dense layer the fastest of the compiled direct kernel, materialising ∇W_b and the Gram
    ("ghost") norm Σ_{pq}(UᵀU ⊙ ΔᵀΔ)_{pq} is used; rank-one layers use ‖δ‖²(‖a‖² + 1)."""
    Job(None, chunk_mib, c_kernel)
    loss_gradient(loss)
    names, _, values = _over_sub_batches(
        model, x, layers, progress, lambda gp, prog: gp.reduce(loss, layers, Job(None, chunk_mib, c_kernel), prog))
    return names, values.float()


def head_gradient_stats(head: nn.Linear, logits: torch.Tensor, features: torch.Tensor,
                        loss: str | Callable = "nll_pred", stats: Sequence[str] = STATS) -> torch.Tensor:
    """Statistics of the classifier head's per-sample gradient in closed form, (B, S) float32.

    With g = ∂ℓ/∂z and h the head input, ∇[W | b] = g [hᵀ | 1] is rank one:
    L1 = ‖g‖₁(‖h‖₁ + 1), L2 = ‖g‖(‖h‖² + 1)^½, max/min from the extremes of g and h, and the
    mean and std from Σg·(Σh + 1) — no backward pass, only the logits and features of a forward.
    Like the engine, it works on g / max|g| and scales back in float64 (no underflow)."""
    stats = check_stats(stats)
    dloss = loss_gradient(loss)
    with torch.no_grad():
        g = dloss(logits.detach())  # (B, C)
        scale = g.abs().amax(-1)
        scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
        h = features.detach().reshape(features.shape[0], -1).to(g.dtype)  # (B, D)
        bias = head.bias is not None
        kernel = fused_kernel(resolve_mode(None), g.dtype)
        parts = rank_one_parts((g / scale[:, None])[:, None], h[:, None], bias, frozenset(PARTS), kernel)
        numel = head.weight.numel() + (head.bias.numel() if bias else 0)
        return finish([rescale(parts, scale)], [numel], stats)[:, 0].float()


_ORDER: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, list[str]]]" = weakref.WeakKeyDictionary()


def _forward_order(model: nn.Module, x: torch.Tensor | None) -> list[str] | None:
    """Group names in forward order from a one-sample probe (cached per model and parameter set)."""
    key = tuple(id(p) for p in model.parameters())
    cached = _ORDER.get(model)
    if cached is not None and cached[0] == key and x is None:
        return cached[1]
    if x is None:
        card = getattr(model, "card", None)
        if card is None:
            return None
        param = next(model.parameters())
        x = torch.zeros(1, *card.input_size, dtype=param.dtype, device=param.device)
    gp = GradientPass(model, x[:1], fold_bn=False)
    order = list(gp.groups)
    _ORDER[model] = (key, order)
    return order


def layer_parameters(model: nn.Module) -> dict[str, list[tuple[str, torch.Tensor]]]:
    """Every parameter group of ``model``: {group: [(qualified parameter name, parameter)]},
    in registration order (see the module docstring for what a group is)."""
    out: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for ref in {id(r.param): r for r in param_table(root_of(model), None).values()}.values():
        out.setdefault(ref.group, []).append((ref.name, ref.param))
    return out


def parametrised_layers(model: nn.Module, x: torch.Tensor | None = None) -> list[tuple[str, nn.Module]]:
    """(group name, owning module) of every parameter group, in forward order.

    Forward order needs one probe forward: on ``x[:1]``, or, for a GradvizModel, on a blank image of
    its card's input size (cached per model); a bare module without ``x`` is listed in registration
    order. Names are relative to the wrapped network (``model.net`` for a GradvizModel)."""
    refs = {id(r.param): r for r in param_table(root_of(model), None).values()}.values()
    modules: dict[str, nn.Module] = {}
    for ref in refs:
        modules.setdefault(ref.group, ref.module)
    if not modules:
        raise GradvizError("the model has no parameters")
    order = _forward_order(model, x)
    if order is None:
        return list(modules.items())
    return [(n, modules[n]) for n in order if n in modules]
