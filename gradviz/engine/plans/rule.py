"""The plan of a use served by its layer kind's registered rule (:mod:`gradviz.engine.rules`).

For each chunk of samples within the memory budget the rule turns the chunk's input rows and
output-gradient rows into per-row gradients of the call's arguments; the rows of one sample are
added up and the per-sample gradient of each parameter goes to the pass's :class:`~.base.Sink`,
which reduces it to the partial sums. Exact for any kind with a rule, with no strategy, calibration
or compiled code of its own; kinds with a fast plan (:data:`gradviz.engine.plans.FAST_PLANS`) use it
where that one does not apply or fast plans are switched off.
"""

from __future__ import annotations

from typing import Callable

import torch

from gradviz.engine.capture import Use
from gradviz.engine.plans.base import Job, Plan, Sink, batch_rows
from gradviz.engine.reduce import Parts
from gradviz.engine.rules import RULES
from gradviz.errors import GradvizError

__all__ = ["RulePlan"]


class RulePlan(Plan):
    """A use of a kind with a registered rule (see the module docstring); ``kind`` is the rule's name."""

    @classmethod
    def applies(cls, use: Use, uses_per_param: dict[int, int]) -> bool:
        entry = RULES.get(use.op)
        if entry is None or entry.per_sample is None or use.inp is None or use.derived:
            return False
        if not all(any(v is t for v in use.spec.values()) for t in use.used):
            return False  # a parameter passed other than as a named argument (inside a list): the generic plan
        return entry.accepts is None or bool(entry.accepts(use.spec))

    def __init__(self, use: Use, job: Job, sink: Sink, batch: int) -> None:
        super().__init__(use, job, sink, batch)
        self.rule = RULES[use.op]
        self.kind = use.op
        # the arguments that are parameters: (argument name, its ParamRef)
        self.targets = [(name, ref) for name, value in use.spec.items() if isinstance(value, torch.Tensor)
                        for t, ref in zip(use.used, use.refs) if value is t]
        self.k = batch_rows(use.inp, batch).shape[1]  # rows per sample
        grads = sum(ref.param.numel() for _, ref in self.targets)
        work = self.rule.workspace(use.spec) if self.rule.workspace is not None else 0
        rows = (use.inp[0].numel() + use.out[0].numel()) * 2 + work  # a row, working copies, the rule's own
        per_sample = (grads * (self.k + 1) + rows * self.k) * max(use.out.element_size(), 4)
        self.step = max(1, min(batch, int(job.budget // max(1, per_sample))))

    @property
    def chunk_count(self) -> int:
        return -(-self.batch // self.step)

    def run(self, tick: Callable[[], None]) -> dict[str, Parts]:
        k = self.k
        for i in range(0, self.batch, self.step):
            sl = slice(i, min(i + self.step, self.batch))
            rows = slice(sl.start * k, sl.stop * k)
            got = self.rule.per_sample(self.use.spec, self.use.inp[rows], self.grad[rows])
            for name, ref in self.targets:
                g = got.get(name)
                if g is None:
                    raise GradvizError(f"the {self.kind} rule returns no gradient for its argument {name!r}, a "
                                       f"parameter here ({ref.name})")
                if k > 1:
                    g = g.reshape(sl.stop - sl.start, k, *g.shape[1:]).sum(1)
                self.sink.emit(ref, g, sl)
            tick()
        return {}

    def describe(self) -> str:
        return f"{self.kind} (rule)"
