"""Normalisation layers' affine parameters, in closed form from the normalised input and δ.

With x̂ the normalised input and δ the output gradient, y = γ ⊙ x̂ + β gives per sample
∇γ_b = Σ δ_b ⊙ x̂_b and ∇β_b = Σ δ_b, summed over every position of the sample:

- BatchNorm (eval mode, running statistics): x̂ = (x − μ)/σ per channel (dimension 1); a BatchNorm
  folded into the convolution before it gets its sums from that convolution's plan;
- LayerNorm (any ``normalized_shape``; a ViT's tokens, ConvNeXt's channels-last maps): x̂ over the
  last dimensions, per row, and the rows of a sample are summed;
- GroupNorm: x̂ per (sample, group), affine per channel (dimension 1).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from gradviz.engine.capture import Use
from gradviz.engine.kernels import FusedKernel
from gradviz.engine.plans.base import Job, Plan, Sink, batch_rows
from gradviz.engine.reduce import Parts, Totals, reduce_rows
from gradviz.errors import GradvizError

__all__ = ["BatchNormPlan", "FoldedBatchNormPlan", "LayerNormPlan", "GroupNormPlan", "bn_sums"]


def bn_sums(x: torch.Tensor, d: torch.Tensor, mean: torch.Tensor, fused: FusedKernel | None, centred: bool
            ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(Σ_s δ (x − μ_c), Σ_s δ) per sample and channel of a BatchNorm input x and output gradient δ,
    (b, C) each; centred first, so a large mean cannot cancel digits away (None if not ``centred``)."""
    b, c = x.shape[0], x.shape[1]
    x, d = x.reshape(b, c, -1), d.reshape(b, c, -1)
    # the compiled kernel runs one row (sample, channel) at a time: for small maps eager is faster
    both = fused.bn_parts(x, d, mean) if fused is not None and x.shape[-1] >= 64 else None
    if both is not None:
        return both[..., 0], both[..., 1]
    dx = (x - mean.view(1, c, 1).to(x.dtype)).mul_(d).sum(-1) if centred else None
    return dx, d.sum(-1)


