"""Networks wrapped by ``torch.compile``: gradviz runs the original (eager) module.

A compiled graph does not see the forward hooks and per-sample tricks the gradient engine adds
after compilation, so the per-sample gradient norms of a ``torch.compile(net)`` came out 10–13 %
low with no error. :func:`uncompiled` returns the module ``torch.compile`` wrapped (same
parameters, same results, eager), at the root and inside; nothing is compiled on the way.
"""

from __future__ import annotations

import sys

from torch import nn


def _optimized_type():
    """``torch._dynamo``'s OptimizedModule, or None when dynamo was never imported (then nothing is compiled)."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(eval_frame, "OptimizedModule", None)


def _inner(module: nn.Module, optimized) -> nn.Module:
    while optimized is not None and isinstance(module, optimized):
        module = module._orig_mod
    return module


def is_compiled(net: nn.Module) -> bool:
    """Whether ``net`` or a module inside it runs through ``torch.compile`` (wrapped, or ``module.compile()``)."""
    optimized = _optimized_type()
    return any((optimized is not None and isinstance(m, optimized)) or getattr(m, "_compiled_call_impl", None) is not None
               for m in net.modules())


def uncompiled(net: nn.Module) -> nn.Module:
    """``net`` with every ``torch.compile`` wrapper removed: the root's ``_orig_mod``, compiled children replaced
    by theirs (in place), and ``module.compile()`` undone. Parameters are shared, never copied."""
    optimized = _optimized_type()
    net = _inner(net, optimized)
    for parent in list(net.modules()):
        if getattr(parent, "_compiled_call_impl", None) is not None:
            parent._compiled_call_impl = None
        for name, child in list(parent.named_children()):
            inner = _inner(child, optimized)
            if inner is not child:
                setattr(parent, name, inner)
    return net
