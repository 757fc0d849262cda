"""Where every parameter enters the computation: one forward under a ``TorchFunctionMode``.

The engine never asks autograd for parameter gradients (they come summed over the batch). It
records, during one forward, every call that combines a parameter with the batch — a *use* — with
its inputs and its output, and registers a tensor hook on the output. One backward from the logits
then delivers each use's output gradient δ; in ``eval()`` mode samples do not interact, so δ is
exact per sample, and the use's plan (:mod:`gradviz.engine.plans`) turns (inputs, δ) into
per-sample gradient statistics of its parameters.

Watching torch functions rather than modules finds every use, also where a module's weight is
used without calling the module (Swin's ``F.linear(x, self.qkv.weight)``), parameters that live
on no layer (a ViT's class token and position embedding, ConvNeXt's layer scale, relative-position
bias tables) and parameters reached through other ops first (``table[index]``, ``gamma.reshape``):
a call whose tensor inputs are parameters (or such *derived* tensors) and constants only yields
another derived tensor; the first call that meets the batch is the use, and the per-sample
gradient flows back to the parameters by a batched vector-Jacobian product.
``F.multi_head_attention_forward`` is replaced by a batch-first decomposition
(:mod:`gradviz.engine.attention`). Which functions make a layer kind of its own, and their argument
names, come from the registered rules (:mod:`gradviz.engine.rules`).

Layout convention (checked where it can be): in the tensors a use reads and writes, dimension 0
holds the samples, possibly several rows each, sample-major — (B, ...) or (B·k, ...) as in Swin's
window partition. ``expand`` of a parameter to the batch size along dimension 0 (a class token)
counts as a use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from gradviz.engine.attention import mha_forward
from gradviz.engine.folding import Fold, Twin
from gradviz.engine.rules import named_args, rule_of

__all__ = ["ParamRef", "Use", "Capturer", "param_table", "FOLD_KEEP_BYTES"]

# A folded conv's output is copied in the forward when it is at most this large (the folded
# BatchNorm's γ gradient is then read off it, gradviz.engine.folding); larger ones that no op changes
# in place are read as they are, the others take the conv kernel's dot products.
FOLD_KEEP_BYTES = 4 * 2**20

_T = torch.Tensor
# Elementwise ops whose per-sample gradient w.r.t. a broadcast parameter has a closed form.
_ELEMENTWISE = {
    torch.add: "add", _T.add: "add", _T.add_: "add", _T.__add__: "add", _T.__radd__: "add", _T.__iadd__: "add",
    torch.sub: "sub", _T.sub: "sub", _T.sub_: "sub", _T.__sub__: "sub", _T.__rsub__: "rsub", _T.__isub__: "sub",
    torch.mul: "mul", _T.mul: "mul", _T.mul_: "mul", _T.__mul__: "mul", _T.__rmul__: "mul", _T.__imul__: "mul",
}
_INPLACE = {_T.add_, _T.__iadd__, _T.sub_, _T.__isub__, _T.mul_, _T.__imul__}
_EXPAND = {_T.expand, _T.expand_as, _T.broadcast_to, torch.broadcast_to}
@dataclass(eq=False)
class ParamRef:
    """A parameter of the original network: its group (the layer it is reported under) and names."""

    group: str  # the module's qualified name, or the parameter's own name for parameters of the root
    name: str  # qualified parameter name
    attr: str  # attribute name on its module
    param: torch.Tensor  # the original parameter
    module: nn.Module  # the original module that owns it
    fold: Fold | None = None  # set for a twin's folded convolution (the tensor used is the folded one)


def param_table(root: nn.Module, twin: Twin | None) -> dict[int, ParamRef]:
    """id(tensor) -> ParamRef for every parameter of ``root`` and of its folded twin (by qualified name)."""
    refs: dict[int, ParamRef] = {}
    by_name: dict[str, ParamRef] = {}
    for mname, m in root.named_modules():
        for attr, p in m.named_parameters(recurse=False):
            qual = f"{mname}.{attr}" if mname else attr
            ref = ParamRef(mname or attr, qual, attr, p, m)
            refs[id(p)] = by_name[qual] = ref
    if twin is not None:
        for qual, p in twin.net.named_parameters():
            ref = by_name.get(qual)
            if ref is not None and id(p) not in refs:
                conv_name = qual.rpartition(".")[0]
                refs[id(p)] = ParamRef(ref.group, ref.name, ref.attr, ref.param, ref.module, twin.folds.get(conv_name))
    return refs


@dataclass(eq=False)
class Use:
    """One call that combines parameters with the batch: its inputs and its output in the graph."""

    index: int
    op: str  # a registered rule's kind (conv2d, linear, layer_norm, ...), broadcast or generic
    func: Callable
    args: tuple  # as called; batch tensors detached (their values at the call), parameters as given
    kwargs: dict
    out: torch.Tensor  # the output as produced (graph); gradients are taken w.r.t. this value
    out_version: int
    refs: list[ParamRef]  # the parameters used directly
    used: list[torch.Tensor]  # the tensor used for each of them (the parameter, or its twin's copy)
    # derived tensors used, and the parameters behind each: (ref, the tensor the graph holds: it or its twin's copy)
    derived: list[tuple[torch.Tensor, list[tuple[ParamRef, torch.Tensor]]]]
    batch: list[torch.Tensor]  # the batch tensors read (detached), to check they were not changed later
    versions: list[int]
    from_input: bool = True  # a batch tensor read has a gradient (the use is downstream of the input)
    calls: int = 1
    # A BatchNorm folded into the convolution before it (gradviz.engine.folding) has no call of its own:
    # its use shares the convolution's output (index ``source``).
    source: int | None = None
    fold: Fold | None = None
    z: torch.Tensor | None = None  # a folded conv's output as produced, kept if small
    spec: dict = field(default_factory=dict)  # the call's arguments by name (ops with a rule)
    live: torch.Tensor | None = None  # the first argument as passed (in the graph): the head's features
    live_version: int | None = None  # its version at the call, if it is a batch tensor (else None)
    group: str | None = None  # set after the forward: the group whose statistics this use serves

    @property
    def modified(self) -> bool:
        """True if a later op changed the output in place (its gradient then comes from a tensor hook)."""
        return self.out._version != self.out_version

    @property
    def inp(self) -> torch.Tensor | None:
        """The main batch input (the first argument of conv/linear/norms), detached."""
        x = self.spec.get("input")
        return x if isinstance(x, torch.Tensor) else None

    @property
    def params(self) -> list[ParamRef]:
        """Every parameter this use reaches, directly or through derived tensors."""
        out = list(self.refs)
        for _, deps in self.derived:
            out += [r for r, _ in deps if all(r is not o for o in out)]
        return out


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors among a call's arguments (one level into lists and tuples)."""
    found = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            found.append(a)
        elif isinstance(a, (list, tuple)):
            found.extend(t for t in a if isinstance(t, torch.Tensor))
    return found


