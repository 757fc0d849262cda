"""Per-sample parameter-gradient statistics of every parametrised layer, for a whole batch.

Oberdiek et al. 2018 (arXiv 1805.08440) and Lee & AlRegib 2020 (arXiv 2008.08030) need, for
each sample b and each layer l, statistics of the per-sample gradient ∇_{θ_l} ℓ_b. A batched
backward only yields the batch *sum* of parameter gradients, so this module never asks
autograd for parameter gradients. Instead (METHODS.md §6):

1. One batched forward with hooks that keep each layer's input a_b and output.
2. ONE ``torch.autograd.grad(logits, [layer outputs], grad_outputs=∂ℓ/∂z)``: in ``eval()``
   mode samples do not interact, so the output gradients δ_b are exact per sample.
3. Per layer, from (a_b, δ_b):
   - Linear, and any conv whose output is 1×1: ∇W_b = δ_b a_bᵀ is rank one, so
     L1 = ‖δ‖₁‖a‖₁, L2 = ‖δ‖‖a‖, max/min = extremes of (δ_max, δ_min)×(a_max, a_min),
     sum = (Σδ)(Σa) — O(O + K) per sample, nothing materialised.
   - Conv2d: ∇W_b = Δ_b U_bᵀ with U_b the unfolded input (K × P) and Δ_b (O × P),
     materialised for a chunk of samples whose size keeps memory under ``chunk_mib`` by one
     grouped-convolution weight backward (samples as groups); all six statistics per chunk,
     the sum from patch sums Σ_p (Σ_o Δ_op)(Σ_k U_kp). The Gram ("ghost") norm
     ‖Δ Uᵀ‖²_F = Σ_{pq} (UᵀU)_{pq} (ΔᵀΔ)_{pq} gives L2 where it is cheaper (few positions P).
   - BatchNorm (eval, running statistics): ∇γ_b = Σ_hw δ_b ⊙ x̂_b, ∇β_b = Σ_hw δ_b.

Conventions (consistent with :func:`parametrised_layers` and the tests' autograd reference):
- a *layer* is a module; its gradient vector is the concatenation of ALL its parameters:
  conv/linear ``[weight, bias]`` (bias included when present), BatchNorm ``[γ, β]``;
- ``std`` is the population standard deviation (ddof = 0) of that vector;
- ``mean`` is its arithmetic mean (Σ entries / number of entries).

Losses are given by their gradient w.r.t. the logits (:data:`LOSSES`), so one engine serves
every method. The model is shared between threads: hooks live only inside ``model.lock``
and are always removed; no ``.grad`` and no ``requires_grad`` change is left behind.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gradviz.config import settings
from gradviz.errors import GradvizError, MethodError

__all__ = [
    "STATS", "LOSSES", "LayerStats", "layer_gradient_stats", "layer_sq_l2_norms", "parametrised_layers",
]

STATS: tuple[str, ...] = ("l1", "l2", "max", "min", "mean", "std")

# Largest sub-batch run through one hooked forward; bounds the memory of saved activations.
FORWARD_BATCH = 256


def _nll_pred(z: torch.Tensor) -> torch.Tensor:
    """∂/∂z of −log softmax(z)_ŷ with ŷ = argmax z: p − onehot(ŷ)."""
    p = z.softmax(-1)
    return p - F.one_hot(z.argmax(-1), z.shape[-1]).to(p.dtype)


def _confounding_sigmoid(z: torch.Tensor) -> torch.Tensor:
    """∂/∂z of −Σ_c log σ(z_c) (BCE against the all-ones label): σ(z) − 1."""
    return torch.sigmoid(z) - 1.0


def _confounding_softmax(z: torch.Tensor) -> torch.Tensor:
    """∂/∂z of −Σ_c log softmax(z)_c (all-ones label on softmax outputs): C·p − 1."""
    return z.shape[-1] * z.softmax(-1) - 1.0


LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "nll_pred": _nll_pred,
    "confounding_sigmoid": _confounding_sigmoid,
    "confounding_softmax": _confounding_softmax,
}


@dataclass
class LayerStats:
    """Per-sample gradient statistics: ``values[b, l, s]`` = statistic ``stats[s]`` of layer ``layers[l]``."""

    layers: list[str]  # qualified module names, forward order
    stats: tuple[str, ...]
    values: torch.Tensor  # (B, L, S) float32
    numels: list[int] = field(default_factory=list)  # entries of each layer's gradient vector

    def get(self, stat: str, layers: Sequence[str] | None = None) -> torch.Tensor:
        """Values of one statistic, (B, L) for ``layers`` (default: all, in order)."""
        if stat not in self.stats:
            raise MethodError(f"statistic {stat!r} was not computed; available: {', '.join(self.stats)}")
        cols = self._layer_index(layers)
        return self.values[:, cols, self.stats.index(stat)]

    def to_frame(self):
        """Wide table: one row per sample, columns MultiIndex (layer, stat)."""
        import pandas as pd

        b, n_layers, n_stats = self.values.shape
        columns = pd.MultiIndex.from_product([self.layers, list(self.stats)], names=["layer", "stat"])
        return pd.DataFrame(self.values.reshape(b, n_layers * n_stats).double().cpu().numpy(), columns=columns)

    def _layer_index(self, layers: Sequence[str] | None) -> list[int]:
        if layers is None:
            return list(range(len(self.layers)))
        unknown = [n for n in layers if n not in self.layers]
        if unknown:
            raise MethodError(f"unknown layer(s) {unknown}; known: {', '.join(self.layers)}")
        return [self.layers.index(n) for n in layers]


# --------------------------------------------------------------------------------------------
# Layers


_SUPPORTED = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)


def _root(model: nn.Module) -> nn.Module:
    """The wrapped network (names without the ``net.`` prefix) for a GradvizModel."""
    net = getattr(model, "net", None)
    return net if isinstance(net, nn.Module) else model


def parametrised_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every Conv2d, Linear and affine BatchNorm, in registration order.

    Names are relative to the wrapped network (``model.net`` for a GradvizModel). Modules of
    other types that hold parameters are not covered by the engine.
    """
    out = []
    for name, m in _root(model).named_modules():
        if isinstance(m, _SUPPORTED) and any(True for _ in m.parameters(recurse=False)):
            out.append((name, m))
    return out


