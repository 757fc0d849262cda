"""The exact fallback for any other use: a per-sample vector-Jacobian product of the single op.

For a call ``out = f(x, θ, ...)`` with no plan of its own (``torch.matmul(x, W)``, ``F.prelu``,
``F.embedding``, a shared weight, a weight reached through ``chunk``), the per-sample
gradient of each parameter-valued input is ∂⟨f(x_b, θ), δ_b⟩/∂θ, computed for a chunk of samples at
once by ``torch.func.vmap`` over the samples of ``torch.func.vjp`` of ``f`` alone, with the captured
inputs. Where ``f`` cannot run on one sample's rows under vmap, the same products come from the
recorded graph with δ masked to each sample (``is_grads_batched``), slower but exact. Derived
inputs continue to their parameters (:meth:`~.base.Sink.emit_derived`). Reported as ``generic``.
"""

from __future__ import annotations

from typing import Callable

import torch

from gradviz.engine.capture import Use, _replace
from gradviz.engine.plans.base import Job, Plan, Sink, batch_rows
from gradviz.engine.reduce import Parts
from gradviz.errors import GradvizError

__all__ = ["GenericPlan"]


class GenericPlan(Plan):
    """Any use with a single tensor output (see the module docstring)."""

    kind = "generic"

    @classmethod
    def applies(cls, use: Use, uses_per_param: dict[int, int]) -> bool:
        return isinstance(use.out, torch.Tensor)

    def __init__(self, use: Use, job: Job, sink: Sink, batch: int) -> None:
        super().__init__(use, job, sink, batch)
        if not isinstance(use.out, torch.Tensor):
            raise GradvizError(f"parameters {[r.name for r in use.params]} are used by {getattr(use.func, '__name__', use.func)} "
                               f"with several outputs; per-sample gradients of such a use are not supported")
        # (tensor used, its parameter, or the parameters behind a derived tensor)
        self.targets: list[tuple[torch.Tensor, object, list | None]] = \
            [(t, r, None) for t, r in zip(use.used, use.refs)] + [(t, None, d) for t, d in use.derived]
        rows = use.out.shape[0] // batch if use.out.dim() and use.out.shape[0] % batch == 0 else 0
        if not rows:
            raise GradvizError(f"the output of {getattr(use.func, '__name__', 'an op')} using {[r.name for r in use.params]} "
                               f"has shape {tuple(use.out.shape)}: its first dimension does not hold whole samples "
                               f"of the batch ({batch})")
        self.k = rows
        per_sample = sum(t.numel() for t, _, _ in self.targets) + use.out[0].numel() * rows
        self.step = max(1, min(batch, int(job.budget // max(1, 4 * per_sample * 4))))
        self.vmapped = True

    @property
    def chunk_count(self) -> int:
        return -(-self.batch // self.step)

    def _per_sample_vmap(self, sl: slice) -> list[torch.Tensor]:
        use = self.use
        lo, hi = sl.start, min(sl.stop, self.batch)
        batch_ids = [id(t) for t in use.batch]
        slices = [batch_rows(t, self.batch)[lo:hi] for t in use.batch]  # (b, k, ...)
        delta = batch_rows(self.grad, self.batch)[lo:hi]
        primals = [t.detach() for t, _, _ in self.targets]
        target_ids = [id(t) for t, _, _ in self.targets]

        def one(*xs_and_d):
            xs, d = xs_and_d[:-1], xs_and_d[-1]

            def f(*ps):
                swap = dict(zip(batch_ids, xs))
                swap.update(zip(target_ids, ps))
                return use.func(*_replace(use.args, swap), **_replace(use.kwargs, swap))

            _, vjp = torch.func.vjp(f, *primals)
            return vjp(d)

        return list(torch.func.vmap(one)(*slices, delta))

    def _per_sample_masked(self, sl: slice) -> list[torch.Tensor]:
        lo, hi = sl.start, min(sl.stop, self.batch)
        k = self.k
        grads = self.grad.new_zeros(hi - lo, *self.grad.shape)
        for j, b in enumerate(range(lo, hi)):
            grads[j, b * k:(b + 1) * k] = self.grad[b * k:(b + 1) * k]
        got = torch.autograd.grad(self.use.out, [t for t, _, _ in self.targets], grad_outputs=grads,
                                  retain_graph=True, allow_unused=True, is_grads_batched=True)
        return [torch.zeros(hi - lo, *t.shape, dtype=grads.dtype) if g is None else g
                for g, (t, _, _) in zip(got, self.targets)]

    def run(self, tick: Callable[[], None]) -> dict[str, Parts]:
        for i in range(0, self.batch, self.step):
            sl = slice(i, min(i + self.step, self.batch))
            grads = None
            if self.vmapped:
                try:
                    grads = self._per_sample_vmap(sl)
                except Exception:  # the op does not run on one sample's rows under vmap: the graph instead
                    self.vmapped = False
            if grads is None:
                grads = self._per_sample_masked(sl)
            for (t, ref, deps), g in zip(self.targets, grads):
                if deps is None:
                    self.sink.emit(ref, g, sl)
                else:
                    self.sink.emit_derived(t, deps, g, sl)
            tick()
        return {}

    def describe(self) -> str:
        name = getattr(self.use.func, "__name__", str(self.use.func))
        return f"generic ({name}, {'vmap' if self.vmapped else 'masked VJP'})"
