"""Partial sums of per-sample gradient vectors, and the six statistics finished from them.

A statistic of a per-sample gradient vector g is finished from five partial sums (:data:`PARTS`):
``s1 = Σ|g|``, ``s2 = Σg²``, ``mx = max g``, ``mn = min g``, ``sm = Σg``. Partial sums of disjoint
pieces of one vector combine exactly (:func:`merge`): chunks of a layer, the weight and the bias,
the parameters of one group. The sums are invariant to the order of the entries, so a plan may
form a gradient in any layout (tap-major, transposed, a permuted view of the parameter).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from gradviz.engine.kernels import FusedKernel
from gradviz.errors import MethodError

__all__ = ["PARTS", "STATS", "LayerStats", "check_stats", "reduce_rows", "merge", "rank_one_parts", "finish", "Totals",
           "rescale"]

PARTS = ("s1", "s2", "mx", "mn", "sm")
STATS: tuple[str, ...] = ("l1", "l2", "max", "min", "mean", "std")

Parts = dict[str, torch.Tensor]


def _eager(g: torch.Tensor, need: frozenset[str], scratch: bool) -> Parts:
    """One fast eager kernel per wanted part; ``scratch`` = ``g`` may be overwritten (``abs_``).

    The slow CPU kernels ``aminmax`` and ``vector_norm(1)`` are avoided."""
    out: Parts = {}
    if "mx" in need:
        out["mx"] = g.amax(1)
    if "mn" in need:
        out["mn"] = g.amin(1)
    if "s2" in need:
        out["s2"] = torch.linalg.vector_norm(g, 2, dim=1).square()
    if "sm" in need:
        out["sm"] = g.sum(1)
    if "s1" in need:
        out["s1"] = (g.abs_() if scratch else g.abs()).sum(1)
    return out


def reduce_rows(g: torch.Tensor, need: frozenset[str] = frozenset(PARTS), kernel: FusedKernel | None = None,
                scratch: bool = False) -> Parts:
    """Partial sums of every row of ``g`` (R, N): {part: (R,)}, only those in ``need``.

    ``kernel`` is the compiled pass (None = eager); ``scratch=True`` lets the eager path overwrite
    ``g`` (a buffer the caller reuses)."""
    g = g.reshape(g.shape[0], -1)
    if kernel is None or len(need) < 2 or not kernel.supports(g):
        return _eager(g, need, scratch)
    out = kernel(g)
    return {k: out[:, i] for i, k in enumerate(PARTS) if k in need}


def merge(a: Parts | None, b: Parts | None) -> Parts | None:
    """Partial sums of two disjoint pieces of one vector (a part only one of them has is kept)."""
    if a is None:
        return b
    if b is None:
        return a
    out = dict(a)
    for k, v in b.items():
        if k not in a:
            out[k] = v
        elif k == "mx":
            out[k] = torch.maximum(a[k], v)
        elif k == "mn":
            out[k] = torch.minimum(a[k], v)
        else:
            out[k] = a[k] + v
    return out


def rank_one_parts(d: torch.Tensor, a: torch.Tensor, bias: bool, need: frozenset[str],
                   kernel: FusedKernel | None = None) -> Parts:
    """Partial sums of [δ aᵀ | δ] per sample and group without materialising: d (b,g,O), a (b,g,K).

    ∇W_b = δ_b a_bᵀ is rank one: L1 = ‖δ‖₁‖a‖₁, Σg² = ‖δ‖²‖a‖², Σg = (Σδ)(Σa), max/min are the extremes
    of (δ_max, δ_min) × (a_max, a_min). With the compiled ``kernel`` (one group) the row partials of δ
    and of a come from two calls of it (the bias column of ones added to a's partials), the products
    taken in float64."""
    if kernel is not None and d.shape[1] == 1 and len(need) > 1 and kernel.supports(d) and kernel.supports(a):
        pd, pa = kernel(d[:, 0]), kernel(a[:, 0])  # (b, 5) float64 each, PARTS order
        if bias:  # one more input feature, equal to 1
            pa = pa + pa.new_tensor([1.0, 1.0, 0.0, 0.0, 1.0])
            pa[:, 2].clamp_(min=1.0)
            pa[:, 3].clamp_(max=1.0)
        outer = pd[:, :, None] * pa[:, None, :]  # every product at once
        ext = outer[:, 2:4, 2:4].reshape(-1, 4)  # the four products of the extremes
        both = {"s1": outer[:, 0, 0], "s2": outer[:, 1, 1], "mx": ext.amax(1), "mn": ext.amin(1),
                "sm": outer[:, 4, 4]}
        return {k: v for k, v in both.items() if k in need}
    if bias:  # the bias gradient is δ·1: append a constant-1 input feature
        a = torch.cat([a, a.new_ones(a.shape[:-1] + (1,))], dim=-1)
    out: Parts = {}
    if "s2" in need:
        out["s2"] = ((d * d).sum(-1) * (a * a).sum(-1)).sum(1)
    if "s1" in need:
        out["s1"] = (d.abs().sum(-1) * a.abs().sum(-1)).sum(1)
    if "sm" in need:
        out["sm"] = (d.sum(-1) * a.sum(-1)).sum(1)
    if "mx" in need or "mn" in need:
        d_max, d_min = d.amax(-1), d.amin(-1)
        a_max, a_min = a.amax(-1), a.amin(-1)
        prods = torch.stack([d_max * a_max, d_max * a_min, d_min * a_max, d_min * a_min], dim=-1)  # (b,g,4)
        out["mx"], out["mn"] = prods.amax(-1).amax(1), prods.amin(-1).amin(1)
    return out


def rescale(parts: Parts, scale: torch.Tensor) -> Parts:
    """Partial sums of s_b·g_b from those of g_b (s_b > 0 per sample): every per-sample gradient is
    linear in the loss's logit gradient, so the engine may run on a rescaled one (see GradientPass)."""
    s = scale.to(torch.float64)
    out = {}
    for k, v in parts.items():
        v = v.double()
        out[k] = v * s * s if k == "s2" else v * s
    return out


def finish(groups: list[Parts], numels: list[int], stats: Sequence[str] | None) -> torch.Tensor:
    """(B, L, S) statistics of L groups from their partial sums (float64); (B, L) ‖∇‖² if no stats.

    ``std`` is the population standard deviation (ddof = 0), ``mean`` the arithmetic mean."""
    p = {k: torch.stack([parts[k].double() for parts in groups], dim=1) for k in groups[0]}
    if stats is None:
        return p["s2"]
    n = torch.tensor(numels, dtype=torch.float64, device=p["s2"].device)
    mean = p["sm"] / n
    cols = {
        "l1": p["s1"], "l2": p["s2"].clamp_min(0).sqrt(), "max": p["mx"], "min": p["mn"], "mean": mean,
        "std": (p["s2"] / n - mean * mean).clamp_min(0).sqrt(),
    }
    return torch.stack([cols[s] for s in stats], dim=-1)


class Totals:
    """Per-sample partial sums of one layer, filled chunk by chunk in sample order, joined once per
    part at the end (one assignment per part and chunk cost more than the chunk's reductions)."""

    def __init__(self, batch: int, need: frozenset[str]) -> None:
        self.chunks: list[Parts | torch.Tensor] = []
        self.batch, self.need = batch, need

    def put(self, parts: Parts | torch.Tensor) -> None:
        """Parts of the next samples: {part: (b,)}, or (b, 5) in PARTS order."""
        self.chunks.append(parts)

    def result(self, extra: Parts | None, layer_only: frozenset[str] | set[str] = frozenset()) -> Parts:
        """The layer's partial sums; ``layer_only`` parts come from ``extra`` alone (not chunked)."""
        out: Parts = {}
        for i, k in enumerate(PARTS):
            if k in self.need and k not in layer_only and self.chunks:
                col = [c[:, i] if isinstance(c, torch.Tensor) else c[k] for c in self.chunks]
                out[k] = (col[0] if len(col) == 1 else torch.cat(col)).double()
        if extra is None:
            return out
        extra = {k: v.double() for k, v in extra.items()}
        merged = merge(out, {k: v for k, v in extra.items() if k in out}) or {}
        merged.update({k: v for k, v in extra.items() if k not in out})
        return merged


@dataclass
class LayerStats:
    """Per-sample gradient statistics: ``values[b, l, s]`` = statistic ``stats[s]`` of layer ``layers[l]``."""

    layers: list[str]  # parameter groups, forward order
    stats: tuple[str, ...]
    values: torch.Tensor  # (B, L, S) float32
    numels: list[int] = field(default_factory=list)  # entries of each layer's gradient vector

    def get(self, stat: str, layers: Sequence[str] | None = None) -> torch.Tensor:
        """Values of one statistic, (B, L) for ``layers`` (default: all, in order)."""
        if stat not in self.stats:
            raise MethodError(f"statistic {stat!r} was not computed; available: {', '.join(self.stats)}")
        return self.values[:, self._layer_index(layers), self.stats.index(stat)]

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


def check_stats(stats: Sequence[str]) -> tuple[str, ...]:
    stats = tuple(stats)
    bad = [s for s in stats if s not in STATS]
    if bad or not stats:
        raise MethodError(f"unknown statistic(s) {bad}; choose from {', '.join(STATS)}")
    return stats
