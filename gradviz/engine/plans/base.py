"""What every plan shares: the job, the per-pass sink for materialised gradients, the plan interface.

A *plan* turns one use's captured inputs and output gradient δ into per-sample gradient statistics
of the parameters it uses. Fast plans (conv, linear, norms) return the five partial sums of their
parameters' per-sample gradient directly; the others form the per-sample gradient of each
parameter, chunk by chunk, and hand it to the pass's :class:`Sink`, which reduces it at once
(a parameter with one use) or adds it up over uses (a shared parameter) before reducing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from gradviz.config import settings
from gradviz.engine.capture import ParamRef, Use
from gradviz.engine.kernels import FusedKernel, fused_kernel, resolve_mode
from gradviz.engine.reduce import PARTS, Parts, Totals, reduce_rows
from gradviz.errors import GradvizError

__all__ = ["Job", "Sink", "Plan", "batch_rows"]


@dataclass
class Job:
    """What to compute per group: six statistics (``stats``) or, with ``stats=None``, ‖∇θ‖² only."""

    stats: tuple[str, ...] | None
    chunk_mib: float | None
    c_kernel: bool | str | None  # the compiled C statistics kernel: auto | on | off (None: GRADVIZ_COMPILE)

    def __post_init__(self) -> None:
        mib = settings().chunk_mib if self.chunk_mib is None else float(self.chunk_mib)
        if not mib > 0:
            raise GradvizError(f"chunk_mib must be positive, got {self.chunk_mib}")
        self.budget = mib * 2**20
        self.mode = resolve_mode(self.c_kernel)
        self.need = frozenset(PARTS) if self.stats is not None else frozenset({"s2"})

    def kernel(self, dtype: torch.dtype) -> FusedKernel | None:
        """The compiled statistics kernel for ``dtype`` under this job's mode, or None (eager)."""
        return fused_kernel(self.mode, dtype)


def batch_rows(t: torch.Tensor, batch: int) -> torch.Tensor:
    """``t`` (B·k, ...) as (B, k, ...): sample b owns rows b·k … b·k + k − 1 (the layout convention)."""
    if t.dim() == 0 or t.shape[0] % batch:
        raise GradvizError(f"a tensor of shape {tuple(t.shape)} does not hold whole samples of a batch of {batch} "
                           f"along its first dimension; per-sample gradients need the batch there")
    return t.reshape(batch, t.shape[0] // batch, *t.shape[1:])


class Sink:
    """Per-sample gradients of parameters, materialised by plans chunk by chunk (one per pass).

    A parameter with one use is reduced as its chunks arrive; a parameter with several uses
    (shared weights, pieces of a packed weight) is summed over its uses in a (B, numel) buffer
    and reduced at the end."""

    def __init__(self, batch: int, job: Job, uses_per_param: dict[int, int]) -> None:
        self.batch, self.job, self.uses_per_param = batch, job, uses_per_param
        self.totals: dict[int, Totals] = {}
        self.sums: dict[int, torch.Tensor] = {}
        self.refs: dict[int, ParamRef] = {}

    def emit(self, ref: ParamRef, grad: torch.Tensor, sl: slice) -> None:
        """Per-sample gradients (b, *param.shape) of samples ``sl`` (in order) of ``ref``'s parameter."""
        key = id(ref.param)
        self.refs[key] = ref
        flat = grad.reshape(grad.shape[0], -1)
        if self.uses_per_param.get(key, 1) == 1:
            kernel = self.job.kernel(flat.dtype)
            self.totals.setdefault(key, Totals(self.batch, self.job.need)).put(reduce_rows(flat, self.job.need, kernel))
            return
        if key not in self.sums:
            self.sums[key] = flat.new_zeros(self.batch, flat.shape[1], dtype=torch.float64)
        self.sums[key][sl] += flat

    def emit_derived(self, derived: torch.Tensor, deps: list[tuple[ParamRef, torch.Tensor]], grad: torch.Tensor,
                     sl: slice) -> None:
        """Per-sample gradients (b, *derived.shape) of a tensor computed from parameters alone, taken
        back to those parameters (the tensors the graph holds) by one batched vector-Jacobian product."""
        got = torch.autograd.grad(derived, [t for _, t in deps], grad_outputs=grad.to(derived.dtype),
                                  retain_graph=True, allow_unused=True, is_grads_batched=True)
        for (ref, _), g in zip(deps, got):
            self.emit(ref, torch.zeros(grad.shape[0], *ref.param.shape, dtype=grad.dtype) if g is None else g, sl)

    def parts(self) -> dict[int, Parts]:
        """Partial sums per parameter id of everything emitted."""
        out = {k: t.result(None) for k, t in self.totals.items()}
        for k, s in self.sums.items():
            out[k] = {p: v.double() for p, v in reduce_rows(s, self.job.need, self.job.kernel(s.dtype)).items()}
        return out


class Plan:
    """How one use's per-sample gradients are formed and reduced (subclasses: one per kind).

    The engine sets :attr:`grad` (δ of the use's output) in the use's tensor hook, then calls
    :meth:`run`. A plan that returns partial sums returns {group: parts}; one that materialises
    emits to the sink and returns {}. ``kind`` names the plan in the coverage report."""

    kind = "plan"

    def __init__(self, use: Use, job: Job, sink: Sink, batch: int) -> None:
        self.use, self.job, self.sink, self.batch = use, job, sink, batch
        self.need = job.need
        self.grad: torch.Tensor | None = None

    @classmethod
    def applies(cls, use: Use, uses_per_param: dict[int, int]) -> bool:
        """Whether this plan can serve ``use`` (the registry asks each plan kind in turn)."""
        return False

    @property
    def chunk_count(self) -> int:
        """Progress ticks this plan will report (one per chunk)."""
        return 1

    def run(self, tick: Callable[[], None]) -> dict[str, Parts]:
        raise NotImplementedError

    def describe(self) -> str:
        """How the per-sample gradients are formed (the coverage report's 'path' column)."""
        return self.kind

    def release(self) -> None:
        """Drop what the plan computed or was handed for its run (δ, unfolded inputs, bmm operands, a folded
        BatchNorm's gradients) once every plan of its tensor hook has run: the backward then goes on to earlier
        layers without every later layer's δ kept alive by its plan."""
        for name in _RUN_STATE:
            if name in self.__dict__:
                setattr(self, name, None)


# attributes a plan fills while it runs (set to None by Plan.release)
_RUN_STATE = ("grad", "_d_all", "_bmm_operands", "_u_all", "_u_rows", "bn_grads")
