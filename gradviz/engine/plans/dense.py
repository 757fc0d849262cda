"""Layers whose per-sample weight gradient is a product G_b = Δ_b U_bᵀ: Linear and Conv2d.

Per sample b and group: Δ_b (Og × P) the output gradient over P positions (tokens, pixels, the
rows of a Swin window), U_b (Kg × P) the input seen at each position (a Linear's input rows, a
conv's unfolded input). G_b is formed by one of several *strategies* (timed once per layer shape
by :mod:`gradviz.engine.calibrate`), always for a chunk of samples whose memory stays within the
job's budget, and reduced to the five partial sums:

- ``rank1`` (P = 1): G_b = δ_b a_bᵀ needs no product at all (:func:`~gradviz.engine.reduce.rank_one_parts`);
- ``bmm``: one batched matmul into a reused buffer, then one fused reduction pass;
- ``gram`` (‖G_b‖² only): the Gram or "ghost" norm Σ_pq (UᵀU)_pq (ΔᵀΔ)_pq, never forming G_b —
  cheaper than materialising where positions are few (T²(d_in + d_out) against T·d_in·d_out);
- conv-only strategies in :mod:`.conv`.

The bias gradient Σ_p Δ_b is added once per layer (:meth:`DensePlan.layer_parts`).
"""

from __future__ import annotations

import math
import threading
from typing import Callable

import torch

from gradviz.engine.capture import Use
from gradviz.engine.plans.base import Job, Plan, Sink
from gradviz.engine.reduce import Parts, rank_one_parts, reduce_rows

__all__ = ["DensePlan", "Strategy", "SPEED_CHUNK_BYTES", "scratch_buffer"]

# Materialised gradients are reduced in chunks that stay in the cores' L2 caches, however large
# the memory budget: each pass over a chunk in cache is ~2x faster than one in L3. Calibration
# tries these sizes (and the budget's); the best depends on the per-op overhead of the layer.
SPEED_CHUNK_BYTES = (2 * 2**20, 4 * 2**20)
GRAM_SLACK = 8  # the Gram form is tried where its cost is within this factor of materialising


class Strategy:
    """One way of forming a dense layer's per-sample gradients (see the module docstring).

    ``sample_bytes``: memory per sample of a chunk; ``materialises``: whether cache-sized chunks are
    worth trying; ``prepare``: what every chunk reads, built once per layer (timed with it)."""

    name = "strategy"
    materialises = False

    def sample_bytes(self, plan: "DensePlan") -> int:
        return 0

    def prepare(self, plan: "DensePlan") -> None:
        return None

    def setup_estimate(self, plan: "DensePlan") -> float:
        return 0.0

    def parts(self, plan: "DensePlan", sl: slice, buf: torch.Tensor | None) -> Parts | torch.Tensor:
        raise NotImplementedError


class Bmm(Strategy):
    """Materialise G_b for a chunk with one batched matmul into a reused buffer, then reduce it."""

    name, materialises = "bmm", True

    def sample_bytes(self, plan):
        return plan.grad_bytes + plan.chunk_unfold_bytes

    def prepare(self, plan):
        return plan.prepare_bmm()

    def setup_estimate(self, plan):
        return plan.unfold_estimate()

    def parts(self, plan, sl, buf):
        return plan.bmm_parts(sl, buf)


class Gram(Strategy):
    """‖G_b‖² from the Gram matrices of U_b and Δ_b (the L2-only path)."""

    name = "gram"

    def sample_bytes(self, plan):
        return plan.chunk_unfold_bytes + 2 * plan.groups * plan.positions ** 2 * plan.es

    def prepare(self, plan):
        return plan.operands(slice(None)) if plan.unfold_once else None

    def setup_estimate(self, plan):
        return plan.unfold_estimate()

    def parts(self, plan, sl, buf):
        u, d = plan.operands(sl)
        return {"s2": gram_sq(u, plan.scaled(d))}


