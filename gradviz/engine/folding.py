"""Eval-mode BatchNorm folded into the convolution before it, in a private twin of the network.

In ``eval()`` mode a BatchNorm is a per-channel affine map of its input,
z = γ (y − μ)/σ + β with σ = √(running_var + ε). When it directly follows a Conv2d whose output
nothing else reads, the pair equals one convolution with weight s ⊙ W and bias s (b − μ) + β,
s = γ/σ. The gradient engine's hooked forward (:class:`gradviz.engine.gradient_pass.GradientPass`) runs on
such a *twin*: it skips every folded BatchNorm's forward and backward (about a fifth of a plain
forward+backward of the bundled model), and still reports both layers exactly, from the output
gradient δz of the folded convolution:

- the convolution: δy = s ⊙ δz, so ∇W_b = s ⊙_o (δz ⋆ U_b) and ∇b_b = s ⊙ Σ_p δz;
- the BatchNorm: ∇β_b = Σ_p δz and ∇γ_b = Σ_p δz x̂ with x̂ = (y − μ)/σ, y the conv output the
  twin never forms. x̂ is read off the folded output, (z − β)/γ, where γ is a safe divisor and z
  is small enough to keep or unchanged (``FROM_OUTPUT``); else Σ_p δz_o y_o = Σ_k W_ok (δz ⋆ U_b)_ok
  comes from dot products of the (unscaled) per-sample weight gradient with W, taken while the
  engine reduces it (``DOT_PRODUCTS``), or y is recomputed by one convolution (``RECOMPUTED``); the
  routes are named and chosen in :mod:`gradviz.engine.plans.conv` (``ConvPlan.fold_route``).

The pairs are found on a ``torch.fx`` trace of a deep copy of the network (the model itself is
never changed); a network that does not trace, or has no such pair, is run as it is. The twin is
cached per network and rebuilt when any parameter or buffer changes (in place or replaced).
``GRADVIZ_FOLD_BN=off`` (or ``GradientPass(fold_bn=False)``) disables folding.
"""

from __future__ import annotations

import copy
import threading
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["Fold", "Twin", "twin_of", "fold_enabled"]

_BN = nn.modules.batchnorm._BatchNorm


