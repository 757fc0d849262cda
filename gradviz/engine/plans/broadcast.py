"""Parameters broadcast over the batch: position embeddings, class tokens, layer scales, bias tables.

``out = x + c·P``, ``out = x · P`` and ``out = P.expand(B, ...)``, with P a parameter or a tensor
computed from parameters alone (``table[index]``, ``gamma.reshape(1, -1, 1, 1)``), broadcast to the
batch's shape. Per sample b: ∇P_b = c · Σ δ_b (add, expand) or Σ δ_b ⊙ x_b (mul), summed over the
sample's rows and over the dimensions P was broadcast along. For a derived P the gradient flows on
to its parameters by a batched vector-Jacobian product (:meth:`~.base.Sink.emit_derived`).
"""

from __future__ import annotations

from typing import Callable

import torch

from gradviz.engine.capture import Use
from gradviz.engine.plans.base import Job, Plan, Sink, batch_rows
from gradviz.engine.reduce import Parts
from gradviz.errors import GradvizError

__all__ = ["BroadcastPlan", "sum_to"]


def sum_to(t: torch.Tensor, shape: torch.Size, batch: int) -> torch.Tensor:
    """Per-sample sums of ``t`` (B·k, *S) over the sample's rows and the dimensions along which a
    tensor of ``shape`` was broadcast to S: (B, *shape)."""
    if len(shape) > t.dim():
        raise GradvizError(f"a tensor of shape {tuple(shape)} cannot broadcast to {tuple(t.shape)}")
    full = (1,) * (t.dim() - len(shape)) + tuple(shape)  # aligned to the right, as broadcasting does
    if full[0] != 1:
        raise GradvizError(f"a tensor of shape {tuple(shape)} varies along the batch dimension of "
                           f"{tuple(t.shape)}: it is not one shared parameter")
    out = batch_rows(t, batch).sum(1)  # (B, *S)
    dims = tuple(i for i in range(1, out.dim()) if full[i] == 1 and out.shape[i] != 1)
    if dims:
        out = out.sum(dims, keepdim=True)
    return out.reshape(batch, *shape)


def _shared_row(use: Use, derived: torch.Tensor, deps: list) -> torch.Tensor:
    """Row 0 of a tensor computed from parameters alone that carries the batch dimension (XCiT's and EdgeNeXt's
    Fourier position encoding: a grid repeated B times, then projected), as a node of the kept graph. Its rows
    are one function of the parameters repeated, so a sample's gradient is the vector-Jacobian product of row 0
    with that sample's summed output gradient; rows that differ are refused, naming the op."""
    if not bool((derived == derived[:1]).all()):
        owners = sorted({ref.group for ref, _ in deps})
        raise GradvizError(f"{use.spec['kind']} of a tensor of shape {tuple(derived.shape)} computed from the "
                           f"parameters of {', '.join(owners)} alone differs between batch rows: its per-sample "
                           "gradients are not supported")
    with torch.enable_grad():
        return derived[0]


class BroadcastPlan(Plan):
    """add / sub / mul / expand of one parameter (or derived tensor) over the batch."""

    kind = "broadcast"

    @classmethod
    def applies(cls, use: Use, uses_per_param: dict[int, int]) -> bool:
        if use.op != "broadcast":
            return False
        operands = [a for a in use.args if isinstance(a, torch.Tensor)]
        paramish = len(use.refs) + len(use.derived)
        if use.spec["kind"] == "expand":
            return paramish == 1 and isinstance(use.args[0], torch.Tensor)
        return paramish == 1 and len(operands) == 2 and len(use.args) == 2

    def __init__(self, use: Use, job: Job, sink: Sink, batch: int) -> None:
        super().__init__(use, job, sink, batch)
        if use.refs:  # the parameter itself, or its twin's copy (same values)
            self.used, self.ref, self.deps = use.used[0], use.refs[0], None
            self.target = self.used
        else:
            self.used, deps = use.derived[0]
            self.target, self.deps, self.ref = self.used, deps, None
        if self.deps is not None and self.used.dim() == use.out.dim() and self.used.shape[0] == use.out.shape[0] > 1:
            self.target = _shared_row(use, self.used, self.deps)
        kind = use.spec["kind"]
        pos = next(i for i, a in enumerate(use.args) if a is self.used)
        self.other = None if kind == "expand" else use.args[1 - pos]
        alpha = use.spec.get("alpha", 1)
        self.mode = "mul" if kind == "mul" else "add"
        self.coef = {"add": (1, alpha), "sub": (1, -alpha), "rsub": (-1, 1)}.get(kind, (1, 1))[pos] \
            if kind != "expand" else 1
        per_sample = use.out[0].numel() * (use.out.shape[0] // batch) * max(use.out.element_size(), 4)
        self.step = max(1, min(batch, int(job.budget // max(1, 2 * per_sample))))

    @property
    def chunk_count(self) -> int:
        return -(-self.batch // self.step)

    def run(self, tick: Callable[[], None]) -> dict[str, Parts]:
        k = self.use.out.shape[0] // self.batch
        for i in range(0, self.batch, self.step):
            sl = slice(i, i + self.step)
            rows = slice(i * k, min(i + self.step, self.batch) * k)
            d = self.grad[rows]
            if self.mode == "mul":
                other = self.other[rows] if self.other.dim() and self.other.shape[0] == self.use.out.shape[0] \
                    else self.other
                d = d * other
            g = sum_to(d, self.target.shape, rows.stop // k - rows.start // k)
            if self.coef != 1:
                g = g * self.coef
            if self.deps is None:
                self.sink.emit(self.ref, g, sl)
            else:
                self.sink.emit_derived(self.target, self.deps, g, sl)
            tick()
        return {}

    def describe(self) -> str:
        what = self.use.spec["kind"]
        return f"broadcast ({what}{', via derived tensor' if self.deps is not None else ''})"
