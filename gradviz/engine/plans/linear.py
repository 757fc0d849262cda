"""Linear over any leading dimensions: tokens, channels-last positions, the rows of attention windows.

F.linear(x, W, b) with x (B·k, ..., K) and δ (B·k, ..., O): sample b owns P = (rows per sample) ×
(positions per row) input rows a_t, and ∇W_b = Σ_t δ_t a_tᵀ = Δ_b U_bᵀ with U_b (K × P), Δ_b (O × P),
∇b_b = Σ_t δ_t. One row per sample (a classifier head, a pooled feature) is rank one; more rows use
:mod:`.dense`'s strategies: ``bmm`` materialises it chunk by chunk, ``gram`` (‖∇W_b‖² only) takes
Σ_ts (a_t·a_s)(δ_t·δ_s), whichever calibration finds fastest for the layer.
"""

from __future__ import annotations

import torch

from gradviz.engine.capture import Use
from gradviz.engine.plans.base import Job, Sink, batch_rows
from gradviz.engine.plans.dense import DensePlan, gram_sq
from gradviz.engine.reduce import Parts, merge

__all__ = ["LinearPlan"]


class LinearPlan(DensePlan):
    """``F.linear`` (nn.Linear, and weights used functionally: attention projections, Swin's qkv)."""

    kind = "linear"

    @classmethod
    def applies(cls, use: Use, uses_per_param: dict[int, int]) -> bool:
        return use.op == "linear" and use.inp is not None and use.inp.dim() >= 1

    def __init__(self, use: Use, job: Job, sink: Sink, batch: int) -> None:
        super().__init__(use, job, sink, batch)
        self.o, self.k = self.weight.shape
        rows = batch_rows(use.inp.reshape(-1, self.k) if use.inp.dim() == 1 else use.inp, batch)
        self.positions = rows[0].numel() // self.k
        self._finish_init()
        # eager path: ‖G_b‖² from the Gram form once per layer where cheaper than a pass over G_b
        gram_cost = self.positions ** 2 * (self.o + self.k + 1)
        if self.fused is None and not self.rank1 and "s2" in self.need and gram_cost < self.o * self.k:
            self.cheap = {"s2"}

    def operands(self, sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.use.inp.reshape(self.batch, self.positions, self.k)[sl]
        d = self.grad.reshape(self.batch, self.positions, self.o)[sl]
        return x.transpose(1, 2).unsqueeze(1), d.transpose(1, 2).unsqueeze(1)

    def layer_parts(self, strategy: str) -> Parts | None:
        extra = super().layer_parts(strategy)
        if strategy == "bmm" and self.cheap:
            extra = merge(extra, {"s2": gram_sq(self.operands(slice(None))[0], self.delta(slice(None)))})
        return extra