@dataclass(eq=False)
class Fold:
    """One BatchNorm folded into its convolution (the original modules and the folding constants)."""

    conv_name: str
    bn_name: str
    conv: nn.Conv2d
    bn: _BN
    scale: torch.Tensor  # (O,) s = γ/σ (1/σ without an affine weight)
    inv_std: torch.Tensor  # (O,) 1/σ
    shift: torch.Tensor  # (O,) conv bias − μ (−μ without a bias)

    @property
    def z_safe(self) -> bool:
        """Whether x̂ = (z − β)/γ recovers the normalised input from the folded output z to float
        precision: every |γ| > 0 and |β| ≤ 30 |γ| (the rounding of z then costs x̂ ≤ 30 ulp)."""
        cached = self.__dict__.get("_z_safe")
        if cached is None:
            bn = self.bn
            if bn.weight is None:
                cached = True
            else:
                g = bn.weight.detach().double().abs()
                b = bn.bias.detach().double().abs() if bn.bias is not None else torch.zeros_like(g)
                cached = bool(((g > 0) & (b <= 30 * g)).all())
            self.__dict__["_z_safe"] = cached
        return cached

    def direct_args(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of :meth:`gradviz.engine.kernels.FusedKernel.conv_parts` for this conv, built once.

        The scale is applied to δz as the kernel reads it, and the dot products use W/s, when every
        s is a safe divisor; else it is applied to each gradient tile (slower, any s, even 0)."""
        cached = self.__dict__.get("_direct_args")
        if cached is None:
            from gradviz.engine.kernels import transposed_weight

            s = self.scale.detach().double()
            w = self.conv.weight.detach().double()
            safe = bool(((s.abs() > 1e-6 * s.abs().max()) & torch.isfinite(1.0 / s)).all()) if s.numel() else False
            if safe:
                ws = w / s.view(-1, *([1] * (w.dim() - 1)))
                cached = {"d_scale": self.scale, "weight_t": transposed_weight(ws)}
            else:
                cached = {"scale": self.scale, "weight_t": transposed_weight(w)}
            self.__dict__["_direct_args"] = cached
        return cached


@dataclass(eq=False)
class Twin:
    """The folded copy of a network and how its modules map back to the original ones."""

    net: nn.Module
    folds: dict[str, Fold]  # by conv name
    originals: dict[int, tuple[str, nn.Module]]  # id(module of the twin) -> (name, original module)
    key: tuple
    modules: list[nn.Module] = field(default_factory=list)  # the twin's modules, registration order
    bn_names: set[str] = field(default_factory=set)  # every BatchNorm of the original network


def fold_enabled(fold_bn: bool | None) -> bool:
    """``fold_bn`` if given, else ``GRADVIZ_FOLD_BN`` (``settings().fold_bn``, default on)."""
    if fold_bn is not None:
        return bool(fold_bn)
    from gradviz.config import settings

    return settings().fold_bn


def _key(net: nn.Module) -> tuple:
    """Changes when any parameter or buffer is replaced, moved, cast or modified in place."""
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in (*net.parameters(), *net.buffers()))


_TWINS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Twin | None]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def twin_of(net: nn.Module) -> Twin | None:
    """The (cached) folded twin of ``net`` in eval mode, or None where nothing can be folded."""
    if net.training:
        return None
    key = _key(net)
    with _LOCK:
        cached = _TWINS.get(net)
        if cached is None or cached[0] != key:
            cached = (key, _build(net, key))
            _TWINS[net] = cached
        return cached[1]


def _build(net: nn.Module, key: tuple) -> Twin | None:
    try:
        gm = torch.fx.symbolic_trace(copy.deepcopy(net))
    except Exception:  # data-dependent control flow, untraceable modules: run the network as it is
        return None
    modules = dict(gm.named_modules())
    folds: dict[str, Fold] = {}
    calls: dict[str, int] = {}  # a module called twice (weight sharing) is never folded
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        bn = modules.get(node.target)
        src = node.args[0]
        if not (isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None
                and isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        conv = modules.get(src.target)
        if not isinstance(conv, nn.Conv2d) or conv.out_channels != bn.num_features or src.target in folds \
                or calls.get(src.target, 0) > 1 or calls.get(node.target, 0) > 1:
            continue
        orig_conv, orig_bn = net.get_submodule(src.target), net.get_submodule(node.target)
        fold = _fold(src.target, node.target, orig_conv, orig_bn)
        _set_submodule(gm, src.target, _folded_conv(orig_conv, fold))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folds[src.target] = fold
    if not folds:
        return None
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    gm.eval()  # the twin's parameters keep requires_grad: per-sample gradients of derived tensors flow to them
    originals = {}
    for name, m in gm.named_modules():
        if name:
            try:
                originals[id(m)] = (name, net.get_submodule(name))
            except AttributeError:
                continue
    return Twin(gm, folds, originals, key,
                [m for _, m in gm.named_modules()], {n for n, m in net.named_modules() if isinstance(m, _BN)})


def _fold(conv_name: str, bn_name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Fold:
    with torch.no_grad():
        var, mean = bn.running_var.double(), bn.running_mean.double()
        inv_std = torch.rsqrt(var + bn.eps)
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
        dtype = conv.weight.dtype
        return Fold(conv_name, bn_name, conv, bn, (gamma * inv_std).to(dtype), inv_std.to(dtype),
                    (bias - mean).to(dtype))


def _folded_conv(conv: nn.Conv2d, fold: Fold) -> nn.Conv2d:
    """The convolution equal to conv followed by the BatchNorm (computed in float64)."""
    new = copy.deepcopy(conv)
    bn = fold.bn
    with torch.no_grad():
        s = fold.scale.double()
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(s)
        w = conv.weight.double() * s.view(-1, *([1] * (conv.weight.dim() - 1)))
        new.weight = nn.Parameter(w.to(conv.weight.dtype), requires_grad=False)
        new.bias = nn.Parameter((fold.shift.double() * s + beta).to(conv.weight.dtype), requires_grad=False)
    return new


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)