def _replace(obj: Any, swap: dict[int, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        return swap.get(id(obj), obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_replace(o, swap) for o in obj)
    return obj


class Capturer(TorchFunctionMode):
    """Records the uses of parameters during one forward (see the module docstring)."""

    def __init__(self, refs: dict[int, ParamRef], batch_size: int, on_use: Callable[["Use"], torch.Tensor | None],
                 clone_inputs: bool) -> None:
        super().__init__()
        self.refs = refs
        self.batch_size = batch_size
        self.on_use = on_use  # called with each new use; may return a replacement output (a copy)
        self.clone_inputs = clone_inputs
        # id -> (derived tensor, kept alive, [(parameter, the tensor of it the graph holds)])
        self.derived: dict[int, tuple[torch.Tensor, list[tuple[ParamRef, torch.Tensor]]]] = {}
        self.uses: list[Use] = []
        self.nograd_batch: dict[int, torch.Tensor] = {}  # data-dependent tensors that need no gradient

    def _deps(self, t: torch.Tensor) -> list[tuple[ParamRef, torch.Tensor]] | None:
        ref = self.refs.get(id(t))
        if ref is not None:
            return [(ref, t)]
        entry = self.derived.get(id(t))
        return None if entry is None or entry[0] is not t else entry[1]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward:
            with self:  # the projections run batch-first, where the engine sees them as Linear layers
                return mha_forward(*args, **kwargs)
        tensors = _tensors(args, kwargs)
        if not tensors:
            return func(*args, **kwargs)
        deps = {id(t): d for t in tensors if (d := self._deps(t)) is not None}
        if not deps:
            out = func(*args, **kwargs)
            if any(t.requires_grad or id(t) in self.nograd_batch for t in tensors):
                # data-dependent tensors without a gradient (indices, masks) still belong to the samples
                for o in _tensors(out if isinstance(out, (tuple, list)) else (out,), {}):
                    if not o.requires_grad:
                        self.nograd_batch[id(o)] = o
            return out
        batch = [t for t in tensors if id(t) not in deps and (t.requires_grad or id(t) in self.nograd_batch)]
        if not batch and not self._expands_to_batch(func, args):
            out = func(*args, **kwargs)
            every: list[tuple[ParamRef, torch.Tensor]] = []
            for d in deps.values():
                every += [(r, t) for r, t in d if all(t is not o for _, o in every)]
            for t in _tensors(out if isinstance(out, tuple) else (out,), {}):
                self.derived[id(t)] = (t, every)
            return out
        return self._use(func, args, kwargs, tensors, deps, batch)

    def _expands_to_batch(self, func, args) -> bool:
        """``param.expand(B, ...)``: a parameter broadcast along the batch (a class token) is a use."""
        if func not in _EXPAND or not args or not isinstance(args[0], torch.Tensor):
            return False
        src = args[0]
        target = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list, torch.Size, torch.Tensor)) else args[1:]
        shape = tuple(target.shape) if isinstance(target, torch.Tensor) else tuple(target)
        if not shape or shape[0] != self.batch_size:
            return False
        lead = len(shape) - src.dim()
        return lead > 0 or src.shape[0] == 1

    def _use(self, func, args, kwargs, tensors, deps, batch) -> Any:
        entry = rule_of(func)
        op = entry.op if entry is not None else \
            "broadcast" if func in _ELEMENTWISE or func in _EXPAND else "generic"
        swap = {}
        for t in batch:  # what the plan reads: the values at this call (copied if the call changes them)
            changed = func in _INPLACE and t is args[0]
            swap[id(t)] = t.detach().clone() if self.clone_inputs or changed else t.detach()
        extra: dict = {}
        if entry is not None and entry.forward is not None:  # the rule's own forward (e.g. keeping statistics)
            out, extra = entry.forward(named_args(entry, args, kwargs))
        else:
            out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor):
            op = "generic"  # several outputs: reported as not covered unless the generic plan manages
        call_args, call_kwargs = _replace(args, swap), _replace(kwargs, swap)
        used = list({id(t): t for t in tensors if id(t) in self.refs}.values())
        refs = [self.refs[id(t)] for t in used]
        derived = list({id(t): (t, deps[id(t)]) for t in tensors if id(t) in deps and id(t) not in self.refs}.values())
        kept = [swap[id(t)] for t in batch]
        use = Use(len(self.uses), op, func, call_args, call_kwargs, out,
                  out._version if isinstance(out, torch.Tensor) else 0, refs, used, derived, kept,
                  [t._version for t in batch])
        use.live = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if use.live is not None and any(use.live is t for t in batch):
            use.live_version = use.live._version
        if entry is not None and op == entry.op:
            use.spec = {**named_args(entry, call_args, call_kwargs), **extra}
        elif op == "broadcast":
            use.spec = {"kind": "expand" if func in _EXPAND else _ELEMENTWISE[func], "alpha": kwargs.get("alpha", 1)}
        use.from_input = any(t.requires_grad for t in batch)
        self.uses.append(use)
        replacement = self.on_use(use)
        return out if replacement is None else replacement
