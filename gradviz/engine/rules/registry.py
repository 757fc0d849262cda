"""The registry of engine rules: one decorated function per layer kind.

A rule says which torch functions make a layer kind (``torch.conv1d``, ``F.linear`` ...), the
names of their positional arguments with the defaults of the optional ones, and how a chunk of
rows turns into per-sample gradients of the parameters among those arguments::

    @rule("conv1d", torch.conv1d, signature=("input", "weight", "bias", "stride", ...),
          defaults={"bias": None, "stride": 1, ...})
    def conv1d(layer, activations, backprops):  # -> {"weight": (n, O, C/g, k), "bias": (n, O)}

``layer`` holds the call's arguments by name, ``activations`` the input rows of the chunk (n, ...)
and ``backprops`` the gradient of the call's output for the same rows (n, ...). The rule returns
{argument name: per-row gradient (n, *argument.shape)}; the engine adds up the rows of one sample
and reduces the result to the statistics (:mod:`gradviz.engine.reduce`). The capture
(:mod:`gradviz.engine.capture`) reads its tables of functions and signatures from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["Rule", "RULES", "rule", "rule_of", "named_args"]

PerSample = Callable[[dict, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


@dataclass(frozen=True, eq=False)
class Rule:
    """One layer kind: the functions that make it, their signature, its per-sample gradient."""

    op: str  # the kind's name: the use's ``op`` and the coverage report's 'kind'
    functions: tuple[Callable, ...]  # the torch functions a capture recognises as this kind
    signature: tuple[str, ...]  # positional argument names, in order
    defaults: dict[str, Any] = field(default_factory=dict)  # values of arguments that may be left out
    per_sample: PerSample | None = None  # (layer, activations, backprops) -> {argument: per-row gradient}
    # replaces the call in the capture: (named arguments) -> (output, extra entries of ``layer``)
    forward: Callable[[dict], tuple[torch.Tensor, dict]] | None = None
    accepts: Callable[[dict], bool] | None = None  # whether the rule serves a call (default: any)
    # entries of working memory per row beyond its input, output and gradients (default: none)
    workspace: Callable[[dict], int] | None = None


RULES: dict[str, Rule] = {}
_BY_FUNCTION: dict[Callable, Rule] = {}


def rule(op: str, *functions: Callable, signature: tuple[str, ...], defaults: dict[str, Any] | None = None,
         forward: Callable[[dict], tuple[torch.Tensor, dict]] | None = None,
         accepts: Callable[[dict], bool] | None = None,
         workspace: Callable[[dict], int] | None = None) -> Callable[[PerSample], PerSample]:
    """Register the decorated function as the per-sample gradient rule of layer kind ``op`` (fields: :class:`Rule`)."""
    if not functions:
        raise ValueError(f"rule {op!r} names no torch function")
    if "input" not in signature:
        raise ValueError(f"rule {op!r}: the signature needs an 'input' argument (the batch)")

    def register(fn: PerSample) -> PerSample:
        if op in RULES:
            raise ValueError(f"a rule for {op!r} is registered already")
        taken = [f for f in functions if f in _BY_FUNCTION]
        if taken:
            raise ValueError(f"rule {op!r}: {taken} belong to the rule {_BY_FUNCTION[taken[0]].op!r}")
        entry = Rule(op, tuple(functions), tuple(signature), dict(defaults or {}), fn, forward, accepts, workspace)
        RULES[op] = entry
        _BY_FUNCTION.update(dict.fromkeys(functions, entry))
        return fn

    return register


def rule_of(func: Callable) -> Rule | None:
    """The rule of a torch function, or None."""
    return _BY_FUNCTION.get(func)


def named_args(entry: Rule, args: tuple, kwargs: dict) -> dict:
    """The arguments of a call of ``entry``'s kind by name, defaults filled in."""
    out = dict(entry.defaults)
    out.update(zip(entry.signature, args))
    out.update({k: v for k, v in kwargs.items() if k in entry.signature})
    return out