def _resolve_layers(model: nn.Module, layers: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    all_layers = parametrised_layers(model)
    if not all_layers:
        raise GradvizError("the model has no Conv2d, Linear or BatchNorm layer with parameters")
    if layers is None:
        return all_layers
    if isinstance(layers, str):
        layers = [layers]
    by_name = dict(all_layers)
    unknown = [n for n in layers if n not in by_name]
    if unknown:
        raise MethodError(f"unknown layer(s) {unknown}; parametrised layers: {', '.join(by_name)}")
    return [(n, by_name[n]) for n in dict.fromkeys(layers)]


def _check_model(model: nn.Module, chosen: list[tuple[str, nn.Module]]) -> None:
    if model.training:
        raise GradvizError("per-sample gradients need the model in eval() mode (BatchNorm mixes samples in train mode)")
    for name, m in chosen:
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None:
            raise GradvizError(f"BatchNorm {name!r} has no running statistics: samples interact, per-sample gradients are undefined")
    if any(not p.requires_grad for _, m in chosen for p in m.parameters(recurse=False)):
        raise GradvizError("some layer parameters have requires_grad=False; gradviz models keep them True")


# --------------------------------------------------------------------------------------------
# Hooked forward + one backward


@dataclass
class _Captured:
    name: str
    module: nn.Module
    inp: torch.Tensor | None = None
    out: torch.Tensor | None = None
    inp_version: int = 0
    calls: int = 0


@contextmanager
def _hooked(model: nn.Module, chosen: list[tuple[str, nn.Module]], head: nn.Module | None,
            clone_inputs: bool) -> Iterator[list[_Captured]]:
    """Forward hooks keeping each chosen layer's input and output (in forward order).

    The hook returns a *clone* of the output, so in-place ops downstream (ReLU(inplace), ``+=``)
    modify the clone and the kept tensor stays the layer's true output for ``autograd.grad``.
    The head is not cloned: its output is usually the logits, whose gradient is known.
    """
    order: list[_Captured] = []
    handles = []

    def make_hook(cap: _Captured):
        def hook(module, args, output):
            cap.calls += 1
            if cap.calls > 1:
                return None
            x = args[0]
            cap.inp = x.detach().clone() if clone_inputs else x.detach()
            cap.inp_version = x._version
            cap.out = output
            order.append(cap)
            if module is head:
                return None
            return output.clone()
        return hook

    with model.lock if hasattr(model, "lock") else nullcontext():
        try:
            for name, m in chosen:
                handles.append(m.register_forward_hook(make_hook(_Captured(name, m))))
            yield order
        finally:
            for h in handles:
                h.remove()


def _forward_backward(model: nn.Module, x: torch.Tensor, chosen, dloss: Callable) -> list[tuple[_Captured, torch.Tensor]]:
    """Hooked forward, then one ``autograd.grad`` to the layer outputs: [(capture, δ (B, ...))]."""
    head = getattr(model, "head", None)
    for clone_inputs in (False, True):
        with torch.enable_grad(), _hooked(model, chosen, head, clone_inputs) as order:
            logits = model(x)
        if any(c.calls > 1 for c in order):
            reused = [c.name for c in order if c.calls > 1]
            raise GradvizError(f"layer(s) {reused} run more than once per forward (weight sharing) — not supported")
        # An input modified in place after the layer ran (rare) would give wrong statistics:
        # rerun keeping copies of the inputs.
        if clone_inputs or all(c.inp._version == c.inp_version for c in order):
            break
    dlogits = dloss(logits.detach())  # (B, C)
    targets = [c for c in order if c.out is not logits]
    grads: list[torch.Tensor | None] = []
    if targets:
        grads = list(torch.autograd.grad(logits, [c.out for c in targets], grad_outputs=dlogits, allow_unused=True))
    by_id = {id(c): g for c, g in zip(targets, grads)}
    result = []
    for c in order:
        g = dlogits if c.out is logits else by_id[id(c)]
        if g is None:
            g = torch.zeros_like(c.out)
        result.append((c, g.detach()))
    return result


# --------------------------------------------------------------------------------------------
# Per-layer statistics from (input, output gradient)

# Partial sums kept per (sample, layer) so chunks, groups and bias combine exactly:
# s1 = Σ|g|, s2 = Σg², mx, mn, sm = Σg.
_PARTS = ("s1", "s2", "mx", "mn", "sm")


def _parts_of(g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Partial sums of a materialised per-sample gradient, (b, ...) -> five (b,) tensors."""
    g = g.reshape(g.shape[0], -1)
    mn, mx = torch.aminmax(g, dim=1)
    l2 = torch.linalg.vector_norm(g, 2, dim=1)
    return {"s1": torch.linalg.vector_norm(g, 1, dim=1), "s2": l2 * l2, "mx": mx, "mn": mn, "sm": g.sum(1)}


def _merge(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    return {"s1": a["s1"] + b["s1"], "s2": a["s2"] + b["s2"], "mx": torch.maximum(a["mx"], b["mx"]),
            "mn": torch.minimum(a["mn"], b["mn"]), "sm": a["sm"] + b["sm"]}


def _rank_one_parts(d: torch.Tensor, a: torch.Tensor, bias: bool) -> dict[str, torch.Tensor]:
    """Partial sums of [δ aᵀ | δ] per sample and group without materialising: d (b,g,O), a (b,g,K)."""
    if bias:  # the bias gradient is δ·1: append a constant-1 input feature
        a = torch.cat([a, a.new_ones(a.shape[:-1] + (1,))], dim=-1)
    d_min, d_max = torch.aminmax(d, dim=-1)
    a_min, a_max = torch.aminmax(a, dim=-1)
    prods = torch.stack([d_max * a_max, d_max * a_min, d_min * a_max, d_min * a_min], dim=-1)  # (b,g,4)
    d1, a1 = d.abs().sum(-1), a.abs().sum(-1)
    d2, a2 = (d * d).sum(-1), (a * a).sum(-1)
    return {"s1": (d1 * a1).sum(1), "s2": (d2 * a2).sum(1), "mx": prods.amax(-1).amax(1), "mn": prods.amin(-1).amin(1),
            "sm": (d.sum(-1) * a.sum(-1)).sum(1)}


class _LayerKernel:
    """How one layer's per-sample gradient is formed from its input and output gradient."""

    def __init__(self, name: str, module: nn.Module, inp: torch.Tensor, grad: torch.Tensor) -> None:
        self.name, self.module, self.inp, self.grad = name, module, inp, grad
        m = module
        self.batch = inp.shape[0]
        self.es = max(inp.element_size(), 4)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            self.kind = "bn"
            self.numel = sum(p.numel() for p in m.parameters(recurse=False))
            self.per_sample_bytes = 3 * inp[0].numel() * self.es
            return
        self.bias = getattr(m, "bias", None) is not None
        if isinstance(m, nn.Linear):
            self.groups, out_f, in_f = 1, m.out_features, m.in_features
            self.positions = inp[0].numel() // in_f
        else:
            self.groups = m.groups
            out_f, in_f = m.out_channels, m.weight[0].numel() * m.groups
            self.positions = grad[0, 0].numel()
        self.o, self.k = out_f, in_f  # k = input features of all groups (Cin·kh·kw)
        og, kg, g, p = out_f // self.groups, in_f // self.groups, self.groups, self.positions
        self.numel = out_f * kg + (out_f if self.bias else 0)
        self.kind = "rank1" if p == 1 else "dense"
        # bytes per sample: materialised gradient (+ a temporary) + padded input copy; Gram: unfold + 2 P×P
        self.dense_bytes = (2 * g * og * kg + inp[0].numel()) * self.es
        self.gram_bytes = (in_f * p + 3 * g * p * p) * self.es
        self.dense_flops = g * og * kg * p
        self.gram_flops = g * p * p * (og + kg + 1)
        # the six-statistics path also unfolds when it takes ‖∇W‖² from the Gram form (few positions)
        self.gram_in_parts = self.gram_flops < og * self.k
        self.per_sample_bytes = self.dense_bytes + (self.gram_bytes if self.gram_in_parts else 0)

    def chunk_size(self, budget_bytes: float, l2_only: bool) -> int:
        if self.kind == "rank1":
            return self.batch
        per = self.gram_bytes if (l2_only and self.use_gram()) else self.per_sample_bytes
        return max(1, min(self.batch, int(budget_bytes // max(per, 1))))

    def use_gram(self) -> bool:
        return self.kind == "dense" and self.gram_flops < self.dense_flops

    def operands(self, sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(U (b, g, Kg, P), Δ (b, g, Og, P)) for samples ``sl``."""
        m, x, d = self.module, self.inp[sl], self.grad[sl]
        b, g, p = x.shape[0], self.groups, self.positions
        if isinstance(m, nn.Linear):
            u = x.reshape(b, p, self.k).transpose(1, 2).unsqueeze(1)
            dl = d.reshape(b, p, self.o).transpose(1, 2).unsqueeze(1)
            return u, dl
        x, padding = self._padded(x)
        u = _unfold(x, m.kernel_size, m.dilation, padding, m.stride)  # (b, Cin·kh·kw, P)
        return u.view(b, g, self.k // g, p), d.reshape(b, g, self.o // g, p)

    def parts(self, sl: slice) -> dict[str, torch.Tensor]:
        """Partial sums of the per-sample gradient vector for samples ``sl``."""
        if self.kind == "bn":
            vec = self._bn_grad(sl)
            return _parts_of(vec)
        if self.kind == "rank1":
            u, d = self.operands(sl)
            return _rank_one_parts(d[..., 0], u[..., 0], self.bias)
        grad_w, d = self.dense_grads(sl)  # (b, g, Og, Kg), (b, g, Og, P)
        parts = self._dense_parts(sl, grad_w, d)
        if self.bias:
            parts = _merge(parts, _parts_of(d.sum(-1)))
        return parts

    def _dense_parts(self, sl: slice, grad_w: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
        """Partial sums of materialised weight gradients with as few passes over them as possible.

        Each pass over (b, O, K) is memory-bound, so two of the five come from factorised forms:
        Σ_{ok} (ΔUᵀ)_{ok} = Σ_p (Σ_o Δ_op)(Σ_k U_kp), the patch sums Σ_k U_kp being a ones-kernel
        convolution; and ‖ΔUᵀ‖²_F by the Gram norm where positions are few (cheap).
        """
        b = grad_w.shape[0]
        flat = grad_w.reshape(b, -1)
        mn, mx = torch.aminmax(flat, dim=1)
        parts = {"s1": torch.linalg.vector_norm(flat, 1, dim=1), "mx": mx, "mn": mn}
        if self.gram_in_parts:
            u, _ = self.operands(sl)
            parts["s2"] = (torch.matmul(u.transpose(-1, -2), u) * torch.matmul(d.transpose(-1, -2), d)).sum((1, 2, 3))
        else:
            parts["s2"] = torch.linalg.vector_norm(flat, 2, dim=1).square()
        if isinstance(self.module, nn.Conv2d):
            parts["sm"] = (d.sum(2) * self._patch_sums(sl)).sum((1, 2))
        else:
            parts["sm"] = flat.sum(1)
        return parts

    def _patch_sums(self, sl: slice) -> torch.Tensor:
        """Σ_k U_kp per sample, group and output position: (b, g, P), by a ones-kernel convolution."""
        m, x = self.module, self.inp[sl]
        b, g = x.shape[0], self.groups
        x, padding = self._padded(x)
        xs = x.reshape(b * g, x.shape[1] // g, *x.shape[2:]).sum(1, keepdim=True)
        ones = x.new_ones(1, 1, *m.kernel_size)
        out = F.conv2d(xs, ones, stride=m.stride, padding=padding, dilation=m.dilation)
        return out.reshape(b, g, self.positions)

    def dense_grads(self, sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-sample weight gradients (b, g, Og, Kg), Δ (b, g, Og, P)) for samples ``sl``.

        Conv: the weight-backward of a grouped convolution with the b samples as b·groups
        groups, (1, b·Cin, H, W) ⋆ (1, b·O, Ho, Wo) -> (b·O, Cin/g, kh, kw); much faster on CPU
        than unfold + batched matmul (im2col dominates), same result.
        """
        m = self.module
        if isinstance(m, nn.Linear):
            u, d = self.operands(sl)
            return torch.matmul(d, u.transpose(-1, -2)), d
        x, d = self.inp[sl], self.grad[sl]
        b, g = x.shape[0], self.groups
        x, padding = self._padded(x)
        weight = m.weight.detach()
        shape_only = weight.new_empty(1).expand(b * weight.shape[0], *weight.shape[1:])  # no copy: only its shape is read
        grad_w = torch.ops.aten.convolution_backward(
            d.reshape(1, b * self.o, *d.shape[2:]), x.reshape(1, -1, *x.shape[2:]), shape_only, None,
            list(m.stride), list(padding), list(m.dilation), False, [0] * len(m.stride), b * g, [False, True, False],
        )[1]
        return grad_w.view(b, g, self.o // g, self.k // g), d.reshape(b, g, self.o // g, self.positions)

    def _padded(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Input padded by hand for non-zero padding modes and 'same'/'valid' strings."""
        m = self.module
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
            return F.pad(x, m._reversed_padding_repeated_twice, mode=mode), (0,) * len(m.kernel_size)
        return x, tuple(m.padding)

    def sq_l2(self, sl: slice) -> torch.Tensor:
        """‖∇θ ℓ_b‖² for samples ``sl`` (Gram norm where cheaper than materialising)."""
        if self.kind == "bn":
            return self._bn_grad(sl).square().sum(1)
        if self.kind == "rank1":
            u, d = self.operands(sl)
            d0, u0 = d[..., 0], u[..., 0]
            return ((d0 * d0).sum(-1) * ((u0 * u0).sum(-1) + (1.0 if self.bias else 0.0))).sum(1)
        if self.use_gram():
            u, d = self.operands(sl)
            gu = torch.matmul(u.transpose(-1, -2), u)  # (b, g, P, P)
            gd = torch.matmul(d.transpose(-1, -2), d)
            out = (gu * gd).sum((1, 2, 3))
        else:
            grad_w, d = self.dense_grads(sl)
            out = grad_w.square().sum((1, 2, 3))
        if self.bias:
            out = out + d.sum(-1).square().sum((1, 2))
        return out

    def _bn_grad(self, sl: slice) -> torch.Tensor:
        """[∇γ, ∇β] per sample, (b, 2C) (or the one that exists)."""
        m, x, d = self.module, self.inp[sl], self.grad[sl]
        b, c = x.shape[0], x.shape[1]
        x, d = x.reshape(b, c, -1), d.reshape(b, c, -1)
        pieces = []
        if m.weight is not None:
            xhat = (x - m.running_mean.view(1, c, 1)) * torch.rsqrt(m.running_var.view(1, c, 1) + m.eps)
            pieces.append((d * xhat).sum(-1))
        if m.bias is not None:
            pieces.append(d.sum(-1))
        return torch.cat(pieces, dim=1)


def _unfold(x: torch.Tensor, kernel, dilation, padding, stride) -> torch.Tensor:
    """``F.unfold`` from kh·kw strided slices (aten's CPU im2col is far slower): (b, C·kh·kw, P)."""
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else x
    (kh, kw), (dh, dw), (sh, sw) = kernel, dilation, stride
    ho = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
    cols = [x[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
            for i in range(kh) for j in range(kw)]
    return torch.stack(cols, dim=2).reshape(x.shape[0], -1, ho * wo)


def _finish(parts: dict[str, torch.Tensor], n: int, stats: Sequence[str]) -> torch.Tensor:
    """(b, S) statistics from partial sums over n entries (combined in float64)."""
    p = {k: v.double() for k, v in parts.items()}
    mean = p["sm"] / n
    cols = {
        "l1": p["s1"], "l2": p["s2"].clamp_min(0).sqrt(), "max": p["mx"], "min": p["mn"], "mean": mean,
        "std": (p["s2"] / n - mean * mean).clamp_min(0).sqrt(),
    }
    return torch.stack([cols[s] for s in stats], dim=1)


# --------------------------------------------------------------------------------------------
# Public API


def _prepare(model, x, loss, layers):
    dloss = LOSSES.get(loss) if isinstance(loss, str) else loss
    if dloss is None:
        raise MethodError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] == 0:
        raise GradvizError("expected a non-empty batch tensor (B, C, H, W)")
    chosen = _resolve_layers(model, layers)
    _check_model(model, chosen)
    param = next(model.parameters())
    x = x.to(device=param.device, dtype=param.dtype)
    return dloss, chosen, x


def _budget(chunk_mib: float | None) -> float:
    mib = settings().chunk_mib if chunk_mib is None else float(chunk_mib)
    if not mib > 0:
        raise GradvizError(f"chunk_mib must be positive, got {chunk_mib}")
    return mib * 2**20


def _run(model, x, loss, layers, chunk_mib, progress, per_layer: Callable, l2_only: bool):
    """Shared driver: sub-batches -> hooked forward/backward -> per-layer chunked reductions."""
    dloss, chosen, x = _prepare(model, x, loss, layers)
    budget = _budget(chunk_mib)
    names: list[str] | None = None
    numels: list[int] = []
    rows = []
    sub_batches = list(range(0, x.shape[0], FORWARD_BATCH))
    done, total = 0, None
    for start in sub_batches:
        xb = x[start:start + FORWARD_BATCH]
        pairs = _forward_backward(model, xb, chosen, dloss)
        kernels = [_LayerKernel(c.name, c.module, c.inp, g) for c, g in pairs]
        if names is None:
            names = [k.name for k in kernels]
            numels = [k.numel for k in kernels]
        plan = []
        for k in kernels:
            step = k.chunk_size(budget, l2_only)
            plan.append([slice(i, i + step) for i in range(0, k.batch, step)])
        if total is None:  # estimated from the first sub-batch
            total = sum(len(p) for p in plan) * len(sub_batches)
        cols = []
        with torch.no_grad():
            for k, slices in zip(kernels, plan):
                pieces = []
                for sl in slices:
                    pieces.append(per_layer(k, sl))
                    done += 1
                    if progress is not None:
                        progress(done, total)
                cols.append(torch.cat(pieces, dim=0))
        rows.append(torch.stack(cols, dim=1))  # (b, L, ...)
        del pairs, kernels
    return names or [], numels, torch.cat(rows, dim=0)


def layer_gradient_stats(model: nn.Module, x: torch.Tensor, loss: str | Callable = "nll_pred",
                         stats: Sequence[str] = STATS, layers: Sequence[str] | None = None,
                         chunk_mib: float | None = None, progress: Callable[[int, int], None] | None = None,
                         compile: bool | None = None) -> LayerStats:
    """Per-sample statistics of ∇_{θ_l} ℓ_b for every parametrised layer l (Oberdiek et al. 2018).

    ``loss`` names a per-sample loss by its logit gradient (:data:`LOSSES`; default the
    pseudo-label NLL −log p_ŷ) or is a callable ``logits -> ∂ℓ/∂logits``. ``stats`` ⊆
    :data:`STATS`; ``layers`` restricts to some qualified names (see :func:`parametrised_layers`).
    Conv gradients are materialised in chunks of at most ``chunk_mib`` MiB (default
    ``settings().chunk_mib``); ``progress(done, total)`` is called after each chunk.
    ``compile`` is accepted for API stability and ignored: the eager path is used
    (no torch.compile fast path yet; see benchmarks/README.md).
    Returns :class:`LayerStats` with values (B, L, S) float32, layers in forward order.
    """
    stats = tuple(stats)
    bad = [s for s in stats if s not in STATS]
    if bad or not stats:
        raise MethodError(f"unknown statistic(s) {bad}; choose from {', '.join(STATS)}")

    def per_layer(k: _LayerKernel, sl: slice) -> torch.Tensor:
        return _finish(k.parts(sl), k.numel, stats)

    names, numels, values = _run(model, x, loss, layers, chunk_mib, progress, per_layer, l2_only=False)
    return LayerStats(names, stats, values.float(), numels)


def layer_sq_l2_norms(model: nn.Module, x: torch.Tensor, loss: str | Callable = "confounding_sigmoid",
                      layers: Sequence[str] | None = None, chunk_mib: float | None = None,
                      progress: Callable[[int, int], None] | None = None) -> tuple[list[str], torch.Tensor]:
    """(layer names, ‖∇_{θ_l} ℓ_b‖² as (B, L) float32): the fast L2-only path (Lee & AlRegib 2020).

    Per conv layer the cheaper of materialising ∇W_b and the Gram ("ghost") norm
    Σ_{pq}(UᵀU ⊙ ΔᵀΔ)_{pq} is used; Linear layers and 1×1-output convs use ‖δ‖²(‖a‖² + 1).
    """
    def per_layer(k: _LayerKernel, sl: slice) -> torch.Tensor:
        return k.sq_l2(sl).double()

    names, _, values = _run(model, x, loss, layers, chunk_mib, progress, per_layer, l2_only=True)
    return names, values.float()