def gram_sq(u: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """‖Δ Uᵀ‖²_F per sample from the Gram matrices: Σ_pq (UᵀU)_pq (ΔᵀΔ)_pq, (b,)."""
    return (torch.matmul(u.transpose(-1, -2), u) * torch.matmul(d.transpose(-1, -2), d)).sum((1, 2, 3))


_SCRATCH = threading.local()


def scratch_buffer(plan: "DensePlan", samples: int) -> torch.Tensor:
    """The ``bmm`` strategy's output buffer: one per thread, reused across chunks, layers and calls
    (a fresh multi-MiB allocation costs a page fault per 4 KiB on every first touch)."""
    n = samples * plan.o * (plan.k // plan.groups)
    key = (plan.dtype, plan.device)
    buffers = getattr(_SCRATCH, "buffers", {})
    buf = buffers.get(key)
    if buf is None or buf.numel() < n:
        _SCRATCH.buffers = {**buffers, key: torch.empty(n, dtype=plan.dtype, device=plan.device)}
        buf = _SCRATCH.buffers[key]
    return buf[:n]


class DensePlan(Plan):
    """Shared machinery of Linear and Conv2d plans (subclasses say how U and Δ are read)."""

    kind = "dense"
    STRATEGIES: dict[str, Strategy] = {"bmm": Bmm(), "gram": Gram()}

    def __init__(self, use: Use, job: Job, sink: Sink, batch: int) -> None:
        super().__init__(use, job, sink, batch)
        spec = use.spec
        self.weight, self.bias_t = spec["weight"], spec.get("bias")
        # a bias that is a parameter (a folded conv's twin has a bias where the original conv has none)
        self.bias = self.bias_t is not None and any(t is self.bias_t for t in use.used)
        self.dtype, self.device = use.out.dtype, use.out.device
        self.es = max(torch.empty(0, dtype=self.dtype).element_size(), 4)
        self.fused = job.kernel(self.dtype) if len(self.need) > 1 else None
        self.cheap: set[str] = set()
        self._d_all: torch.Tensor | None = None
        self._bmm_operands: tuple[torch.Tensor, torch.Tensor] | None = None
        self.unfold_once = True
        self.chunk_unfold_bytes = 0
        self.groups = self.o = self.k = self.positions = 1
        self.candidates: list[str] = []

    def _finish_init(self) -> None:
        """Sizes and candidate strategies, once groups/o/k/positions are known."""
        g, p = self.groups, self.positions
        og, kg = self.o // g, self.k // g
        self.numel = self.o * kg + (self.o if self.bias else 0)
        self.grad_bytes = g * og * kg * self.es  # one sample's materialised weight gradient
        if p == 1:
            self.candidates = ["rank1"]
            return
        self.candidates = ["bmm"]
        if self.job.stats is None:
            self.candidates.append("gram")

    def worth_trying(self, strategy: str) -> bool:
        """Whether calibration times ``strategy`` (every candidate is exact; a forced one always runs): one
        sample's memory within the budget, and the Gram form only where its cost P²·(Og + Kg) per group is
        within :data:`GRAM_SLACK` of materialising's P·Og·Kg — a depthwise 7×7 conv on 56×56 positions
        would need P² = 9.8M entries per channel and sample."""
        if self.sample_bytes(strategy) > self.job.budget:
            return False
        og, kg = self.o // self.groups, self.k // self.groups
        return strategy != "gram" or self.positions * (og + kg) <= GRAM_SLACK * og * kg

    @property
    def rank1(self) -> bool:
        return self.candidates == ["rank1"]

    # ---- operands

    def operands(self, sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(U (b, g, Kg, P), Δ (b, g, Og, P)) for samples ``sl`` (Δ as the layer's output gradient)."""
        raise NotImplementedError

    def scaled(self, d: torch.Tensor) -> torch.Tensor:
        """Δ as the gradient of this layer's own output (a folded conv rescales it; others: as is)."""
        return d

    def delta(self, sl: slice) -> torch.Tensor:
        """Δ (b, g, Og, P) for samples ``sl``, scaled where needed, prepared once for the whole layer."""
        if self._d_all is None:
            self._d_all = self.scaled(self.operands_delta())
        return self._d_all[sl]

    def operands_delta(self) -> torch.Tensor:
        return self.operands(slice(None))[1]

    def unfold_estimate(self) -> float:
        return 0.0

    # ---- planning

    def sample_bytes(self, strategy: str) -> int:
        return self.STRATEGIES[strategy].sample_bytes(self) if strategy != "rank1" else 0

    def chunk(self, strategy: str, limit: float | None = None) -> int:
        """Samples per chunk so that ``strategy``'s memory stays within ``limit`` (default: the budget)."""
        per = self.sample_bytes(strategy)
        limit = self.job.budget if limit is None else min(limit, self.job.budget)
        return self.batch if per == 0 else max(1, min(self.batch, int(limit // per)))

    def plans(self) -> list[tuple[str, int]]:
        """Candidate (strategy, samples per chunk): cache-sized chunks (memory-bound layers) and
        budget-sized chunks (compute-bound layers: fewer, larger matmuls). The first is the default."""
        out: list[tuple[str, int]] = []
        threads = torch.get_num_threads()
        for name in [n for n in self.candidates if self.worth_trying(n)] or self.candidates[:1]:
            materialises = name != "rank1" and self.STRATEGIES[name].materialises
            for limit in (*SPEED_CHUNK_BYTES, None) if materialises else (None,):
                step = self.chunk(name, limit)
                if threads < step < self.batch:  # whole samples per thread: a batched matmul splits over them
                    step -= step % threads
                if (name, step) not in out:
                    out.append((name, step))
        return out

    def signature(self) -> tuple:
        """The layer's calibration key: everything the relative speed of the strategies depends on but the batch
        (:class:`gradviz.engine.calibrate.Calibration` adds the batch's power-of-two bucket)."""
        return (type(self).__name__, self.groups, self.o, self.k, self.positions, self.bias,
                self.dtype, str(self.device), self.job.stats is None, self.fused is not None, self.job.budget)

    @property
    def chunk_count(self) -> int:
        from gradviz.engine.calibrate import CALIBRATION

        step = CALIBRATION.known(self)
        return -(-self.batch // (step[1] if step else self.plans()[0][1]))

    # ---- partial sums

    def parts(self, strategy: str, sl: slice, buf: torch.Tensor | None) -> Parts | torch.Tensor:
        """Partial sums of the weight part of the per-sample gradients of samples ``sl``: {part: (b,)},
        or (b, 5) float64 in PARTS order from the fused kernel. The bias is added once per layer."""
        if strategy == "rank1":
            u, d = self.operands(sl)
            return rank_one_parts(self.scaled(d)[..., 0], u[..., 0], False, self.need, self.fused)
        return self.STRATEGIES[strategy].parts(self, sl, buf)

    def prepare(self, strategy: str) -> None:
        if strategy != "rank1":
            self.STRATEGIES[strategy].prepare(self)

    def setup_estimate(self, strategy: str) -> float:
        return 0.0 if strategy == "rank1" else self.STRATEGIES[strategy].setup_estimate(self)

    def buffer(self, strategy: str, samples: int) -> torch.Tensor | None:
        return scratch_buffer(self, samples) if strategy == "bmm" else None

    def prepare_bmm(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """δ (scaled) and Uᵀ of the whole layer, built once, where U of the whole layer fits the budget."""
        if not self.unfold_once:
            return None
        if self._bmm_operands is None:
            u = self.operands(slice(None))[0]
            self._bmm_operands = (self.delta(slice(None)), u.transpose(-1, -2))
        return self._bmm_operands

    def bmm_parts(self, sl: slice, buf: torch.Tensor | None) -> Parts | torch.Tensor:
        """One chunk of ``bmm``: a batched matmul into ``buf``, then one reduction pass."""
        ops = self.prepare_bmm()
        if ops is not None:
            d, ut = ops[0][sl], ops[1][sl]
        else:
            u, _ = self.operands(sl)
            d, ut = self.delta(sl), u.transpose(-1, -2)
        shape = (d.shape[0], d.shape[1], d.shape[2], ut.shape[3])
        out = None if buf is None else buf[: math.prod(shape)].view(shape)
        flat = torch.matmul(d, ut, out=out).reshape(shape[0], -1)
        if self.fused is not None:
            return self.fused(flat)
        return reduce_rows(flat, self.need - self.cheap, scratch=buf is not None)

    def layer_parts(self, strategy: str) -> Parts | None:
        """Parts computed once for all samples of the layer: the bias gradient Σ_p Δ_op."""
        if not self.bias:
            return None
        return reduce_rows(self.delta(slice(None)).sum(-1).reshape(self.batch, -1), self.need, self.fused)

    def finish(self, strategy: str) -> None:
        """Work left after the last chunk (a folded BatchNorm's gradients, see ConvPlan)."""

    # ---- the whole layer

    def run(self, tick: Callable[[], None]) -> dict[str, Parts]:
        from gradviz.engine.calibrate import CALIBRATION

        parts = CALIBRATION.run(self, tick)
        return {self.use.group: parts}

    def describe(self) -> str:
        from gradviz.engine.calibrate import CALIBRATION

        chosen = CALIBRATION.known(self)
        if chosen:
            return f"{self.kind}: {chosen[0]}, {chosen[1]} samples per chunk"
        if len(self.candidates) == 1:
            return f"{self.kind}: {self.candidates[0]}"
        return f"{self.kind}: fastest of {' | '.join(self.candidates)} (timed at first use)"

