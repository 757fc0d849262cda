"""GAIA — Chen et al., "GAIA: Delving into Gradient-based Attribution Abnormality for
Out-of-distribution Detection", NeurIPS 2023.

Both variants read *feature-map* gradients at hooked layers (BatchNorm outputs), one batched
backward each; in eval mode samples do not interact, so every per-sample map gradient is exact.

GAIA-Z (zero-deflation): backpropagate s = Σ_b max_c z_{b,c}. At each hooked map A^l take
G = ∂s/∂A^l and per channel the fraction of non-zero entries r_k = mean_{h,w} 1[G_{k,h,w} ≠ 0].
Concatenate the channels of every hooked layer; uncertainty = mean_k r_k² (OOD inputs
"deflate" the zeros that ReLU masks leave in ID gradients).

GAIA-A (channel-wise average abnormality): inner part a_k = mean_{h,w} ∂L_in/∂A^l_{k,h,w} with
L_in = Σ_b Σ_d h_{b,d} (sum of the pooled penultimate features, the head's input). Output
part o = sqrt(mean_d |ḡ_d|) with ḡ the spatially averaged gradient of Σ_c log p_c at the last
feature map, in closed form ḡ = Wᵀ(1 − C·p)/(H·W) (W the head's weight, global average
pooling assumed). Uncertainty = mean_k (|a_k| / o)² over the hooked channels.

Hooked layers (``layers``): ``"all"`` = every BatchNorm layer (GAIA-Z default), ``"auto"`` =
the BatchNorm layers whose output spatial size is one of the last two distinct sizes seen
among BatchNorm outputs in forward order — the last two "stages" of a ResNet (GAIA-A
default) — or a comma-separated list of module names (as in ``model.net.named_modules()``).
A module called several times in one forward keeps its last output. H·W of the last feature
map is taken from the spatial size of the last hooked map in forward order (the final feature
map in ResNets).

**Beyond BatchNorm (a gradviz extension, not in the paper).** Models without BatchNorm (vision
transformers, ConvNeXt, Swin) hook the outputs of their LayerNorm / GroupNorm layers instead. A
LayerNorm output (B, T, D) — a ViT's tokens, or a channels-last (B, H, W, C) map — is read with
the positions (tokens, pixels) as the spatial axes and its last dimension as the channels; a
GroupNorm output like a BatchNorm's. "auto" then keeps the maps in the last two distinct position
shapes (a Swin's or ConvNeXt's last two stages; every norm of a ViT, whose tokens never change),
and H·W in GAIA-A's output part is the number of positions of the last map (the ViT's token count:
its class-token features see 1/T of that map's average gradient). For BatchNorm models the maps,
the selection and the numbers are exactly the paper's.

In-place operations: stock torchvision ResNets apply ``ReLU(inplace=True)`` and
``out += identity`` directly to BN outputs, which would turn the captured tensor into the
ReLU/sum output (a different gradient). The forward hook therefore returns ``out.clone()``:
the clone replaces the module's output, the in-place ops modify the clone, and the captured
tensor stays the true BN output with the true gradient; the engine's capture keeps each output
as produced in the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, cast

import torch
import torch.nn.functional as F
from torch import nn

from gradviz.errors import MethodError
from gradviz.engine import GradientPass
from gradviz.methods.registry import ModelOutputs, not_differentiable, register
from gradviz.models import GradvizModel
from gradviz.models.hooks import forward_hooks

__all__ = ["gaia_z", "gaia_a", "gaia_abnormality_map", "hooked_maps"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_OTHER_NORMS = (nn.LayerNorm, nn.GroupNorm)


def _resolve_layers(model: GradvizModel, layers) -> tuple[list[tuple[str, nn.Module]], str]:
    """Modules to hook and the selection rule ("all" | "auto" | "names")."""
    named = [(n, m) for n, m in model.net.named_modules() if n]
    if layers is None or layers in ("all", "auto"):
        norms: list[tuple[str, nn.Module]] = [(n, m) for n, m in named if isinstance(m, _BN)] or \
            [(n, m) for n, m in named if isinstance(m, _OTHER_NORMS)]
        if not norms:
            raise MethodError("GAIA hooks normalisation outputs (BatchNorm, else LayerNorm/GroupNorm), but this model "
                              "has none; pass layers='name1,name2' (see model.net.named_modules())")
        return norms, layers or "all"
    names = [s.strip().removeprefix("net.") for s in (layers.split(",") if isinstance(layers, str) else layers)]
    names = [n for n in names if n]
    lookup = dict(named)
    unknown = [n for n in names if n not in lookup]
    if unknown or not names:
        raise MethodError(f"GAIA: unknown layer(s) {unknown or names}; e.g. {', '.join(list(lookup)[:6])}")
    return [(n, lookup[n]) for n in names], "names"


def hooked_maps(model: GradvizModel, x: torch.Tensor, layers=None):
    """One forward with hooks: (logits (B, K), {name: map} in forward order, head input h (B, D)).

    The maps and ``h`` are part of the autograd graph (for ``torch.autograd.grad``). Hooks live in a
    :func:`~gradviz.models.hooks.forward_hooks` block (under ``model.lock``, always removed).
    """
    modules, rule = _resolve_layers(model, layers)
    maps: dict[str, torch.Tensor] = {}
    store: dict[str, Any] = {}  # head input "h", {name: channel last} "last_channel", "last_hw"

    def make_hook(name: str, module: nn.Module):
        def hook(_module, _inputs, out):
            if not isinstance(out, torch.Tensor) or out.dim() < 3:
                raise MethodError(f"GAIA: layer {name!r} does not output a feature map (B, C, H, W) "
                                  "or tokens (B, T, D)")
            maps.pop(name, None)  # keep forward order of the last call
            maps[name] = out
            store.setdefault("last_channel", {})[name] = _channel_last(module, out)
            return out.clone()  # in-place ops downstream hit the clone, not the captured map
        return hook

    def head_hook(_module, args):
        store["h"] = args[0]

    x_in = x.detach().clone().requires_grad_(True)  # ensures a graph even if parameters were frozen
    with forward_hooks(model, {module: make_hook(name, module) for name, module in modules}, {model.head: head_hook}):
        with torch.enable_grad():
            logits = model(x_in)
    if not maps:
        raise MethodError("GAIA: no hooked layer ran in the forward pass")
    last = store["last_channel"]
    shapes = [_positions(m, last[n], x.shape[0]) for n, m in maps.items()]
    store["last_hw"] = shapes[-1]  # last map in forward order
    if rule == "auto":
        keep = _last_two_stages(shapes)
        maps = {n: m for i, (n, m) in enumerate(maps.items()) if i in keep}
    return logits, maps, store


def _channel_last(module: nn.Module, out: torch.Tensor) -> bool:
    """Whether a norm module's output holds its channels last (LayerNorm over tokens or channels-last
    maps) or in dimension 1 (BatchNorm, GroupNorm, a LayerNorm2d that permutes back)."""
    if isinstance(module, nn.LayerNorm):
        return out.shape[-1] == module.normalized_shape[-1] and not (
            out.dim() == 4 and out.shape[1] == module.normalized_shape[-1] and out.shape[-1] != out.shape[1])
    return False


def _positions(m: torch.Tensor, channel_last: bool, batch: int) -> tuple[int, ...]:
    """The positions' shape of one sample's map: (H, W) of a (B, C, H, W) map, else the dimensions
    between the samples and the channels (a sample's tokens)."""
    if not channel_last:
        return tuple(m.shape[2:])
    return (m.numel() // (batch * m.shape[-1]),)


def _per_channel(g: torch.Tensor, channel_last: bool, batch: int, fn: Callable[[torch.Tensor], torch.Tensor]
                 ) -> torch.Tensor:
    """``fn`` over the positions of every (sample, channel) of a map gradient: (B, C). A
    (B, C, H, W) map is reduced over its last two dimensions exactly as the paper's code does."""
    if not channel_last:
        return fn(g if g.dim() == 4 else g.reshape(g.shape[0], g.shape[1], -1, 1))
    c = g.shape[-1]
    return fn(g.reshape(batch, -1, c).transpose(1, 2).unsqueeze(-1))


@dataclass
class _Maps:
    """Hooked feature maps of one forward and how to differentiate a root w.r.t. them."""

    logits: torch.Tensor  # (B, K), in the graph
    h: torch.Tensor  # (B, D) head input, in the graph
    names: list[str]  # hooked maps, forward order
    last_hw: tuple[int, ...]  # the last map's positions (H, W), or (T,) for tokens
    # (root, d root, reduce) -> [reduce(∂root/∂map)] per map, forward order
    grads: Callable[[torch.Tensor, torch.Tensor | None, Callable], list[torch.Tensor]]


def _last_two_stages(sizes: list[tuple[int, ...]]) -> list[int]:
    """Indices of the maps whose spatial size is one of the last two distinct sizes (the "auto" rule)."""
    distinct = list(dict.fromkeys(sizes))
    return [i for i, hw in enumerate(sizes) if hw in distinct[-2:]]


def _maps(model: GradvizModel, x: torch.Tensor, layers, gp: GradientPass | None) -> _Maps:
    """The selected hooked maps (from the batch's shared gradient pass when it covers them).

    Only the selected maps are differentiated, so the backward stops at the earliest of them: the
    "auto" rule's last two stages cost a fraction of a full backward."""
    rule = "all" if layers is None else layers
    batch = x.shape[0]
    uses = None
    features = gp.features if gp is not None else None
    if gp is not None and rule in ("all", "auto"):
        norms = gp.norm_uses()
        uses = [u for u in norms if u.op == "batch_norm" and u.out.dim() == 4] or \
            [u for u in norms if u.op in ("layer_norm", "group_norm")]
        groups = [u.group for u in uses]
        if not uses or len(set(groups)) < len(groups) or features is None:
            uses = None  # a norm run twice (or none captured): GAIA's own hooks keep the last call
    if gp is not None and features is not None and uses is not None:
        last = {u.index: u.op == "layer_norm" for u in uses}
        shapes = [_positions(u.out, last[u.index], batch) for u in uses]
        last_hw = shapes[-1]
        if rule == "auto":
            uses = [uses[i] for i in _last_two_stages(shapes)]
        names = [cast(str, u.group) for u in uses]  # every use has its group once the forward ran
        return _Maps(gp.logits, features, names, last_hw,
                     lambda root, grad, reduce: gp.output_grads(
                         root, grad, uses, each=lambda u, g: _per_channel(g, last[u.index], batch, reduce))[0])
    logits, maps, store = hooked_maps(model, x, layers if rule not in ("all", "auto") else rule)
    tensors, names = list(maps.values()), list(maps)
    last = store["last_channel"]

    def grads(root, grad, reduce):
        with torch.enable_grad():
            got = torch.autograd.grad(root, tensors, grad_outputs=grad, allow_unused=True, retain_graph=True)
        return [_per_channel(torch.zeros_like(t) if g is None else g, last[n], batch, reduce)
                for n, t, g in zip(names, tensors, got)]

    return _Maps(logits, store["h"], names, store["last_hw"], grads)


def gaia_z_channels(model: GradvizModel, x: torch.Tensor, layers=None,
                    gp: GradientPass | None = None) -> dict[str, torch.Tensor]:
    """GAIA-Z per-channel fraction of non-zero gradient entries r_k, {layer: (B, channels)}."""
    src = _maps(model, x, layers, gp)
    z = src.logits.detach()
    onehot = F.one_hot(z.argmax(-1), z.shape[-1]).to(z.dtype)  # ∂(Σ_b max_c z_bc)/∂z
    fractions = src.grads(src.logits, onehot, lambda g: (g != 0).float().mean(dim=(-2, -1)))  # (B, C) per map
    return {name: f.detach() for name, f in zip(src.names, fractions)}


def gaia_a_channels(model: GradvizModel, x: torch.Tensor, layers="auto",
                    gp: GradientPass | None = None) -> dict[str, torch.Tensor]:
    """GAIA-A per-channel normalised average gradient a_k / o, {layer: (B, channels)}."""
    src = _maps(model, x, layers, gp)
    means = src.grads(src.h, torch.ones_like(src.h), lambda g: g.mean(dim=(-2, -1)))  # L_in = Σ_b Σ_d h_bd
    with torch.no_grad():
        p = src.logits.detach().softmax(-1)  # (B, K)
        hw = float(math.prod(src.last_hw))
        g_bar = (1.0 - p.shape[-1] * p) @ model.head.weight.to(p.dtype) / hw  # (B, D) = Wᵀ(1 − C p)/(HW)
        o = g_bar.abs().mean(-1).sqrt().clamp_min(1e-12)  # (B,)
        return {name: (m / o[:, None]).detach() for name, m in zip(src.names, means)}


def gaia_abnormality_map(model: GradvizModel, x: torch.Tensor, variant: str = "z",
                         layers=None) -> dict[str, torch.Tensor]:
    """Per-layer, per-channel abnormality {layer: (B, channels)}: r_k (``variant="z"``) or a_k/o (``"a"``).

    The uncertainty is the mean of the squares over all concatenated channels (GAIA-Z/-A).
    """
    if variant == "z":
        return gaia_z_channels(model, x, layers if layers is not None else "all")
    if variant == "a":
        return gaia_a_channels(model, x, layers if layers is not None else "auto")
    raise MethodError(f"GAIA variant must be 'z' or 'a', got {variant!r}")


def _mean_square(channels: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat(list(channels.values()), dim=1).pow(2).mean(1)  # (B,)


@not_differentiable("it counts non-zero gradient entries, a step function of the input: its "
                    "gradient is zero almost everywhere")
@register("gaia_z", title="GAIA-Z (zero deflation)", paper="Chen et al., NeurIPS 2023", year=2023,
          formula=r"u(x) = \tfrac{1}{K}\sum_k r_k^2,\; r_k = \tfrac{1}{HW}\sum_{h,w} "
                  r"\mathbb{1}\!\left[\tfrac{\partial \max_c z_c}{\partial A_{k,h,w}} \neq 0\right]",
          family="gradient", link="https://arxiv.org/abs/2311.09620",
          intuition="Backpropagate the max logit to every feature map and count, per channel, the non-zero "
                    "gradient entries. OOD inputs activate unusual ReLU patterns, so fewer zeros survive.",
          reading="No hyperparameters except which layers are hooked. Look at the Inspect page's per-layer "
                  "abnormality to see where the zeros deflate.",
          expected={"noise-uniform": "higher", "letters": "higher"})
def gaia_z(batch: ModelOutputs, layers: str = "all") -> torch.Tensor:
    """GAIA-Z: mean squared fraction of non-zero feature-map gradient entries per channel."""
    return _mean_square(gaia_z_channels(batch.model, batch.x, layers, batch.gradient_pass()))


@register("gaia_a", title="GAIA-A (channel-wise average abnormality)", paper="Chen et al., NeurIPS 2023", year=2023,
          formula=r"u(x) = \tfrac{1}{K}\sum_k \big(|a_k|/o\big)^2,\; "
                  r"a_k = \overline{\partial \textstyle\sum_d h_d/\partial A_k},\; "
                  r"o = \sqrt{\overline{|W^\top(1 - C p)|}/(HW)}",
          family="gradient", link="https://arxiv.org/abs/2311.09620",
          intuition="Channel-wise averages of feature-map gradients of the pooled features, scaled by the output "
                    "gradient. OOD inputs give abnormally large average attributions.",
          reading="Right-skewed for OOD; compare with GAIA-Z — they look at the same gradients differently.",
          expected={"noise-uniform": "higher", "letters": "higher"})
def gaia_a(batch: ModelOutputs, layers: str = "auto") -> torch.Tensor:
    """GAIA-A: mean squared channel-average gradient of the pooled features, scaled by the output part."""
    return _mean_square(gaia_a_channels(batch.model, batch.x, layers, batch.gradient_pass()))
