"""The plan of each use: its layer kind's registered rule, with fast plans as an optional layer on top.

Every layer kind with a rule (:mod:`gradviz.engine.rules`) is served exactly by :class:`RulePlan`.
Some kinds also have a *fast plan* (:data:`FAST_PLANS`: conv2d, linear and the norms), which forms
and reduces the same per-sample gradients with strategies timed per layer
(:mod:`gradviz.engine.calibrate`), the compiled kernel and a BatchNorm folded into its convolution;
``with fast_plans(False):`` switches them off (and folding with them) without changing a result.
Rule and fast plans serve uses whose parameters are used there directly, once, all of one group;
everything else goes to the broadcast plan (parameters broadcast over the batch) or to the exact
generic fallback.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

from gradviz.engine.capture import Use
from gradviz.engine.plans.base import Job, Plan, Sink
from gradviz.engine.plans.broadcast import BroadcastPlan
from gradviz.engine.plans.conv import ConvPlan
from gradviz.engine.plans.generic import GenericPlan
from gradviz.engine.plans.linear import LinearPlan
from gradviz.engine.plans.norm import BatchNormPlan, FoldedBatchNormPlan, GroupNormPlan, LayerNormPlan
from gradviz.engine.plans.rule import RulePlan
from gradviz.errors import GradvizError

__all__ = ["FAST_PLANS", "plan_class", "make_plan", "fast_plans", "fast_plans_enabled", "Job", "Plan", "Sink",
           "RulePlan"]

# layer kind -> its fast plan (used where its ``applies`` says so and fast plans are on)
FAST_PLANS: dict[str, type[Plan]] = {
    "conv2d": ConvPlan, "linear": LinearPlan, "batch_norm": BatchNormPlan, "layer_norm": LayerNormPlan,
    "group_norm": GroupNormPlan,
}

_FAST: ContextVar[bool] = ContextVar("gradviz_fast_plans", default=True)


@contextmanager
def fast_plans(enabled: bool) -> Iterator[None]:
    """Within the block (this thread or task), fast plans and BatchNorm folding are on or off."""
    token = _FAST.set(bool(enabled))
    try:
        yield
    finally:
        _FAST.reset(token)


def fast_plans_enabled() -> bool:
    return _FAST.get()


def plan_class(use: Use, uses_per_param: dict[int, int]) -> type[Plan]:
    """The plan that serves ``use`` (given how many uses each parameter has in the pass)."""
    if use.source is not None:
        return FoldedBatchNormPlan
    direct = (not use.derived and use.refs and len({r.group for r in use.refs}) == 1
              and all(uses_per_param.get(id(r.param), 0) == 1 for r in use.refs)
              and not any(use.inp is t for t in use.used))  # the batch is the input, not a parameter
    folded = any(r.fold is not None for r in use.refs)
    if direct or folded:
        fast = FAST_PLANS.get(use.op)
        if fast is not None and (folded or fast_plans_enabled()) and fast.applies(use, uses_per_param):
            return fast
        if not folded and RulePlan.applies(use, uses_per_param):
            return RulePlan
    if BroadcastPlan.applies(use, uses_per_param):
        return BroadcastPlan
    return GenericPlan


def make_plan(use: Use, job: Job, sink: Sink, batch: int, uses_per_param: dict[int, int]) -> Plan:
    cls = plan_class(use, uses_per_param)
    if cls is ConvPlan and use.out.shape[0] != batch:
        # several images per sample in the conv's batch (timm TNT embeds each patch as its own image): the
        # conv plan's strategies read one image per sample, the rule sums a sample's rows
        if any(r.fold is not None for r in use.refs):
            raise GradvizError(f"conv2d {use.refs[0].group!r} runs on {use.out.shape[0]} images for a batch of "
                               f"{batch} with a BatchNorm folded into it: not supported (GRADVIZ_FOLD_BN=off "
                               "leaves BatchNorm unfolded)")
        cls = RulePlan if RulePlan.applies(use, uses_per_param) else GenericPlan
    return cls(use, job, sink, batch)
