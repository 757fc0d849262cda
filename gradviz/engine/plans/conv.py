"""Conv2d: ∇W_b = Δ_b U_bᵀ with U_b the unfolded input (K × P), Δ_b (O × P).

Strategies beside :mod:`.dense`'s ``bmm`` and ``gram``:

- ``direct`` (the compiled kernel, float32, groups = 1): G_b is formed tile by tile in SIMD
  registers and reduced there, for the whole batch at once: never written to memory;
- ``conv``: one grouped-convolution weight backward with the samples as groups (fast where
  positions are many).

U of a plain conv is built tap-major, (b, P, kh·kw·Cin) from a channels-last copy: one strided copy
with Cin innermost (~3x faster than im2col) that bmm reads contiguously; its columns are a
permutation of G's (the statistics do not depend on the order). On small maps, columns of kernel
taps that see one output position only are δ_b[:, p] times one input pixel: their partial sums are
taken in closed form and only the other columns are formed (:func:`tap_split`).

A convolution with an eval-mode BatchNorm folded into it (:mod:`gradviz.engine.folding`) receives
δz of the folded output: δy = s ⊙ δz (s = γ/σ) for its own gradient, and it computes the folded
BatchNorm's [∇γ, ∇β] as well (:meth:`ConvPlan.finish_fold`, read by the BatchNorm's plan).
"""

from __future__ import annotations

import time
from functools import lru_cache

import torch
import torch.nn.functional as F

from gradviz.engine.capture import Use
from gradviz.engine.plans.base import Job, Sink
from gradviz.engine.plans.dense import DensePlan, Strategy, gram_sq
from gradviz.engine.plans.norm import bn_sums
from gradviz.engine.reduce import Parts, merge, rank_one_parts, reduce_rows

__all__ = ["ConvPlan", "tap_split", "unfold_taps", "FROM_OUTPUT", "DOT_PRODUCTS", "RECOMPUTED"]

# How a folded BatchNorm's Σ_p δz x̂ is found (:meth:`ConvPlan.fold_route`, :meth:`ConvPlan.finish_fold`)
FROM_OUTPUT = "from the folded output"  # x̂ = (z − β)/γ, z the folded conv's output
DOT_PRODUCTS = "dot products with W"  # Σ_k W_ok G'_ok, taken while G' = δz ⋆ U is reduced
RECOMPUTED = "recomputed conv output"  # y by one more convolution


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


class Direct(Strategy):
    name = "direct"

    def parts(self, plan, sl, buf):
        return plan.direct_parts(sl)


class ConvBackward(Strategy):
    name, materialises = "conv", True

    def sample_bytes(self, plan):
        return plan.grad_bytes + plan.inp[0].numel() * plan.es

    def parts(self, plan, sl, buf):
        return plan.materialised_parts("conv", sl, buf)


class ConvBmm(Strategy):
    name, materialises = "bmm", True

    def sample_bytes(self, plan):
        split = plan.split("bmm")
        grad = plan.grad_bytes if split is None else plan.grad_bytes * split[0].numel() // max(1, plan.k // plan.groups)
        return grad + plan.chunk_unfold_bytes

    def prepare(self, plan):
        return plan.prepare_bmm()

    def setup_estimate(self, plan):
        return plan.unfold_estimate()

    def parts(self, plan, sl, buf):
        return plan.materialised_parts("bmm", sl, buf)