class _AffinePlan(Plan):
    """Shared loop: [∇γ | ∇β] per sample, (b, 2C), for chunks of samples within the memory budget."""

    def __init__(self, use: Use, job: Job, sink: Sink, batch: int) -> None:
        super().__init__(use, job, sink, batch)
        spec = use.spec
        self.weight, self.bias = spec.get("weight"), spec.get("bias")
        self.x = use.inp
        self.k = batch_rows(self.x, batch).shape[1]  # rows of the input per sample
        sample = self.x[0].numel() * self.k * max(self.x.element_size(), 4)
        self.step = max(1, min(batch, int(job.budget // max(1, 3 * sample))))

    @classmethod
    def applies(cls, use: Use, uses_per_param: dict[int, int]) -> bool:
        return use.op == cls.op and use.inp is not None

    @property
    def chunk_count(self) -> int:
        return -(-self.batch // self.step)

    def grads(self, sl: slice) -> torch.Tensor:
        raise NotImplementedError

    def rows(self, sl: slice) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(input rows, output-gradient rows, number of samples) of samples ``sl``."""
        lo, hi = sl.start, min(sl.stop, self.batch)
        return self.x[lo * self.k: hi * self.k], self.grad[lo * self.k: hi * self.k], hi - lo

    def per_sample(self, t: torch.Tensor, b: int) -> torch.Tensor:
        """(b·k, C) per-row sums as (b, C) per-sample sums."""
        return t if self.k == 1 else t.reshape(b, self.k, -1).sum(1)

    def run(self, tick: Callable[[], None]) -> dict[str, Parts]:
        totals = Totals(self.batch, self.need)
        for i in range(0, self.batch, self.step):
            g = self.grads(slice(i, i + self.step))
            totals.put(reduce_rows(g, self.need, self.job.kernel(g.dtype)))
            tick()
        return {self.use.group: totals.result(None)}

    def _join(self, dw: torch.Tensor | None, db: torch.Tensor) -> torch.Tensor:
        pieces = ([dw] if self.weight is not None else []) + ([db] if self.bias is not None else [])
        return torch.cat(pieces, dim=1) if pieces else db[:, :0]


class BatchNormPlan(_AffinePlan):
    """An eval-mode BatchNorm that runs on its own (not folded)."""

    kind = op = "batch_norm"

    def __init__(self, use: Use, job: Job, sink: Sink, batch: int) -> None:
        super().__init__(use, job, sink, batch)
        spec = use.spec
        if spec.get("training") or spec.get("running_mean") is None:
            raise GradvizError(f"BatchNorm {use.group!r} normalises with batch statistics (train mode or no running "
                               f"statistics): samples interact, per-sample gradients are undefined")

    def grads(self, sl: slice) -> torch.Tensor:
        spec = self.use.spec
        x, d, b = self.rows(sl)
        dx, db = bn_sums(x, d, spec["running_mean"], self.job.kernel(x.dtype), self.weight is not None)
        dw = None if dx is None else self.per_sample(dx, b) * torch.rsqrt(spec["running_var"].to(dx.dtype) + spec["eps"])
        return self._join(dw, self.per_sample(db, b))


class FoldedBatchNormPlan(Plan):
    """A BatchNorm folded into the convolution before it: [∇γ, ∇β] come from that convolution's plan."""

    kind = "batch_norm (folded)"

    def __init__(self, use: Use, job: Job, sink: Sink, batch: int) -> None:
        super().__init__(use, job, sink, batch)
        self.source = None  # the ConvPlan, set by the engine

    def run(self, tick: Callable[[], None]) -> dict[str, Parts]:
        g = self.source.bn_grads
        tick()
        return {self.use.group: reduce_rows(g, self.need, self.job.kernel(g.dtype))}


class LayerNormPlan(_AffinePlan):
    """LayerNorm over the last ``len(normalized_shape)`` dimensions; a sample's rows are summed."""

    kind = op = "layer_norm"

    def grads(self, sl: slice) -> torch.Tensor:
        spec = self.use.spec
        n = math.prod(spec["normalized_shape"] if isinstance(spec["normalized_shape"], (tuple, list, torch.Size))
                      else (spec["normalized_shape"],))
        x, d, b = self.rows(sl)
        x, d = x.reshape(-1, n), d.reshape(-1, n)
        if "rstd" in spec:  # the forward's own row statistics (capture keeps them)
            lo, hi = sl.start * self.k, min(sl.stop, self.batch) * self.k  # rows of dimension 0, as x
            mean, rstd = spec["mean"][lo:hi].reshape(-1, 1), spec["rstd"][lo:hi].reshape(-1, 1)
        else:
            mean = x.mean(-1, keepdim=True)
            rstd = torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + spec["eps"])
        xhat = (x - mean).mul_(rstd)
        dw = None if self.weight is None else (d * xhat).reshape(b, -1, n).sum(1)
        return self._join(dw, d.reshape(b, -1, n).sum(1))


class GroupNormPlan(_AffinePlan):
    """GroupNorm: statistics per (sample, group), affine per channel."""

    kind = op = "group_norm"

    def grads(self, sl: slice) -> torch.Tensor:
        spec = self.use.spec
        x, d, b = self.rows(sl)
        r, c = x.shape[0], x.shape[1]
        g = int(spec["num_groups"])
        xg = x.reshape(r, g, -1)
        mean = xg.mean(-1, keepdim=True)
        var = xg.var(-1, unbiased=False, keepdim=True)
        xhat = ((xg - mean) * torch.rsqrt(var + spec["eps"])).reshape(r, c, -1)
        d = d.reshape(r, c, -1)
        dw = None if self.weight is None else self.per_sample((d * xhat).sum(-1), b)
        return self._join(dw, self.per_sample(d.sum(-1), b))
