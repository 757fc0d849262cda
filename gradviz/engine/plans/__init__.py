"""One plan per parameter kind; :func:`plan_class` picks the plan of a use.

Adding a parameter kind = one module here with a :class:`~.base.Plan` subclass (its ``applies``
says which uses it serves) listed in :data:`PLANS`, and one test against the float64 per-sample
autograd loop. Fast plans (conv, linear, norms) serve uses whose parameters are used there
directly, once, all of one group; everything else goes to the broadcast plan (parameters broadcast
over the batch) or to the exact generic fallback.
"""

from __future__ import annotations

from gradviz.engine.capture import Use
from gradviz.errors import GradvizError
from gradviz.engine.plans.base import Job, Plan, Sink
from gradviz.engine.plans.broadcast import BroadcastPlan
from gradviz.engine.plans.conv import ConvPlan
from gradviz.engine.plans.generic import GenericPlan
from gradviz.engine.plans.linear import LinearPlan
from gradviz.engine.plans.norm import BatchNormPlan, FoldedBatchNormPlan, GroupNormPlan, LayerNormPlan

__all__ = ["PLANS", "plan_class", "make_plan", "Job", "Plan", "Sink"]

# Tried in order; the generic plan serves whatever none of them does.
FAST_PLANS: list[type[Plan]] = [ConvPlan, LinearPlan, BatchNormPlan, LayerNormPlan, GroupNormPlan]
PLANS: list[type[Plan]] = [*FAST_PLANS, BroadcastPlan, GenericPlan]


def plan_class(use: Use, uses_per_param: dict[int, int]) -> type[Plan]:
    """The plan that serves ``use`` (given how many uses each parameter has in the pass)."""
    if use.source is not None:
        return FoldedBatchNormPlan
    direct = (not use.derived and use.refs and len({r.group for r in use.refs}) == 1
              and all(uses_per_param.get(id(r.param), 0) == 1 for r in use.refs))
    if direct or any(r.fold is not None for r in use.refs):
        for cls in FAST_PLANS:
            if cls.applies(use, uses_per_param):
                return cls
    if BroadcastPlan.applies(use, uses_per_param):
        return BroadcastPlan
    return GenericPlan


def make_plan(use: Use, job: Job, sink: Sink, batch: int, uses_per_param: dict[int, int]) -> Plan:
    cls = plan_class(use, uses_per_param)
    if cls is ConvPlan and use.out.shape[0] != batch:
        # several images per sample in the conv's batch (timm TNT embeds each patch as its own image): the
        # conv plan's strategies read one image per sample, the exact generic plan sums a sample's rows
        if any(r.fold is not None for r in use.refs):
            raise GradvizError(f"conv2d {use.refs[0].group!r} runs on {use.out.shape[0]} images for a batch of "
                               f"{batch} with a BatchNorm folded into it: not supported (GRADVIZ_FOLD_BN=off "
                               "leaves BatchNorm unfolded)")
        cls = GenericPlan
    return cls(use, job, sink, batch)