class ConvPlan(DensePlan):
    """A 2-D convolution (any stride, padding, dilation, groups; folded BatchNorm or not)."""

    kind = "conv2d"
    STRATEGIES = {"direct": Direct(), "bmm": ConvBmm(), "conv": ConvBackward(), "gram": DensePlan.STRATEGIES["gram"]}

    @classmethod
    def applies(cls, use: Use, uses_per_param: dict[int, int]) -> bool:
        return use.op == "conv2d" and use.inp is not None and use.inp.dim() == 4

    def __init__(self, use: Use, job: Job, sink: Sink, batch: int) -> None:
        super().__init__(use, job, sink, batch)
        spec = use.spec
        w = self.weight
        x = use.inp
        self.kernel_size = tuple(w.shape[2:])
        self.stride, self.dilation = _pair(spec["stride"]), _pair(spec["dilation"])
        self.groups_arg = int(spec["groups"])
        padding = spec["padding"]
        self.pre_pad: tuple[int, int, int, int] | None = None
        if isinstance(padding, str):  # 'valid' / 'same': padded by hand (possibly unevenly), then none
            self.padding = (0, 0)
            if padding == "same":
                tot = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
                self.pre_pad = (tot[1] // 2, tot[1] - tot[1] // 2, tot[0] // 2, tot[0] - tot[0] // 2)
        else:
            self.padding = _pair(padding)
        self.inp = x
        self.fold = use.refs[0].fold if use.refs and use.refs[0].attr == "weight" else None
        self.source_of: Use | None = None  # set when a folded BatchNorm's plan reads this plan's results
        # the folded output z (FROM_OUTPUT): the copy, or the output if nothing changed it
        self.z = None
        if self.fold is not None and self.fold.z_safe:
            self.z = use.z if use.z is not None else (None if use.modified else use.out.detach())
        self.groups, self.o = self.groups_arg, w.shape[0]
        self.k = w[0].numel() * self.groups
        self.positions = use.out[0, 0].numel()
        compiled = job.kernel(x.dtype)
        self.direct = compiled if compiled is not None and compiled.conv_supported(x, self.groups) else None
        self.tap_major = self.groups == 1
        unfold_bytes = self.k * self.positions * self.es
        # The unfolded input of the whole batch is built once when it fits the budget (per-chunk
        # unfolding of small maps is dominated by per-op overhead).
        self.unfold_once = unfold_bytes * batch <= job.budget
        self.chunk_unfold_bytes = 0 if self.unfold_once else unfold_bytes
        self._u_all: torch.Tensor | None = None
        self._fold_sums: dict[str, torch.Tensor] = {}
        self._taps_kept: torch.Tensor | None = None
        self._u_rows: torch.Tensor | None = None
        self._split_info: dict[str, tuple | None] = {}
        self.bn_grads: torch.Tensor | None = None
        self._finish_init()
        if not self.rank1:
            self.candidates = (["direct"] if self.direct is not None else []) + ["bmm", "conv"]
            if job.stats is None:
                self.candidates.append("gram")
            # eager path: parts cheaper from factorised forms, computed once per layer; only where the
            # unfolded input of the whole batch exists (else the Gram form would unfold again)
            self.cheap = self._factorised() if self.fused is None and self.unfold_once else set()

    def signature(self) -> tuple:
        geometry = (self.kernel_size, self.stride, self.padding, self.pre_pad, self.dilation,
                    tuple(self.inp.shape[1:]))
        return super().signature() + (geometry, self.direct is not None, self.fold is not None)

    # ---- operands

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.pre_pad is None else F.pad(x, self.pre_pad)

    def operands(self, sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        x, d = self.inp[sl], self.use_grad[sl]
        b, g, p = x.shape[0], self.groups, self.positions
        if self.unfold_once:
            if self._u_all is None:
                self._u_all = self._unfold(self.inp)
            u = self._u_all[sl]
        else:
            u = self._unfold(x)
        return u.view(b, g, self.k // g, p), d.reshape(b, g, self.o // g, p)

    @property
    def use_grad(self) -> torch.Tensor:
        return self.grad

    def operands_delta(self) -> torch.Tensor:
        return self.grad.reshape(self.batch, self.groups, self.o // self.groups, self.positions)

    def scaled(self, d: torch.Tensor) -> torch.Tensor:
        if self.fold is None:
            return d
        return d * self.fold.scale.to(d.dtype).view(1, self.groups, -1, 1)

    def _unfold(self, x: torch.Tensor) -> torch.Tensor:
        """The unfolded input (b, Cin·kh·kw, P), as ``F.unfold`` (tap-major columns: a view of
        (b, P, kh·kw·Cin), see the module docstring)."""
        x, padding = self.padded(x), self.padding
        if not self.rank1 and self.tap_major:
            return unfold_taps(x, self.kernel_size, padding, self.stride, self.dilation).transpose(1, 2)
        if self.positions == 1:  # a 1×1 output sees one window: the top-left patch (im2col costs 0.3 ms here)
            x = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else x
            (kh, kw), (dh, dw) = self.kernel_size, self.dilation
            return x[:, :, : dh * (kh - 1) + 1: dh, : dw * (kw - 1) + 1: dw].reshape(x.shape[0], -1, 1)
        if self.positions <= 16 or self.dilation != (1, 1):  # tiny maps (and dilation): one im2col call
            return F.unfold(x, self.kernel_size, self.dilation, padding, self.stride)
        return _unfold(x, self.kernel_size, padding, self.stride)

    def unfold_estimate(self) -> float:
        """Seconds the whole layer's unfold would take, from an eighth of the batch (0 if not once)."""
        if not self.unfold_once or self._u_all is not None:
            return 0.0
        n = max(1, self.batch // 8)
        t0 = time.perf_counter()
        self._unfold(self.inp[:n])
        return (time.perf_counter() - t0) * self.batch / n

    def _materialise(self, strategy: str, sl: slice, buf: torch.Tensor | None, scaled: bool = True,
                     rows: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample weight gradients (b, g, Og, Kg) of samples ``sl`` (from δy = s ⊙ δz where folded and
        ``scaled``, else from δz); ``rows``: only those columns (bmm)."""
        b, g = self.inp[sl].shape[0], self.groups
        og, kg = self.o // g, self.k // g
        if strategy == "bmm":
            u, d = self.operands(sl)
            if rows is not None:
                u, kg = self._rows_of(u, sl, rows), rows.numel()
            if scaled and self.fold is not None:
                d = self.delta(sl)
            out = None if buf is None else buf[: b * g * og * kg].view(b, g, og, kg)
            return torch.matmul(d, u.transpose(-1, -2), out=out)
        x = self.padded(self.inp[sl])
        d = self.grad[sl]
        if scaled and self.fold is not None:
            d = d * self.fold.scale.to(d.dtype).view(1, -1, 1, 1)
        shape_only = self.weight.new_empty(1).expand(b * self.o, *self.weight.shape[1:])  # only its shape is read
        grad_w = torch.ops.aten.convolution_backward(
            d.reshape(1, b * self.o, *d.shape[2:]), x.reshape(1, -1, *x.shape[2:]), shape_only, None,
            list(self.stride), list(self.padding), list(self.dilation), False, [0, 0], b * g, [False, True, False],
        )[1]
        return grad_w.view(b, g, og, kg)

    def _rows_of(self, u: torch.Tensor, sl: slice, rows: torch.Tensor) -> torch.Tensor:
        """U's columns ``rows`` (multi-position taps × every input channel, in F.unfold's order) for
        samples ``sl``: gathered once per layer where U is unfolded once."""
        c_in = self.weight.shape[1]
        if self.tap_major:  # those columns are whole tap blocks of Cin here: copy blocks, not columns
            if self._taps_kept is None:
                taps = self.k // c_in
                self._taps_kept = rows[rows < taps]  # the input channel 0's columns: the taps kept

            def gather(v):
                b, p = v.shape[0], v.shape[-1]
                blocks = v.transpose(-1, -2).reshape(b, p, -1, c_in)  # a view
                kept = blocks.index_select(2, self._taps_kept)
                return kept.reshape(b, 1, p, -1).transpose(-1, -2)
        else:
            def gather(v):
                return v[:, :, rows]
        if not self.unfold_once:
            return gather(u)
        if self._u_rows is None:
            self._u_rows = gather(self.operands(slice(None))[0])
        return self._u_rows[sl]

    def _patch_sums(self, sl: slice) -> torch.Tensor:
        """Σ_k U_kp per sample, group and output position: (b, g, P), by a ones-kernel convolution."""
        x = self.padded(self.inp[sl])
        b, g = x.shape[0], self.groups
        xs = x.reshape(b * g, x.shape[1] // g, *x.shape[2:]).sum(1, keepdim=True)
        ones = x.new_ones(1, 1, *self.kernel_size)
        out = F.conv2d(xs, ones, stride=self.stride, padding=self.padding, dilation=self.dilation)
        return out.reshape(b, g, self.positions)

    # ---- partial sums

    def parts(self, strategy: str, sl: slice, buf: torch.Tensor | None) -> Parts | torch.Tensor:
        if strategy == "rank1":
            u, d = self.operands(sl)
            if self._uses_dots("rank1"):  # G' = δz aᵀ: Σ_k W_ok G'_ok = δz_o (W a)_o
                w = self._fold_weight(d.dtype)
                wa = torch.matmul(u[:, 0, :, 0], w[0].t())[:, None] if self.groups == 1 else \
                    torch.einsum("bgk,gok->bgo", u[..., 0], w)
                self._fold_rows("dots", sl)[:] = (d[..., 0] * wa).reshape(d.shape[0], -1)
            return rank_one_parts(self.scaled(d)[..., 0], u[..., 0], False, self.need, self.fused)
        return self.STRATEGIES[strategy].parts(self, sl, buf)

    def direct_parts(self, sl: slice) -> Parts | torch.Tensor:
        """``direct``: the compiled kernel reduces G_b in registers (with the folded BatchNorm's sums)."""
        x = self.padded(self.inp[sl])
        fold = self.fold
        args = {} if fold is None else fold.direct_args()
        if fold is not None and not self._uses_dots("direct"):
            args = {k: v for k, v in args.items() if k != "weight_t"}
            if "d_scale" not in args:  # no dot products: the scale may go on δz either way
                args = {"d_scale": fold.scale}
            if self.fold_route("direct") == FROM_OUTPUT:  # its sums in the same pass over δz
                args.update(z=self.z[sl], z_shift=self._fold_beta())
        split = self.split("direct")
        if split is not None and split[0].numel():  # the closed-form columns inside the kernel, too
            args.update(rows=split[0], single=split[3], zero_taps=split[2])
        out = self.direct.conv_parts(x, self.grad[sl], self.kernel_size, self.stride, self.padding, self.dilation,
                                     only_s2=self.job.stats is None, **args)
        if isinstance(out, tuple):
            out, dots, self._fold_rows("dz", sl)[:], zdots = out
            if dots is not None:
                self._fold_rows("dots", sl)[:] = dots
            if zdots is not None:
                self._fold_rows("zdots", sl)[:] = zdots
        if split is None or split[0].numel():
            return {"s2": out[:, 1]} if self.job.stats is None else out
        return self._single_tap_parts(sl, self.need)  # every column in closed form

    def materialised_parts(self, strategy: str, sl: slice, buf: torch.Tensor | None) -> Parts | torch.Tensor:
        """``bmm``/``conv``: form G_b for the chunk (only the multi-position columns where the taps split),
        take the folded BatchNorm's dot products from it where needed, reduce."""
        dot = self._uses_dots(strategy)
        split = self.split(strategy)
        if strategy == "bmm" and not dot and self.unfold_once and buf is not None and \
                (split is None or split[0].numel()):
            return self._bmm_split_parts(sl, buf, split)
        if split is not None:  # closed-form columns once per layer (layer_parts): per-chunk ops cost more
            need_here = self.need - self.cheap
            if not split[0].numel():
                return self._single_tap_parts(sl, need_here)
            grad_w = self._materialise(strategy, sl, buf, rows=split[0])
            return reduce_rows(grad_w.reshape(grad_w.shape[0], -1), need_here, self.fused, scratch=buf is not None)
        grad_w = self._materialise(strategy, sl, buf, scaled=not dot)  # (b, g, Og, Kg)
        if dot:  # from δz: the dot products with W first, then the scale s in place
            w = self._fold_weight(grad_w.dtype, tap_major=strategy == "bmm" and self.tap_major)
            b = grad_w.shape[0]
            self._fold_rows("dots", sl)[:] = (grad_w * w).sum(-1).reshape(b, -1)
            grad_w = grad_w.mul_(self.fold.scale.to(grad_w.dtype).view(self.groups, -1, 1))
        flat = grad_w.reshape(grad_w.shape[0], -1)
        if self.fused is not None:
            return self.fused(flat)
        return reduce_rows(flat, self.need - self.cheap, scratch=buf is not None or strategy == "conv")

    def prepare_bmm(self):
        """δ (scaled) and Uᵀ (the kept columns) of the whole layer, built once, where U fits the budget
        (none for the dot-product route of a folded BatchNorm, which reads the unscaled δz)."""
        if not self.unfold_once:
            return None
        if self._uses_dots("bmm"):
            return self.operands(slice(None))
        if self._bmm_operands is None:
            every, split = slice(None), self.split("bmm")
            u = self.operands(every)[0]
            if split is not None and split[0].numel():
                u = self._rows_of(u, every, split[0])
            self._bmm_operands = (self.delta(every), u.transpose(-1, -2))
        return self._bmm_operands

    def _bmm_split_parts(self, sl: slice, buf: torch.Tensor, split) -> Parts | torch.Tensor:
        d, ut = self.prepare_bmm()
        d, ut = d[sl], ut[sl]
        shape = (d.shape[0], d.shape[1], d.shape[2], ut.shape[3])
        flat = torch.matmul(d, ut, out=buf[: shape[0] * shape[1] * shape[2] * shape[3]].view(shape)).view(shape[0], -1)
        if self.fused is not None and split is None:
            return self.fused(flat)
        return reduce_rows(flat, self.need - self.cheap, self.fused, scratch=True)

    # ---- columns of G that see one output position only (small maps)

    def split(self, strategy: str):
        """(columns of G with several positions (K',) int64, single-position taps, zero taps, triples)
        where some taps of the kernel see one output position only (or none), as on 2×2 maps with a
        3×3 kernel; those columns of G_b are δ_b[:, p] times one input pixel, in closed form. None where
        nothing is gained, or for ``conv``/``gram`` and the dot-product route of a folded BatchNorm."""
        if strategy not in ("direct", "bmm") or self._uses_dots(strategy):
            return None
        if "info" not in self._split_info:
            self._split_info["info"] = tap_split(
                self.kernel_size, self.stride, self.padding, self.dilation, self.weight.shape[1],
                tuple(self.padded(self.inp[:1]).shape[-2:]), self.positions) \
                if not self.rank1 and self.groups == 1 else None
        return self._split_info["info"]

    def _single_tap_parts(self, sl: slice, need: frozenset[str]) -> Parts:
        """Partial sums of the closed-form columns: for a tap t seeing position p_t only, column
        (c, t) of G_b is x_b[c, h_t, w_t] · δ_b[:, p_t] (zero columns, too, count for max/min)."""
        _, taps, zero_taps, _ = self._split_info["info"]
        out: Parts = {}
        d = self.delta(sl)[:, 0]  # (b, O, P), scaled where folded
        b = d.shape[0]
        if taps is not None:
            pos, hi, wi = taps
            dd = d[:, :, pos]  # (b, O, T1)
            xv = self.padded(self.inp[sl])[:, :, hi, wi]  # (b, C, T1)
            if "s1" in need:
                out["s1"] = (xv.abs() * dd.abs().sum(1, keepdim=True)).sum((1, 2))
            if "s2" in need:
                out["s2"] = (xv * xv * (dd * dd).sum(1, keepdim=True)).sum((1, 2))
            if "sm" in need:
                out["sm"] = (xv * dd.sum(1, keepdim=True)).sum((1, 2))
            if "mx" in need or "mn" in need:
                hi_d, lo_d = dd.amax(1, keepdim=True), dd.amin(1, keepdim=True)
                a, c = xv * hi_d, xv * lo_d
                out["mx"] = torch.maximum(a, c).amax((1, 2))
                out["mn"] = torch.minimum(a, c).amin((1, 2))
        if zero_taps:
            zero = d.new_zeros(b)
            for k in ("mx", "mn"):
                if k in need:
                    out[k] = zero if k not in out else (torch.maximum if k == "mx" else torch.minimum)(out[k], zero)
            for k in ("s1", "s2", "sm"):
                if k in need and k not in out:
                    out[k] = zero
        return {k: v.double() for k, v in out.items()}

    # ---- layer-level parts

    def layer_parts(self, strategy: str) -> Parts | None:
        """The bias gradient Σ_p Δ_op, the closed-form columns beside bmm's chunks, and on the eager
        path the factorised sum and squared norm (:meth:`_factorised`)."""
        extra = super().layer_parts(strategy)
        everyone = slice(None)
        split = self.split(strategy) if strategy == "bmm" else None
        if split is not None and split[0].numel():
            extra = merge(extra, self._single_tap_parts(everyone, self.need - self.cheap))
        if strategy in ("bmm", "conv") and self.fused is None and self.cheap:
            d = self.delta(everyone)
            cheap = {}
            if "sm" in self.cheap:
                cheap["sm"] = (d.sum(2) * self._patch_sums(everyone)).sum((1, 2))
            if "s2" in self.cheap:
                cheap["s2"] = gram_sq(self.operands(everyone)[0], d)
            extra = merge(extra, cheap)
        return extra

    def _factorised(self) -> set[str]:
        """Parts cheaper from factorised forms than from one more eager pass over ∇W."""
        cheap = set()
        g, p = self.groups, self.positions
        pass_cost = self.o * self.k // g
        gram_cost = g * p * p * (self.o // g + self.k // g + 1)  # flops of the Gram norm vs a pass over ∇W
        if "sm" in self.need and self.inp[0].numel() < pass_cost:
            cheap.add("sm")
        if "s2" in self.need and gram_cost < pass_cost:
            cheap.add("s2")
        return cheap

    # ---- a BatchNorm folded into this conv (gradviz.engine.folding)

    def _fold_weight(self, dtype: torch.dtype, tap_major: bool = False) -> torch.Tensor:
        """The conv's own weight as (g, Og, Kg) (columns in tap-major order: ``tap_major``)."""
        w = self.fold.conv.weight.detach().to(dtype)
        if tap_major:
            w = w.permute(0, 2, 3, 1)
        return w.reshape(self.groups, self.o // self.groups, self.k // self.groups)

    def _fold_beta(self) -> torch.Tensor:
        bn = self.fold.bn
        return bn.bias.detach() if bn.bias is not None else torch.zeros_like(bn.running_mean)

    def _fold_rows(self, name: str, sl: slice) -> torch.Tensor:
        """(b, O) float64 rows of a per-sample, per-channel sum for the folded BatchNorm, written by
        :meth:`parts` chunk by chunk: ``dots`` Σ_k W_ok G'_ok (G' = δz ⋆ U), ``dz`` Σ_p δz and
        ``zdots`` Σ_p δz (z − β) (the last two from the direct kernel). NaN until written."""
        if name not in self._fold_sums:
            self._fold_sums[name] = torch.full((self.batch, self.o), float("nan"), dtype=torch.float64,
                                               device=self.device)
        return self._fold_sums[name][sl]

    def _fold_sum(self, name: str) -> torch.Tensor | None:
        """The whole (B, O) sum ``name`` if :meth:`parts` wrote every sample's, else None."""
        t = self._fold_sums.get(name)
        return None if t is None or t.isnan().any() else t

    def fold_route(self, strategy: str) -> str:
        """How the folded BatchNorm's Σ_p δz x̂ is found under ``strategy``: :data:`FROM_OUTPUT` where the
        folded output z is at hand; else :data:`DOT_PRODUCTS` for a rank-one layer and where a gradient entry
        sums many positions; else (and always for ``gram``, which never forms G') :data:`RECOMPUTED`,
        cheap where positions are few."""
        if self.z is not None:
            return FROM_OUTPUT
        if self.rank1 or (strategy != "gram" and self.positions >= (16 if strategy == "direct" else 32)):
            return DOT_PRODUCTS
        return RECOMPUTED

    def _uses_dots(self, strategy: str) -> bool:
        """Whether the chunks of ``strategy`` take the dot products Σ_k W G' for a folded BatchNorm."""
        return self.fold is not None and self.fold_route(strategy) == DOT_PRODUCTS

    def finish(self, strategy: str) -> None:
        if self.fold is not None:
            self.finish_fold(strategy)

    def finish_fold(self, strategy: str) -> None:
        """The folded BatchNorm's per-sample [∇γ, ∇β] (b, 2C): ∇β = Σ_p δz and ∇γ = Σ_p δz x̂ with
        x̂ = (y − μ)/σ, by :meth:`fold_route`: :data:`FROM_OUTPUT`, x̂ = (z − β)/γ from the folded output z
        (kept in the forward when small, or unchanged since; only where γ is a safe divisor,
        :attr:`Fold.z_safe`); :data:`DOT_PRODUCTS`, ∇γ = (Σ_k W G' + (bias − μ) Σ_p δz)/σ;
        :data:`RECOMPUTED`, y by a convolution, centred exactly."""
        fold, bn = self.fold, self.fold.bn
        route = self.fold_route(strategy)
        if route == FROM_OUTPUT:
            dx, dz = self._fold_sum("zdots"), self._fold_sum("dz")
            if dx is None or dz is None:  # not from the direct kernel
                dx, dz = bn_sums(self.z, self.grad, self._fold_beta(), self.job.kernel(self.dtype),
                                 bn.weight is not None)
            dz = dz.double()
            dy = None if dx is None or bn.weight is None else \
                dx.double() / (bn.weight.detach().double() * fold.inv_std.double())
        elif route == DOT_PRODUCTS:  # Σ_k W G' + (bias − μ) Σ_p δz
            dz = self._fold_sum("dz")
            if dz is None:
                dz = self.grad.reshape(self.batch, self.o, -1).sum(-1).double()
            dy = (self._fold_rows("dots", slice(None)) + fold.shift.double() * dz) if bn.weight is not None else None
        else:
            conv = fold.conv
            y = F.conv2d(self.padded(self.inp), conv.weight.detach(), None if conv.bias is None else conv.bias.detach(),
                         self.stride, self.padding, self.dilation, self.groups)  # the BatchNorm's input
            dy, dz = bn_sums(y, self.grad, bn.running_mean, self.job.kernel(self.dtype), bn.weight is not None)
            dy, dz = (None if dy is None else dy.double()), dz.double()
        pieces = []
        if bn.weight is not None:
            pieces.append(dy * fold.inv_std.double())
        if bn.bias is not None:
            pieces.append(dz)
        self.bn_grads = torch.cat(pieces, dim=1) if pieces else dz[:, :0]
        self._fold_sums.clear()


@lru_cache(maxsize=256)
def tap_split(kernel_size, stride, padding, dilation, c_in: int, size: tuple[int, int], positions: int):
    """See :meth:`ConvPlan.split`: (multi-position columns, (positions, rows, cols) of the single-position
    taps or None, number of zero taps, the same as (n, 3) triples), or None if fewer than two taps
    qualify. Depends on the geometry only (cached)."""
    mask = F.unfold(torch.ones(1, 1, *size), kernel_size, dilation, padding, stride)[0]  # (T, P)
    if mask.shape[1] != positions:
        return None
    counts = (mask != 0).sum(-1)
    single = (counts == 1).nonzero().flatten()
    zero = int((counts == 0).sum())
    if single.numel() + zero < 2:
        return None
    taps = mask.shape[0]
    multi = (counts > 1).nonzero().flatten()
    rows = (torch.arange(c_in)[:, None] * taps + multi[None, :]).flatten()
    info = None
    if single.numel():
        pos = mask[single].argmax(-1)  # the one position each single tap sees
        wo = (size[1] + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
        ho_, wo_ = pos // wo, pos % wo
        i, j = single // kernel_size[1], single % kernel_size[1]
        hi = ho_ * stride[0] - padding[0] + i * dilation[0]
        wi = wo_ * stride[1] - padding[1] + j * dilation[1]
        info = (pos, hi, wi)
    triples = torch.stack(info, 1) if info is not None else torch.zeros(0, 3, dtype=torch.int64)
    return rows, info, zero, triples


def _unfold(x: torch.Tensor, kernel, padding, stride) -> torch.Tensor:
    """``F.unfold`` (dilation 1) as one strided copy of a sliding-window view: (b, C·kh·kw, P).

    aten's CPU im2col is several times slower on larger maps."""
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else x
    windows = x.unfold(2, kernel[0], stride[0]).unfold(3, kernel[1], stride[1])  # (b, C, Ho, Wo, kh, kw)
    b, c, ho, wo = windows.shape[:4]
    return windows.permute(0, 1, 4, 5, 2, 3).reshape(b, c * kernel[0] * kernel[1], ho * wo)


def unfold_taps(x: torch.Tensor, kernel, padding, stride, dilation) -> torch.Tensor:
    """The unfolded input tap-major, (b, P, kh·kw·C): column t·C + c is F.unfold's c·kh·kw + t.

    One strided copy of a window view of the channels-last (zero-padded) input, C innermost."""
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else x
    x = x.contiguous(memory_format=torch.channels_last)
    b, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    sb, sc, sy, sx = x.stride()
    windows = x.as_strided((b, ho, wo, kh, kw, c), (sb, sy * sh, sx * sw, sy * dh, sx * dw, sc), x.storage_offset())
    return windows.reshape(b, ho * wo, kh * kw * c)
