"""Per-sample parameter gradients that stay differentiable w.r.t. the input (double backprop).

The gradient engine reads per-sample gradients through hooks, which autograd cannot differentiate.
To attribute a gradient score to the pixels, the score's formula is written again with autograd:
``torch.func.vmap(torch.func.grad(loss))`` gives every sample's gradient of its own loss w.r.t. the
chosen parameters in one batched call, and because ``torch.func.grad`` composes with ordinary
autograd, the norm of that gradient can be differentiated w.r.t. ``x`` (a second backward).
Models that ``vmap`` cannot run, and transformers (see :func:`_has_attention`), take one
``torch.autograd.grad(..., create_graph=True)`` per sample instead; attention runs through PyTorch's
"math" kernel, the only one with a second derivative. Nothing is left on the (shared) model: no hook,
no ``.grad``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Callable, cast

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from gradviz.errors import MethodError

if TYPE_CHECKING:
    from gradviz.models import GradvizModel

# a loss of the logits: (z (B, K), label (B,)) -> per-sample loss (B,)
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_ELEMENTS = 2e7  # per-sample gradient entries held at once (chunks of the batch stay below this)


def chosen_parameters(model: nn.Module, layer: str = "all") -> dict[str, torch.Tensor]:
    """{name in the wrapped network: parameter} for ``layer``: "all" (every parameter the engine measures),
    "last" (the classifier head) or a layer (group) name of :func:`gradviz.engine.parametrised_layers`."""
    from gradviz.engine import layer_parameters

    by_id = {id(p): name for name, p in _root(model).named_parameters()}
    if layer == "last":
        chosen: list[torch.Tensor] = list(cast(nn.Module, model.head).parameters(recurse=False))
    else:
        groups = layer_parameters(model)
        if layer != "all" and layer not in groups:
            raise MethodError(f"unknown layer {layer!r}; use 'all', 'last' or one of: {', '.join(groups)}")
        chosen = [p for name in (groups if layer == "all" else [layer]) for _, p in groups[name]]
    return {by_id[id(p)]: p for p in chosen}


def _root(model: nn.Module) -> nn.Module:
    return getattr(model, "net", model)


def _net_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # a GradvizModel normalises, then runs ``net``; functional_call runs ``net`` itself, because the
    # wrapper holds the head twice (``head`` and ``net.<fc>``), a tie functional_call does not restore
    return cast("GradvizModel", model).normalize(x) if hasattr(model, "normalize") and hasattr(model, "net") else x


def per_sample_gradients(model: nn.Module, x: torch.Tensor, loss: Loss, label: torch.Tensor,
                         params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every sample's gradient of ``loss(model(x_b), label_b)`` w.r.t. ``params``, flattened, (B, P),
    with its graph kept: differentiable w.r.t. ``x``."""
    numel = sum(p.numel() for p in params.values())
    chunk = max(1, int(_ELEMENTS // max(numel, 1)))
    net, x = _root(model), _net_input(model, x)
    return torch.cat([_chunk_gradients(net, xc, loss, yc, params)
                      for xc, yc in zip(x.split(chunk), label.split(chunk))])


def _chunk_gradients(model, x, loss, label, params) -> torch.Tensor:
    from torch.func import functional_call, grad, vmap

    def one(p: dict, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return loss(functional_call(model, p, (xb[None],)), yb[None]).sum()

    # attention through the "math" kernel: the fused (flash / memory-efficient) kernels have no second derivative
    with sdpa_kernel([SDPBackend.MATH]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There is a performance drop", category=UserWarning)
        try:
            if not _has_attention(model):
                grads = vmap(grad(one), in_dims=(None, 0, 0))(dict(params), x, label)
                return torch.cat([g.reshape(x.shape[0], -1) for g in grads.values()], 1)
        except (RuntimeError, NotImplementedError):  # an op vmap cannot batch: one backward per sample
            pass
        rows = []
        for xb, yb in zip(x, label):
            gs = torch.autograd.grad(loss(model(xb[None]), yb[None]).sum(), list(params.values()), create_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in gs]))
        return torch.stack(rows)


def _has_attention(model: nn.Module) -> bool:
    # measured on the bundled mnist-vit: the vmapped second derivative through attention differs from finite
    # differences by ~2e-4 (relative) where the per-sample loop agrees to 1e-8, so transformers take the loop
    return any("Attention" in type(m).__name__ for m in model.modules())


def vector_statistic(g: torch.Tensor, stat: str) -> torch.Tensor:
    """One statistic of each row of ``g`` (B, P): l1, l2, max, min, mean or std (population), (B,)."""
    if stat == "l1":
        return g.abs().sum(1)
    if stat == "l2":
        return g.square().sum(1).sqrt()
    if stat == "max":
        return g.amax(1)
    if stat == "min":
        return g.amin(1)
    if stat == "mean":
        return g.mean(1)
    if stat == "std":
        return g.std(1, unbiased=False)
    raise MethodError(f"unknown gradient statistic {stat!r}")
