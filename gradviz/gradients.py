"""Per-sample parameter-gradient statistics of every parametrised layer, for a whole batch.

Oberdiek et al. 2018 (arXiv 1805.08440) and Lee & AlRegib 2020 (arXiv 2008.08030) need, for
each sample b and each layer l, statistics of the per-sample gradient ∇_{θ_l} ℓ_b. A batched
backward only yields the batch *sum* of parameter gradients, so this module never asks
autograd for parameter gradients. Instead (METHODS.md §6):

1. One batched forward (:class:`GradientPass`) whose forward hooks keep each layer's input a_b
   and register a tensor hook on its output. No copy of any activation is made: a tensor hook
   registered before a downstream in-place op (``ReLU(inplace=True)``, ``out += identity``)
   receives the gradient w.r.t. the value the layer produced. The forward runs on a twin of the
   network with every eval-mode BatchNorm folded into the conv before it (:mod:`gradviz.folding`;
   both layers are still reported, exactly); only small folded outputs are copied.
2. Per loss, ONE ``torch.autograd.grad`` from the logits: in ``eval()`` mode samples do not
   interact, so the output gradients δ_b are exact per sample. Each layer is reduced inside its
   tensor hook, as soon as its δ arrives (hot in cache), and δ is dropped: memory stays that of
   a plain forward+backward. The graph is kept, so one forward serves several losses (and GAIA,
   ODIN: ``ModelOutputs.gradient_pass``).
3. Per layer, from (a_b, δ_b):
   - Linear, and any conv whose output is 1×1: ∇W_b = δ_b a_bᵀ is rank one, so
     L1 = ‖δ‖₁‖a‖₁, L2 = ‖δ‖‖a‖, max/min = extremes of (δ_max, δ_min)×(a_max, a_min),
     sum = (Σδ)(Σa) — O(O + K) per sample, nothing materialised.
   - Conv2d: ∇W_b = Δ_b U_bᵀ (U_b the unfolded input, K × P; Δ_b, O × P). With the compiled
     kernel (float32, groups = 1) the ``direct`` plan forms it tile by tile in SIMD registers and
     reduces it there, for the whole batch at once: it is never written to memory. Otherwise it
     is materialised for a chunk of samples at a time (memory ≤ ``chunk_mib``, one reused buffer).
     The fastest plan is timed once per layer shape on its first chunk (:data:`STRATEGIES` ×
     cache- or budget-sized chunks): ``direct``, ``bmm`` (unfold, one batched matmul into the
     buffer) or ``conv`` (one grouped-convolution weight backward with the samples as groups).
     On small maps, columns of kernel taps that see one output position only are δ_b[:, p] times
     one input pixel: their partial sums are taken in closed form, and only the other columns are
     formed (:func:`_tap_split`). For the materialised plans the five partial sums come from
     one fused compiled pass (:mod:`gradviz.reductions`), or from fast eager kernels where the
     sum comes from patch sums Σ_p (Σ_o Δ_op)(Σ_k U_kp) and ‖ΔUᵀ‖² from the Gram form when cheaper.
     The L2-only path also considers the Gram ("ghost") norm Σ_{pq} (UᵀU)_{pq} (ΔᵀΔ)_{pq}.
   - BatchNorm (eval, running statistics): ∇γ_b = Σ_hw δ_b ⊙ x̂_b, ∇β_b = Σ_hw δ_b.

Conventions (consistent with :func:`parametrised_layers` and the tests' autograd reference):
- a *layer* is a module; its gradient vector is the concatenation of ALL its parameters:
  conv/linear ``[weight, bias]`` (bias included when present), BatchNorm ``[γ, β]``;
- ``std`` is the population standard deviation (ddof = 0) of that vector;
- ``mean`` is its arithmetic mean (Σ entries / number of entries).

Losses are given by their gradient w.r.t. the logits (:data:`LOSSES`), so one engine serves
every method. The model is shared between threads: module hooks live only inside
``model.lock`` during the forward and are always removed; no ``.grad`` and no
``requires_grad`` change is left behind.
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gradviz.config import settings
from gradviz.errors import GradvizError, MethodError
from gradviz.folding import Fold, fold_enabled, twin_of
from gradviz.reductions import PARTS, fused_kernel, reduce_rows, resolve_mode

__all__ = [
    "STATS", "LOSSES", "STRATEGIES", "LayerStats", "GradientPass", "layer_gradient_stats", "layer_sq_l2_norms",
    "head_gradient_stats", "parametrised_layers",
]

STATS: tuple[str, ...] = ("l1", "l2", "max", "min", "mean", "std")

# Largest sub-batch run through one hooked forward; bounds the memory of saved activations.
FORWARD_BATCH = 256

# A folded conv's output is copied in the forward when it is at most this large (the folded
# BatchNorm's γ gradient is then read off it, gradviz.folding); larger ones that no op changes in
# place are read as they are, the others take the conv kernel's dot products.
FOLD_KEEP_BYTES = 4 * 2**20

# How a conv layer's per-sample gradients are formed; the fastest is timed once per layer shape.
STRATEGIES = ("direct", "bmm", "conv", "gram")  # direct (compiled) and gram (L2 only) never materialise

# Materialised gradients are reduced in chunks that stay in the cores' L2 caches, however large
# the memory budget: each pass over a chunk in cache is ~2x faster than one in L3. Calibration
# tries these sizes (and the budget's); the best depends on the per-op overhead of the layer.
SPEED_CHUNK_BYTES = (2 * 2**20, 4 * 2**20)
# A plan that costs this many times the best so far after its warm-up run is not timed again;
# a strategy at twice that is not tried with other chunk sizes.
CALIBRATION_MARGIN = 1.3


def _nll_pred(z: torch.Tensor) -> torch.Tensor:
    """∂/∂z of −log softmax(z)_ŷ with ŷ = argmax z: p − onehot(ŷ)."""
    p = z.softmax(-1)
    return p - F.one_hot(z.argmax(-1), z.shape[-1]).to(p.dtype)


def _confounding_sigmoid(z: torch.Tensor) -> torch.Tensor:
    """∂/∂z of −Σ_c log σ(z_c) (BCE against the all-ones label): σ(z) − 1."""
    return torch.sigmoid(z) - 1.0


def _confounding_softmax(z: torch.Tensor) -> torch.Tensor:
    """∂/∂z of −Σ_c log softmax(z)_c (all-ones label on softmax outputs): C·p − 1."""
    return z.shape[-1] * z.softmax(-1) - 1.0


LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "nll_pred": _nll_pred,
    "confounding_sigmoid": _confounding_sigmoid,
    "confounding_softmax": _confounding_softmax,
}


@dataclass
class LayerStats:
    """Per-sample gradient statistics: ``values[b, l, s]`` = statistic ``stats[s]`` of layer ``layers[l]``."""

    layers: list[str]  # qualified module names, forward order
    stats: tuple[str, ...]
    values: torch.Tensor  # (B, L, S) float32
    numels: list[int] = field(default_factory=list)  # entries of each layer's gradient vector

    def get(self, stat: str, layers: Sequence[str] | None = None) -> torch.Tensor:
        """Values of one statistic, (B, L) for ``layers`` (default: all, in order)."""
        if stat not in self.stats:
            raise MethodError(f"statistic {stat!r} was not computed; available: {', '.join(self.stats)}")
        cols = self._layer_index(layers)
        return self.values[:, cols, self.stats.index(stat)]

    def to_frame(self):
        """Wide table: one row per sample, columns MultiIndex (layer, stat)."""
        import pandas as pd

        b, n_layers, n_stats = self.values.shape
        columns = pd.MultiIndex.from_product([self.layers, list(self.stats)], names=["layer", "stat"])
        return pd.DataFrame(self.values.reshape(b, n_layers * n_stats).double().cpu().numpy(), columns=columns)

    def _layer_index(self, layers: Sequence[str] | None) -> list[int]:
        if layers is None:
            return list(range(len(self.layers)))
        unknown = [n for n in layers if n not in self.layers]
        if unknown:
            raise MethodError(f"unknown layer(s) {unknown}; known: {', '.join(self.layers)}")
        return [self.layers.index(n) for n in layers]


# --------------------------------------------------------------------------------------------
# Layers

_BN = nn.modules.batchnorm._BatchNorm
_SUPPORTED = (nn.Conv2d, nn.Linear, _BN)


def _root(model: nn.Module) -> nn.Module:
    """The wrapped network (names without the ``net.`` prefix) for a GradvizModel."""
    net = getattr(model, "net", None)
    return net if isinstance(net, nn.Module) else model


def parametrised_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every Conv2d, Linear and affine BatchNorm, in registration order.

    Names are relative to the wrapped network (``model.net`` for a GradvizModel). Modules of
    other types that hold parameters are not covered by the engine.
    """
    out = []
    for name, m in _root(model).named_modules():
        if isinstance(m, _SUPPORTED) and any(True for _ in m.parameters(recurse=False)):
            out.append((name, m))
    return out


def _resolve_layers(model: nn.Module, layers: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    all_layers = parametrised_layers(model)
    if not all_layers:
        raise GradvizError("the model has no Conv2d, Linear or BatchNorm layer with parameters")
    if layers is None:
        return all_layers
    if isinstance(layers, str):
        layers = [layers]
    by_name = dict(all_layers)
    unknown = [n for n in layers if n not in by_name]
    if unknown:
        raise MethodError(f"unknown layer(s) {unknown}; parametrised layers: {', '.join(by_name)}")
    return [(n, by_name[n]) for n in dict.fromkeys(layers)]


def _check_model(model: nn.Module, chosen: list[tuple[str, nn.Module]]) -> None:
    if model.training:
        raise GradvizError("per-sample gradients need the model in eval() mode (BatchNorm mixes samples in train mode)")
    for name, m in chosen:
        if isinstance(m, _BN) and m.running_mean is None:
            raise GradvizError(f"BatchNorm {name!r} has no running statistics: samples interact, per-sample gradients are undefined")


# --------------------------------------------------------------------------------------------
# One hooked forward, any number of backward passes


class _Sink:
    """Where the graph's tensor hooks deliver output gradients during one backward.

    Outside :meth:`collecting` (and for captures nobody asked for) a gradient is dropped at once.
    The sink holds no reference to the graph or the pass, so they form no reference cycle.
    """

    def __init__(self) -> None:
        self.pending: dict[int, list[Capture]] | None = None
        self.each: Callable | None = None
        self.results: dict[int, object] = {}

    def hook(self, index: int) -> Callable[[torch.Tensor], None]:
        def store(grad: torch.Tensor) -> None:  # returns None: the gradient flowing on is unchanged
            pending = self.pending
            if pending is not None and index in pending:
                for cap in pending[index]:  # the output's own capture, and a BatchNorm folded into it
                    if cap.index not in self.results:
                        self.results[cap.index] = self.each(cap, grad.detach()) if self.each else grad.detach()
        return store

    @contextmanager
    def collecting(self, pending: dict[int, list["Capture"]], each: Callable | None) -> Iterator[dict[int, object]]:
        self.pending, self.each, self.results = pending, each, {}
        try:
            yield self.results
        finally:
            self.pending, self.each = None, None


@dataclass(eq=False)
class Capture:
    """One hooked module of a :class:`GradientPass`: its input and its output in the graph."""

    index: int
    name: str
    module: nn.Module
    inp: torch.Tensor  # detached input (B, ...)
    out: torch.Tensor  # the output as produced (graph); gradients are taken w.r.t. this value
    inp_version: int
    out_version: int
    calls: int = 1
    # A BatchNorm folded into the convolution before it (gradviz.folding) has no forward of its
    # own: its capture shares the convolution's output (index ``source``; ``inp`` is None).
    source: int | None = None
    fold: Fold | None = None  # set on both captures of a folded pair
    z: torch.Tensor | None = None  # a folded conv's output as produced, kept if small (see _Kernel.finish_fold)

    @property
    def modified(self) -> bool:
        """True if a later op changed the output in place (its gradient then comes from a tensor hook)."""
        return self.out._version != self.out_version


class GradientPass:
    """A batch's hooked forward with its graph kept; per-sample output gradients for any loss.

    Hooks every parametrised layer of ``model`` (or ``layers``) plus every BatchNorm (GAIA reads
    BN outputs). ``logits`` (B, K), ``features`` (the head's input, (B, D)) and ``x_in`` (the
    input leaf) stay in the graph, so methods can run their own backward passes on it:
    :meth:`output_grads` for layer outputs, :meth:`layer_stats` / :meth:`sq_l2_norms` for the
    per-sample parameter-gradient statistics. The module hooks exist only during the forward,
    under ``model.lock``.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, layers: Sequence[str] | None = None,
                 fold_bn: bool | None = None) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] == 0:
            raise GradvizError("expected a non-empty batch tensor (B, C, H, W)")
        self.model = model
        self.chosen = _resolve_layers(model, layers)
        _check_model(model, self.chosen)
        # the forward runs on the folded twin where there is one (gradviz.folding; default on)
        root = _root(model)
        runnable = root is model or callable(getattr(model, "normalize", None))
        self.twin = twin_of(root) if runnable and fold_enabled(fold_bn) else None
        param = next(model.parameters())
        self.x_in = x.detach().to(device=param.device, dtype=param.dtype).requires_grad_(True)
        self.batch = int(x.shape[0])
        self._sink = _Sink()  # the graph's tensor hooks write here; it holds no reference back (no cycle)
        for clone_inputs in (False, True):
            self._forward(clone_inputs)
            # An input modified in place after its layer ran (rare) would give wrong statistics:
            # rerun keeping copies of the inputs.
            if clone_inputs or all(c.inp is None or c.inp._version == c.inp_version for c in self.captures):
                break

    def _forward(self, clone_inputs: bool) -> None:
        root, twin = _root(self.model), self.twin
        net = twin.net if twin is not None else root
        # module of the network that runs -> (name, original module); captures hold the original
        originals = twin.originals if twin is not None else {id(m): (n, m) for n, m in root.named_modules()}
        bn_names = twin.bn_names if twin is not None else {n for n, m in root.named_modules() if isinstance(m, _BN)}
        names = {n for n, _ in self.chosen} | bn_names
        folds = twin.folds if twin is not None else {}
        head = getattr(self.model, "head", None)
        self.captures: list[Capture] = []
        self.features: torch.Tensor | None = None
        by_module: dict[int, Capture] = {}
        sink = self._sink

        def hook(module, args, output):
            cap = by_module.get(id(module))
            if cap is not None:
                cap.calls += 1
                if cap.fold is not None:
                    self.captures[cap.index + 1].calls += 1
                return None
            x = args[0]
            name, original = originals[id(module)]
            cap = Capture(len(self.captures), name, original, x.detach().clone() if clone_inputs else x.detach(),
                          output, x._version, output._version, fold=folds.get(name))
            by_module[id(module)] = cap
            self.captures.append(cap)
            small = output.numel() * output.element_size() <= FOLD_KEEP_BYTES
            # The first hooked output hands a copy downstream (if small): an in-place op after it
            # (a ReLU after a folded BatchNorm) changes the copy, so this output stays as produced
            # and the backward can stop at it, skipping the stem's input gradient.
            own_copy = cap.index == 0 and small and output.requires_grad and original is not head
            if cap.fold is not None and cap.fold.z_safe and small and not own_copy:
                cap.z = output.detach().clone()  # a later in-place op would change it (cheap: small)
            if cap.fold is not None:  # the BatchNorm folded into this conv: its output, no input of its own
                self.captures.append(Capture(cap.index + 1, cap.fold.bn_name, cap.fold.bn, None, output, 0,
                                             output._version, source=cap.index, fold=cap.fold))
            if original is head:
                self.features = x.flatten(1) if x.ndim > 2 else x
            if output.requires_grad:
                output.register_hook(sink.hook(cap.index))
            return output.clone() if own_copy else None

        handles = []
        with getattr(self.model, "lock", nullcontext()):
            try:
                modules = twin.modules if twin is not None else [m for _, m in net.named_modules()]
                for m in modules:
                    entry = originals.get(id(m))
                    if entry is not None and (entry[0] in names or entry[0] in folds):
                        handles.append(m.register_forward_hook(hook))
                with torch.enable_grad():
                    if twin is None:
                        self.logits = self.model(self.x_in)
                    else:
                        self.logits = net(self.x_in if root is self.model else self.model.normalize(self.x_in))
            finally:
                for h in handles:
                    h.remove()

    def layer_captures(self, layers: Sequence[str] | None = None) -> list[Capture]:
        """The captures of the engine's layers (``layers`` or all chosen ones), in forward order."""
        names = {n for n, _ in (self.chosen if layers is None else _resolve_layers(self.model, layers))}
        chosen_ids = {id(m) for _, m in self.chosen}
        caps = [c for c in self.captures if c.name in names and id(c.module) in chosen_ids]
        missing = names - {c.name for c in caps}
        if missing:
            raise MethodError(f"layer(s) {sorted(missing)} were not hooked in this pass (or did not run)")
        reused = [c.name for c in caps if c.calls > 1]
        if reused:
            raise GradvizError(f"layer(s) {reused} run more than once per forward (weight sharing) — not supported")
        return caps

    def output_grads(self, root: torch.Tensor, grad: torch.Tensor | None, captures: Sequence[Capture],
                     input_grad: bool = False, each: Callable[[Capture, torch.Tensor], object] | None = None,
                     ) -> tuple[list, torch.Tensor | None]:
        """One backward of ``root`` weighted by ``grad`` on the kept graph.

        Returns ([``each(c, δ_c)`` — or δ_c itself — for each capture], ∂/∂x_in if ``input_grad``).
        Every δ_c arrives through the tensor hook registered on the output during the forward (the
        value the layer produced, even if an op changed it in place later), and ``each`` runs right
        there, while δ_c is hot in cache; δ_c is not kept. The backward is driven to the first
        hooked output of the pass if no op changed it in place (else to the input), so it runs
        through every hooked layer once; that output hands a copy downstream when small, so an
        in-place op after it does not change it (no input gradient of the first layer is taken).
        """
        if grad is not None:
            grad = grad.to(root.dtype)
        results: dict[int, object] = {}
        pending: dict[int, list[Capture]] = {}  # hook index -> captures served by it, forward order
        for c in sorted(captures, key=lambda c: c.index):
            if c.out is root:  # e.g. the head's output when root is the logits: δ is ``grad`` itself
                results[c.index] = each(c, grad) if each else grad
            else:
                pending.setdefault(c.index if c.source is None else c.source, []).append(c)
        x_grad = None
        # The backward stops at the first hooked layer's output when a later op did not change it in
        # place (after an in-place ReLU its tensor would carry another value); else at the input.
        # A later unmodified output would miss the layers before it and cost a second backward.
        first = self.captures[0] if self.captures else None
        anchor = first.out if first is not None and not first.modified and first.out.requires_grad \
            and first.out is not root else None
        use_input = input_grad or anchor is None
        if not input_grad and pending and first is not None and first.index not in pending:
            # Only some layers asked for (e.g. GAIA-A's last two stages): differentiate w.r.t. their own
            # outputs, so the backward stops at the earliest of them instead of running down to the stem.
            serving = [self.captures[i] for i in pending]
            if all(not c.modified and c.out.requires_grad and c.out is not root for c in serving):
                with self._sink.collecting(pending, each) as got:
                    torch.autograd.grad(root, [c.out for c in serving], grad_outputs=grad, retain_graph=True,
                                        allow_unused=True)
                results.update(got)
                # whatever is left does not influence ``root`` (no gradient reached it): zero, no 2nd backward
                unreached = [c for cs in pending.values() for c in cs if c.index not in results]
                pending = {}
                for c in unreached:
                    zero = torch.zeros_like(c.out)
                    results[c.index] = each(c, zero) if each else zero
        while pending or input_grad:
            targets = [self.x_in] if use_input else [anchor]
            with self._sink.collecting(pending, each) as got:
                out = torch.autograd.grad(root, targets, grad_outputs=grad, retain_graph=True, allow_unused=True)
            results.update(got)
            x_grad = out[0] if use_input and input_grad else x_grad
            pending = {i: left for i, cs in pending.items() if (left := [c for c in cs if c.index not in results])}
            if use_input or not pending:
                break
            use_input = True  # a hooked layer is not downstream of the anchor: drive the backward to the input
        for cs in pending.values():  # outputs that do not influence ``root``: zero gradient
            for c in cs:
                zero = torch.zeros_like(c.out)
                results[c.index] = each(c, zero) if each else zero
        return [results[c.index] for c in captures], (None if x_grad is None else x_grad.detach())

    def _reduce(self, loss: str | Callable, layers: Sequence[str] | None, job: "_Job",
                progress: Callable[[int, int], None] | None) -> tuple[list[str], list[int], torch.Tensor]:
        """Per-layer partial sums computed inside one backward (layer by layer as δ arrives), finished."""
        dloss = LOSSES.get(loss) if isinstance(loss, str) else loss
        if dloss is None:
            raise MethodError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
        caps = self.layer_captures(layers)
        # A folded BatchNorm's γ gradient comes from its convolution's kernel: run that one too
        helpers = [self.captures[c.source] for c in caps if c.source is not None
                   and all(o.index != c.source for o in caps)]
        kernels = {c.index: _Kernel(c, c.out, job) for c in caps + helpers}  # planned from shapes; δ set in the hook
        for c in caps:
            if c.source is not None:
                kernels[c.index].source = kernels[c.source]
        total = sum(-(-k.batch // _CHOICE.get(k.signature(), k.plans()[0])[1]) for k in kernels.values())
        done = [0]

        def tick() -> None:  # the chunk count is known exactly only after calibration: end on total
            done[0] += 1
            if progress is not None and done[0] < total:
                progress(done[0], total)

        def each(cap: Capture, grad: torch.Tensor) -> dict[str, torch.Tensor]:
            kernel = kernels.pop(cap.index)
            kernel.grad = grad
            with torch.no_grad():
                return _layer_values(kernel, tick)

        parts, _ = self.output_grads(self.logits, dloss(self.logits.detach()), caps + helpers, each=each)
        parts = parts[:len(caps)]
        with torch.no_grad():
            values = _finish(parts, [_Kernel.numel_of(c.module) for c in caps], job.stats)
        if progress is not None:
            progress(total, total)
        return [c.name for c in caps], [_Kernel.numel_of(c.module) for c in caps], values

    def layer_stats(self, loss: str | Callable = "nll_pred", stats: Sequence[str] = STATS,
                    layers: Sequence[str] | None = None, chunk_mib: float | None = None,
                    progress: Callable[[int, int], None] | None = None, compile: bool | str | None = None) -> LayerStats:
        """:func:`layer_gradient_stats` of this pass's batch (one backward on the kept graph)."""
        stats = _check_stats(stats)
        names, numels, values = self._reduce(loss, layers, _Job(stats, chunk_mib, compile), progress)
        return LayerStats(names, stats, values.float(), numels)

    def sq_l2_norms(self, loss: str | Callable = "confounding_sigmoid", layers: Sequence[str] | None = None,
                    chunk_mib: float | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    compile: bool | str | None = None) -> tuple[list[str], torch.Tensor]:
        """:func:`layer_sq_l2_norms` of this pass's batch (one backward on the kept graph)."""
        names, _, values = self._reduce(loss, layers, _Job(None, chunk_mib, compile), progress)
        return names, values.float()


# --------------------------------------------------------------------------------------------
# Per-layer partial sums from (input, output gradient)
#
# Partial sums kept per (sample, layer) so chunks, groups and bias combine exactly:
# s1 = Σ|g|, s2 = Σg², mx, mn, sm = Σg  (gradviz.reductions.PARTS).


def _merge(a: dict | None, b: dict) -> dict:
    """Partial sums of two disjoint pieces of one vector (a part only one of them has is kept)."""
    if a is None:
        return b
    out = dict(a)
    for k in b:
        out[k] = b[k] if k not in a else torch.maximum(a[k], b[k]) if k == "mx" else \
            torch.minimum(a[k], b[k]) if k == "mn" else a[k] + b[k]
    return out


def _parts_of(g: torch.Tensor, need: frozenset[str], kernel=None) -> dict[str, torch.Tensor]:
    """Partial sums of small per-sample vectors (b, ...) -> {part: (b,)} (``g`` is not overwritten)."""
    return reduce_rows(g.reshape(g.shape[0], -1), need, kernel)


def _rank_one_parts(d: torch.Tensor, a: torch.Tensor, bias: bool, need: frozenset[str],
                    kernel=None) -> dict[str, torch.Tensor]:
    """Partial sums of [δ aᵀ | δ] per sample and group without materialising: d (b,g,O), a (b,g,K).

    With the compiled ``kernel`` (one group) the row partials of δ and of a come from two calls of
    it (the bias column of ones added to a's partials), and the products are taken in float64."""
    if kernel is not None and d.shape[1] == 1 and len(need) > 1 and kernel.supports(d) and kernel.supports(a):
        pd, pa = kernel(d[:, 0]), kernel(a[:, 0])  # (b, 5) float64 each, PARTS order
        if bias:  # one more input feature, equal to 1
            pa = pa + pa.new_tensor([1.0, 1.0, 0.0, 0.0, 1.0])
            pa[:, 2].clamp_(min=1.0)
            pa[:, 3].clamp_(max=1.0)
        outer = pd[:, :, None] * pa[:, None, :]  # every product at once: a few ops, not a dozen
        ext = outer[:, 2:4, 2:4].reshape(-1, 4)  # the four products of the extremes
        both = {"s1": outer[:, 0, 0], "s2": outer[:, 1, 1], "mx": ext.amax(1), "mn": ext.amin(1),
                "sm": outer[:, 4, 4]}
        return {k: v for k, v in both.items() if k in need}
    if bias:  # the bias gradient is δ·1: append a constant-1 input feature
        a = torch.cat([a, a.new_ones(a.shape[:-1] + (1,))], dim=-1)
    out = {}
    if "s2" in need:
        out["s2"] = ((d * d).sum(-1) * (a * a).sum(-1)).sum(1)
    if "s1" in need:
        out["s1"] = (d.abs().sum(-1) * a.abs().sum(-1)).sum(1)
    if "sm" in need:
        out["sm"] = (d.sum(-1) * a.sum(-1)).sum(1)
    if "mx" in need or "mn" in need:
        d_max, d_min = d.amax(-1), d.amin(-1)
        a_max, a_min = a.amax(-1), a.amin(-1)
        prods = torch.stack([d_max * a_max, d_max * a_min, d_min * a_max, d_min * a_min], dim=-1)  # (b,g,4)
        out["mx"], out["mn"] = prods.amax(-1).amax(1), prods.amin(-1).amin(1)
    return out


@dataclass
class _Job:
    """What to compute per layer: six statistics (``stats``) or, with ``stats=None``, ‖∇θ‖² only."""

    stats: tuple[str, ...] | None
    chunk_mib: float | None
    compile: bool | str | None

    def __post_init__(self) -> None:
        mib = settings().chunk_mib if self.chunk_mib is None else float(self.chunk_mib)
        if not mib > 0:
            raise GradvizError(f"chunk_mib must be positive, got {self.chunk_mib}")
        self.budget = mib * 2**20
        self.mode = resolve_mode(self.compile)
        self.need = frozenset(PARTS) if self.stats is not None else frozenset({"s2"})


# Calibration: the fastest materialisation strategy per layer signature (shapes, dtype, device, job).
_CHOICE: dict[tuple, str] = {}


class _Kernel:
    """How one layer's per-sample gradient is formed from its input and output gradient."""

    @staticmethod
    def numel_of(module: nn.Module) -> int:
        """Entries of the layer's gradient vector (all its own parameters)."""
        return sum(p.numel() for p in module.parameters(recurse=False))

    def __init__(self, cap: Capture, grad: torch.Tensor, job: _Job) -> None:
        self.name, self.module, self.inp, self.grad, self.job = cap.name, cap.module, cap.inp, grad, job
        # A BatchNorm folded into its conv has no input of its own (its gradients come from the
        # conv's kernel, ``source``); a folded conv receives δz and applies the scale s itself.
        self.virtual = cap.source is not None
        self.fold = cap.fold if not self.virtual else None
        self.source: _Kernel | None = None
        # the folded output z (route 1 of finish_fold): the copy, or the output if nothing changed it
        self.z = None
        if self.fold is not None and self.fold.z_safe:
            self.z = cap.z if cap.z is not None else (None if cap.modified else cap.out.detach())
        if self.inp is None:
            self.inp = cap.out.detach()  # shapes, dtype and device only
        m = self.module
        self.batch = self.inp.shape[0]
        self.es = max(self.inp.element_size(), 4)
        self.need = job.need
        self.bias = getattr(m, "bias", None) is not None
        self.tap_major = False
        compiled = fused_kernel(job.mode, self.inp.dtype)
        self.fused = compiled if len(self.need) > 1 or isinstance(m, _BN) else None
        # the compiled direct conv kernel: statistics reduced in registers, nothing materialised
        self.direct = compiled if compiled is not None and compiled.conv_supported(m, self.inp) else None
        if isinstance(m, _BN):
            self.kind = "bn"
            self.numel = sum(p.numel() for p in m.parameters(recurse=False))
            self.candidates = ["bn"]
            self.sample_bytes = {"bn": 0 if self.virtual else self.inp[0].numel() * self.es}
            return
        if isinstance(m, nn.Linear):
            self.groups, self.o, self.k = 1, m.out_features, m.in_features
            self.positions = self.inp[0].numel() // self.k
        else:
            self.groups, self.o, self.k = m.groups, m.out_channels, m.weight[0].numel() * m.groups
            self.positions = self.grad[0, 0].numel()
        g, p = self.groups, self.positions
        og, kg = self.o // g, self.k // g
        self.numel = self.o * kg + (self.o if self.bias else 0)
        if p == 1:
            self.kind, self.candidates = "rank1", ["rank1"]
            self.sample_bytes = {"rank1": 0}
            return
        self.kind = "dense"
        # U of a plain conv is built tap-major, (b, P, kh·kw·Cin) from a channels-last copy: a
        # strided copy with Cin innermost (~3x faster than im2col) that bmm reads contiguously. Its
        # columns are a permutation of G's (the statistics do not depend on the order).
        self.tap_major = isinstance(m, nn.Conv2d) and g == 1
        grad_bytes = g * og * kg * self.es  # one sample's materialised weight gradient
        unfold_bytes = self.k * p * self.es
        # The unfolded input of the whole batch is built once when it fits the budget (per-chunk
        # unfolding of small maps is dominated by per-op overhead).
        self.unfold_once = unfold_bytes * self.batch <= job.budget
        self._u_all: torch.Tensor | None = None
        per_chunk_u = 0 if self.unfold_once else unfold_bytes
        self.gram_cost = g * p * p * (og + kg + 1)  # flops of the Gram norm vs a pass over ∇W
        self.sample_bytes = {"bmm": grad_bytes + per_chunk_u, "conv": grad_bytes + self.inp[0].numel() * self.es,
                             "gram": per_chunk_u + 2 * g * p * p * self.es}
        self.sample_bytes["direct"] = 0
        split = self._split("bmm")
        if split is not None:  # bmm then materialises only the columns that see several positions
            self.sample_bytes["bmm"] = grad_bytes * split[0].numel() // max(1, kg) + per_chunk_u
        self.candidates = (["direct"] if self.direct is not None else []) + ["bmm"]
        self.candidates += ["conv"] if isinstance(m, nn.Conv2d) else []
        if job.stats is None:
            self.candidates.append("gram")
        # eager path: parts cheaper from factorised forms, computed once per layer; only where the
        # unfolded input of the whole batch exists (else the Gram form would unfold again)
        self.cheap = self._factorised(self.need) if self.fused is None and self.unfold_once else set()

    # ---- planning

    def chunk(self, strategy: str, limit: float | None = None) -> int:
        """Samples per chunk so that ``strategy``'s memory stays within ``limit`` (default: the budget)."""
        per = self.sample_bytes[strategy]
        limit = self.job.budget if limit is None else min(limit, self.job.budget)
        return self.batch if per == 0 else max(1, min(self.batch, int(limit // per)))

    def plans(self) -> list[tuple[str, int]]:
        """Candidate (strategy, samples per chunk): cache-sized chunks (memory-bound layers) and
        budget-sized chunks (compute-bound layers: fewer, larger matmuls). The first is the default."""
        out: list[tuple[str, int]] = []
        threads = torch.get_num_threads()
        for strategy in self.candidates:
            for limit in (*SPEED_CHUNK_BYTES, None) if self.kind == "dense" and strategy in ("bmm", "conv") else (None,):
                step = self.chunk(strategy, limit)
                if threads < step < self.batch:  # whole samples per thread: a batched matmul splits over them
                    step -= step % threads
                plan = (strategy, step)
                if plan not in out:
                    out.append(plan)
        return out

    def signature(self) -> tuple:
        m = self.module
        conv = (m.kernel_size, m.stride, m.padding, m.dilation, m.groups, m.padding_mode) if isinstance(m, nn.Conv2d) else ()
        return (type(m).__name__, tuple(self.inp.shape[1:]), tuple(self.grad.shape[1:]), conv, self.bias,
                self.inp.dtype, str(self.inp.device), self.job.stats is None, self.fused is not None,
                self.direct is not None, self.fold is not None, self.virtual, self.job.budget)

    # ---- operands

    def _padded(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Input padded by hand for non-zero padding modes and 'same'/'valid' strings."""
        m = self.module
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
            return F.pad(x, m._reversed_padding_repeated_twice, mode=mode), (0,) * len(m.kernel_size)
        return x, tuple(m.padding)

    def operands(self, sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(U (b, g, Kg, P), Δ (b, g, Og, P)) for samples ``sl``."""
        m, x, d = self.module, self.inp[sl], self.grad[sl]
        b, g, p = x.shape[0], self.groups, self.positions
        if isinstance(m, nn.Linear):
            return (x.reshape(b, p, self.k).transpose(1, 2).unsqueeze(1),
                    d.reshape(b, p, self.o).transpose(1, 2).unsqueeze(1))
        if self.kind == "dense" and self.unfold_once:
            if self._u_all is None:
                self._u_all = self._unfold(self.inp)
            u = self._u_all[sl]
        else:
            u = self._unfold(x)
        return u.view(b, g, self.k // g, p), d.reshape(b, g, self.o // g, p)

    def _unfold(self, x: torch.Tensor) -> torch.Tensor:
        """The unfolded input (b, Cin·kh·kw, P), as ``F.unfold`` (tap-major columns: a view of
        (b, P, kh·kw·Cin), see ``tap_major``)."""
        m = self.module
        x, padding = self._padded(x)
        if self.kind == "dense" and self.tap_major:
            return _unfold_taps(x, m.kernel_size, padding, m.stride, m.dilation).transpose(1, 2)
        if self.positions == 1:  # a 1×1 output sees one window: the top-left patch (im2col costs 0.3 ms here)
            x = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else x
            (kh, kw), (dh, dw) = m.kernel_size, m.dilation
            return x[:, :, : dh * (kh - 1) + 1: dh, : dw * (kw - 1) + 1: dw].reshape(x.shape[0], -1, 1)
        if self.positions <= 16 or tuple(m.dilation) != (1, 1):  # tiny maps (and dilation): one im2col call
            return F.unfold(x, m.kernel_size, m.dilation, padding, m.stride)
        return _unfold(x, m.kernel_size, padding, m.stride)

    def _delta(self, sl: slice) -> torch.Tensor:
        """Δ (b, g, Og, P) for samples ``sl`` (Linear's (b, P, O) layout transposed); for a folded
        conv δy = s ⊙ δz, scaled once for the whole layer (one op, not one per chunk)."""
        if getattr(self, "_d_all", None) is None:
            every = slice(None)
            if isinstance(self.module, nn.Linear):
                d = self.operands(every)[1]
            else:
                d = self.grad.reshape(self.batch, self.groups, self.o // self.groups, self.positions)
            self._d_all = d if self.fold is None else d * self._fold_scale(d.dtype).view(1, self.groups, -1, 1)
        return self._d_all[sl]

    def materialise(self, strategy: str, sl: slice, buf: torch.Tensor | None,
                    scaled: bool = True, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(per-sample weight gradients (b, g, Og, Kg), U or None) for samples ``sl``; for a folded
        conv from δy = s ⊙ δz (``scaled``) or from δz itself; ``rows``: only those columns (bmm)."""
        b, g = self.inp[sl].shape[0], self.groups
        og, kg = self.o // g, self.k // g
        scale = self._fold_scale(self.grad.dtype) if scaled and self.fold is not None else None
        if strategy == "bmm":
            u, d = self.operands(sl)
            if rows is not None:
                u, kg = self._rows_of(u, sl, rows), rows.numel()
            if scale is not None:
                d = self._delta(sl)
            out = None if buf is None else buf[: b * g * og * kg].view(b, g, og, kg)
            return torch.matmul(d, u.transpose(-1, -2), out=out), u
        # conv: the weight-backward of a grouped convolution with the b samples as b·groups groups,
        # (1, b·Cin, H, W) ⋆ (1, b·O, Ho, Wo) -> (b·O, Cin/g, kh, kw); fast where positions are many.
        m = self.module
        x, padding = self._padded(self.inp[sl])
        d = self.grad[sl]
        if scale is not None:
            d = d * scale.view(1, -1, *([1] * (d.dim() - 2)))
        weight = m.weight.detach()
        shape_only = weight.new_empty(1).expand(b * weight.shape[0], *weight.shape[1:])  # only its shape is read
        grad_w = torch.ops.aten.convolution_backward(
            d.reshape(1, b * self.o, *d.shape[2:]), x.reshape(1, -1, *x.shape[2:]), shape_only, None,
            list(m.stride), list(padding), list(m.dilation), False, [0] * len(m.stride), b * g, [False, True, False],
        )[1]
        return grad_w.view(b, g, og, kg), None

    def _rows_of(self, u: torch.Tensor, sl: slice, rows: torch.Tensor) -> torch.Tensor:
        """U's columns ``rows`` (multi-position taps × every input channel, in F.unfold's order) for
        samples ``sl``: gathered once per layer where U is unfolded once."""
        if self.tap_major:  # those columns are whole tap blocks of Cin here: copy blocks, not columns
            if getattr(self, "_taps_kept", None) is None:
                taps = self.k // self.module.in_channels
                self._taps_kept = rows[rows < taps]  # the input channel 0's columns: the taps kept
            def gather(v):
                b, p = v.shape[0], v.shape[-1]
                blocks = v.transpose(-1, -2).reshape(b, p, -1, self.module.in_channels)  # a view
                kept = blocks.index_select(2, self._taps_kept)
                return kept.reshape(b, 1, p, -1).transpose(-1, -2)
        else:
            def gather(v):
                return v[:, :, rows]
        if not self.unfold_once:
            return gather(u)
        if getattr(self, "_u_rows", None) is None:
            self._u_rows = gather(self.operands(slice(None))[0])
        return self._u_rows[sl]

    def _patch_sums(self, sl: slice) -> torch.Tensor:
        """Σ_k U_kp per sample, group and output position: (b, g, P), by a ones-kernel convolution."""
        m, x = self.module, self.inp[sl]
        b, g = x.shape[0], self.groups
        x, padding = self._padded(x)
        xs = x.reshape(b * g, x.shape[1] // g, *x.shape[2:]).sum(1, keepdim=True)
        ones = x.new_ones(1, 1, *m.kernel_size)
        out = F.conv2d(xs, ones, stride=m.stride, padding=padding, dilation=m.dilation)
        return out.reshape(b, g, self.positions)

    @staticmethod
    def _gram_sq(u: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """‖Δ Uᵀ‖²_F per sample from the Gram matrices: Σ_pq (UᵀU)_pq (ΔᵀΔ)_pq, (b,)."""
        return (torch.matmul(u.transpose(-1, -2), u) * torch.matmul(d.transpose(-1, -2), d)).sum((1, 2, 3))

    # ---- partial sums

    def parts(self, strategy: str, sl: slice, buf: torch.Tensor | None) -> dict[str, torch.Tensor] | torch.Tensor:
        """Partial sums of the weight part of the per-sample gradients of samples ``sl``.

        {part: (b,)} for the wanted parts, or a (b, 5) float64 tensor in :data:`PARTS` order from
        the fused kernel. The bias part is added once per layer (:meth:`bias_parts`).
        """
        need = self.need
        if self.kind == "bn":
            return _parts_of(self._bn_grad(sl), need, self.fused)
        if self.kind == "rank1":
            u, d = self.operands(sl)
            if self.fold is not None and self.z is None:  # G' = δz aᵀ: Σ_k W_ok G'_ok = δz_o (W a)_o
                w = self._fold_weight(d.dtype)
                wa = torch.matmul(u[:, 0, :, 0], w[0].t())[:, None] if self.groups == 1 else \
                    torch.einsum("bgk,gok->bgo", u[..., 0], w)
                self._fold_rows("dots", sl)[:] = (d[..., 0] * wa).reshape(d.shape[0], -1)
            if self.fold is not None:
                d = d * self._fold_scale(d.dtype).view(1, self.groups, -1, 1)
            return _rank_one_parts(d[..., 0], u[..., 0], False, need, self.fused)
        if strategy == "gram":
            u, d = self.operands(sl)
            if self.fold is not None:
                d = d * self._fold_scale(d.dtype).view(1, self.groups, -1, 1)
            return {"s2": self._gram_sq(u, d)}
        if strategy == "direct":
            m = self.module
            x, padding = self._padded(self.inp[sl])
            fold = self.fold
            args = {} if fold is None else fold.direct_args()
            if fold is not None and not self._dot_route(strategy):
                args = {k: v for k, v in args.items() if k != "weight_t"}
                if "d_scale" not in args:  # no dot products: the scale may go on δz either way
                    args = {"d_scale": fold.scale}
                if self.z is not None:  # route 1 of finish_fold, in the same pass over δz
                    args.update(z=self.z[sl], z_shift=self._fold_beta())
            split = self._split(strategy)
            if split is not None and split[0].numel():  # the closed-form columns inside the kernel, too
                args.update(rows=split[0], single=split[3], zero_taps=split[2])
            out = self.direct.conv_parts(x, self.grad[sl], m.kernel_size, m.stride, padding, m.dilation,
                                         only_s2=self.job.stats is None, **args)
            if isinstance(out, tuple):
                out, dots, self._fold_rows("dz", sl)[:], zdots = out
                if dots is not None:
                    self._fold_rows("dots", sl)[:] = dots
                if zdots is not None:
                    self._fold_rows("zdots", sl)[:] = zdots
            if split is None or split[0].numel():
                return {"s2": out[:, 1]} if self.job.stats is None else out
            return self._single_tap_parts(sl, need)  # every column in closed form
        dot = self.fold is not None and self._dot_route(strategy)
        split = self._split(strategy)
        if strategy == "bmm" and not dot and self.unfold_once and buf is not None and \
                (split is None or split[0].numel()):
            return self._bmm_parts(sl, buf, split)
        if split is not None:  # bmm over the columns that see several positions; the rest in closed
            need_here = need - self.cheap  # form, once per layer (layer_parts): per-chunk ops cost more
            if not split[0].numel():
                return self._single_tap_parts(sl, need_here)
            grad_w, _ = self.materialise(strategy, sl, buf, rows=split[0])
            flat = grad_w.reshape(grad_w.shape[0], -1)
            return reduce_rows(flat, need_here, self.fused, scratch=buf is not None)
        grad_w, _ = self.materialise(strategy, sl, buf, scaled=not dot)  # (b, g, Og, Kg)
        if dot:  # from δz: the dot products with W first, then the scale s in place
            w = self._fold_weight(grad_w.dtype, tap_major=strategy == "bmm" and self.tap_major)
            b = grad_w.shape[0]
            self._fold_rows("dots", sl)[:] = (grad_w * w).sum(-1).reshape(b, -1)
            grad_w = grad_w.mul_(self._fold_scale(grad_w.dtype).view(self.groups, -1, 1))
        flat = grad_w.reshape(grad_w.shape[0], -1)
        if self.fused is not None:
            return self.fused(flat)
        return reduce_rows(flat, need - self.cheap, scratch=buf is not None or strategy == "conv")

    def prepare(self, strategy: str):
        """Build what every chunk of ``strategy`` reads, once per layer (calibration charges it):
        the unfolded input of the whole layer where it fits the budget, and for ``bmm`` its
        operands as the chunks read them."""
        if self.kind != "dense" or not self.unfold_once or strategy not in ("bmm", "gram"):
            return None
        if strategy == "gram" or self.fold is not None and self._dot_route(strategy):
            return self.operands(slice(None))
        if getattr(self, "_bmm_operands", None) is None:
            every, split = slice(None), self._split(strategy)
            u = self.operands(every)[0]
            if split is not None and split[0].numel():
                u = self._rows_of(u, every, split[0])
            self._bmm_operands = (self._delta(every), u.transpose(-1, -2))
        return self._bmm_operands

    def setup_estimate(self, strategy: str) -> float:
        """Seconds :meth:`prepare` would take, from unfolding an eighth of the batch (0 if none)."""
        if self.kind != "dense" or not self.unfold_once or strategy not in ("bmm", "gram") \
                or self._u_all is not None:
            return 0.0
        n = max(1, self.batch // 8)
        t0 = time.perf_counter()
        self._unfold(self.inp[:n])
        return (time.perf_counter() - t0) * self.batch / n

    def _bmm_parts(self, sl: slice, buf: torch.Tensor, split) -> dict[str, torch.Tensor] | torch.Tensor:
        """``bmm`` where U of the whole layer exists: δ (scaled) and Uᵀ (the kept columns) are
        prepared once per layer, so a chunk is one matmul into ``buf`` and its reductions (small
        cache-sized chunks are fast only if little else runs per chunk)."""
        d, ut = self.prepare("bmm")
        d, ut = d[sl], ut[sl]
        shape = (d.shape[0], d.shape[1], d.shape[2], ut.shape[3])
        grad_w = torch.matmul(d, ut, out=buf[: math.prod(shape)].view(shape))
        flat = grad_w.view(shape[0], -1)
        if self.fused is not None and split is None:
            return self.fused(flat)
        return reduce_rows(flat, self.need - self.cheap, self.fused, scratch=True)

    # ---- columns of G that see one output position only (small maps)

    def _split(self, strategy: str):
        """(columns of G with several positions (K',) int64, single-position taps) where some taps of
        the kernel see one output position only (or none: zero columns), as on 2×2 maps with a 3×3
        kernel; those columns of G_b are δ_b[:, p] times one input pixel, in closed form. None where
        nothing is gained, or for ``conv``/``gram`` and the dot-product route of a folded BatchNorm."""
        if strategy not in ("direct", "bmm") or (self.fold is not None and self._dot_route(strategy)):
            return None
        if not hasattr(self, "_split_info"):
            m = self.module
            self._split_info = _tap_split(tuple(m.kernel_size), tuple(m.stride), m.padding, tuple(m.dilation),
                                          m.padding_mode, m.in_channels, tuple(self.inp.shape[-2:]), self.positions) \
                if self.kind == "dense" and self.groups == 1 and isinstance(m, nn.Conv2d) else None
        return self._split_info

    def _single_tap_parts(self, sl: slice, need: frozenset[str]) -> dict[str, torch.Tensor]:
        """Partial sums of the closed-form columns: for a tap t seeing position p_t only, column
        (c, t) of G_b is x_b[c, h_t, w_t] · δ_b[:, p_t] (zero columns, too, count for max/min)."""
        _, taps, zero_taps, _ = self._split_info
        out: dict[str, torch.Tensor] = {}
        d = self._delta(sl)[:, 0]  # (b, O, P), scaled where folded
        b = d.shape[0]
        if taps is not None:
            pos, hi, wi = taps
            dd = d[:, :, pos]  # (b, O, T1)
            xv = self.inp[sl][:, :, hi, wi]  # (b, C, T1)
            if "s1" in need:
                out["s1"] = (xv.abs() * dd.abs().sum(1, keepdim=True)).sum((1, 2))
            if "s2" in need:
                out["s2"] = (xv * xv * (dd * dd).sum(1, keepdim=True)).sum((1, 2))
            if "sm" in need:
                out["sm"] = (xv * dd.sum(1, keepdim=True)).sum((1, 2))
            if "mx" in need or "mn" in need:
                hi_d, lo_d = dd.amax(1, keepdim=True), dd.amin(1, keepdim=True)
                a, c = xv * hi_d, xv * lo_d
                out["mx"] = torch.maximum(a, c).amax((1, 2))
                out["mn"] = torch.minimum(a, c).amin((1, 2))
        if zero_taps:
            zero = d.new_zeros(b)
            for k in ("mx", "mn"):
                if k in need:
                    out[k] = zero if k not in out else (torch.maximum if k == "mx" else torch.minimum)(out[k], zero)
            for k in ("s1", "s2", "sm"):
                if k in need and k not in out:
                    out[k] = zero
        return {k: v.double() for k, v in out.items()}

    # ---- a BatchNorm folded into this conv (gradviz.folding)

    def _fold_scale(self, dtype: torch.dtype) -> torch.Tensor:
        return self.fold.scale.to(dtype)

    def _fold_weight(self, dtype: torch.dtype, tap_major: bool = False) -> torch.Tensor:
        """The conv's own weight as (g, Og, Kg) (columns in tap-major order: ``tap_major``)."""
        g, w = self.groups, self.module.weight.detach().to(dtype)
        if tap_major:
            w = w.permute(0, 2, 3, 1)
        return w.reshape(g, self.o // g, self.k // g)

    def _fold_beta(self) -> torch.Tensor:
        bn = self.fold.bn
        return bn.bias.detach() if bn.bias is not None else torch.zeros_like(bn.running_mean)

    def _fold_rows(self, name: str, sl: slice) -> torch.Tensor:
        """(b, O) float64 rows of a per-sample, per-channel sum for the folded BatchNorm, written by
        :meth:`parts` chunk by chunk: ``dots`` Σ_k W_ok G'_ok (G' = δz ⋆ U), ``dz`` Σ_p δz and
        ``zdots`` Σ_p δz (z − β) (the last two from the direct kernel). NaN until written."""
        rows = self.__dict__.setdefault("_fold_sums", {})
        if name not in rows:
            rows[name] = torch.full((self.batch, self.o), float("nan"), dtype=torch.float64, device=self.inp.device)
        return rows[name][sl]

    def _fold_sum(self, name: str) -> torch.Tensor | None:
        """The whole (B, O) sum ``name`` if :meth:`parts` wrote every sample's, else None."""
        t = self.__dict__.get("_fold_sums", {}).get(name)
        return None if t is None or t.isnan().any() else t

    def _dot_route(self, strategy: str) -> bool:
        """Whether the folded BatchNorm's Σ_p δz y comes from dot products Σ_k W G' taken while G'
        is reduced (cheap where a gradient entry sums many positions). Not needed where the folded
        output z is at hand (:meth:`finish_fold`); otherwise, and always for ``gram`` (which never
        forms G'), y is recomputed by one batched convolution (cheap where positions are few)."""
        if strategy == "gram" or self.kind == "rank1" or self.z is not None:
            return False
        return self.positions >= (16 if strategy == "direct" else 32)

    def finish_fold(self, strategy: str) -> None:
        """The folded BatchNorm's per-sample [∇γ, ∇β] (b, 2C): ∇β = Σ_p δz and ∇γ = Σ_p δz x̂ with
        x̂ = (y − μ)/σ, by the first route that applies: (1) x̂ = (z − β)/γ from the folded output z
        (kept in the forward when small, or unchanged since; only where γ is a safe divisor,
        :attr:`Fold.z_safe`); (2) the dot products, ∇γ = (Σ_k W G' + (bias − μ) Σ_p δz)/σ;
        (3) y recomputed by a convolution, centred exactly."""
        fold, bn = self.fold, self.fold.bn
        if self.z is not None:  # x̂ = (z − β)/γ from the folded output itself (Fold.z_safe)
            dx, dz = self._fold_sum("zdots"), self._fold_sum("dz")
            if dx is None or dz is None:  # not from the direct kernel
                dx, dz = _bn_sums(self.z, self.grad, self._fold_beta(), self.fused, bn.weight is not None)
            dz = dz.double()
            dy = None if dx is None or bn.weight is None else \
                dx.double() / (bn.weight.detach().double() * fold.inv_std.double())
        elif self.kind == "rank1" or self._dot_route(strategy):  # Σ_k W G' + (bias − μ) Σ_p δz
            dz = self._fold_sum("dz")
            if dz is None:
                dz = self.grad.reshape(self.batch, self.o, -1).sum(-1).double()
            dy = (self._fold_rows("dots", slice(None)) + fold.shift.double() * dz) if bn.weight is not None else None
        else:
            m = self.module
            x, padding = self._padded(self.inp)
            y = F.conv2d(x, m.weight.detach(), None if m.bias is None else m.bias.detach(), m.stride, padding,
                         m.dilation, m.groups)  # the BatchNorm's input
            dy, dz = _bn_sums(y, self.grad, bn.running_mean, self.fused, bn.weight is not None)
            dy, dz = (None if dy is None else dy.double()), dz.double()
        pieces = []
        if bn.weight is not None:
            pieces.append(dy * fold.inv_std.double())
        if bn.bias is not None:
            pieces.append(dz)
        self.bn_grads = torch.cat(pieces, dim=1) if pieces else dz[:, :0]
        self.__dict__.pop("_fold_sums", None)

    def layer_parts(self, strategy: str) -> dict[str, torch.Tensor] | None:
        """Parts computed once for all samples of the layer: the bias gradient Σ_p Δ_op, and on the
        eager path the factorised sum and squared norm (:meth:`_factorised`); None if there are none."""
        extra: dict[str, torch.Tensor] | None = None
        everyone = slice(None)
        if self.bias and self.kind != "bn":
            extra = _parts_of(self._delta(everyone).sum(-1), self.need, self.fused)
        split = self._split(strategy) if strategy == "bmm" else None
        if split is not None and split[0].numel():  # the closed-form columns beside bmm's chunks
            single = self._single_tap_parts(everyone, self.need - self.cheap)
            extra = _merge(extra, single) if extra is not None else single
        if self.kind == "dense" and strategy in ("bmm", "conv") and self.fused is None and self.cheap:
            d = self._delta(everyone)
            cheap = {}
            if "sm" in self.cheap:
                cheap["sm"] = (d.sum(2) * self._patch_sums(everyone)).sum((1, 2))
            if "s2" in self.cheap:
                cheap["s2"] = self._gram_sq(self.operands(everyone)[0], d)
            extra = _merge(extra, cheap) if extra is not None else cheap
        return extra

    def _factorised(self, need: frozenset[str]) -> set[str]:
        """Parts cheaper from factorised forms than from one more eager pass over ∇W."""
        cheap = set()
        pass_cost = self.o * self.k // self.groups
        if "sm" in need and isinstance(self.module, nn.Conv2d) and self.inp[0].numel() < pass_cost:
            cheap.add("sm")
        if "s2" in need and self.gram_cost < pass_cost:
            cheap.add("s2")
        return cheap

    def _bn_grad(self, sl: slice) -> torch.Tensor:
        """[∇γ, ∇β] per sample, (b, 2C) (or the one that exists)."""
        if self.source is not None:  # folded into the conv before it: computed by that conv's kernel
            return self.source.bn_grads[sl]
        m = self.module
        dx, db = _bn_sums(self.inp[sl], self.grad[sl], m.running_mean, self.fused, m.weight is not None)
        pieces = []
        if m.weight is not None:
            pieces.append(dx * torch.rsqrt(m.running_var.to(dx.dtype) + m.eps))
        if m.bias is not None:
            pieces.append(db)
        return torch.cat(pieces, dim=1)


@lru_cache(maxsize=256)
def _tap_split(kernel_size, stride, padding, dilation, padding_mode: str, c_in: int, size: tuple[int, int],
               positions: int):
    """See :meth:`_Kernel._split`: (multi-position columns, (positions, rows, cols) of the
    single-position taps or None, number of zero taps, the same as (n, 3) triples), or None if
    fewer than two taps qualify.
    Depends on the geometry only (cached)."""
    if padding_mode != "zeros" or isinstance(padding, str):
        return None
    padding = tuple(padding)
    mask = F.unfold(torch.ones(1, 1, *size), kernel_size, dilation, padding, stride)[0]  # (T, P)
    if mask.shape[1] != positions:
        return None
    counts = (mask != 0).sum(-1)
    single = (counts == 1).nonzero().flatten()
    zero = int((counts == 0).sum())
    if single.numel() + zero < 2:
        return None
    taps = mask.shape[0]
    multi = (counts > 1).nonzero().flatten()
    rows = (torch.arange(c_in)[:, None] * taps + multi[None, :]).flatten()
    info = None
    if single.numel():
        pos = mask[single].argmax(-1)  # the one position each single tap sees
        wo = (size[1] + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
        ho_, wo_ = pos // wo, pos % wo
        i, j = single // kernel_size[1], single % kernel_size[1]
        hi = ho_ * stride[0] - padding[0] + i * dilation[0]
        wi = wo_ * stride[1] - padding[1] + j * dilation[1]
        info = (pos, hi, wi)
    triples = torch.stack(info, 1) if info is not None else torch.zeros(0, 3, dtype=torch.int64)
    return rows, info, zero, triples


def _bn_sums(x: torch.Tensor, d: torch.Tensor, mean: torch.Tensor, fused, centred: bool
             ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(Σ_s δ (x − μ_c), Σ_s δ) per sample and channel of a BatchNorm input x and output gradient δ,
    (b, C) each; centred first, so a large mean cannot cancel digits away (None if not ``centred``)."""
    b, c = x.shape[0], x.shape[1]
    x, d = x.reshape(b, c, -1), d.reshape(b, c, -1)
    # the compiled kernel runs one row (sample, channel) at a time: for small maps eager is faster
    both = fused.bn_parts(x, d, mean) if fused is not None and x.shape[-1] >= 64 else None
    if both is not None:
        return both[..., 0], both[..., 1]
    dx = (x - mean.view(1, c, 1).to(x.dtype)).mul_(d).sum(-1) if centred else None
    return dx, d.sum(-1)


def _unfold(x: torch.Tensor, kernel, padding, stride) -> torch.Tensor:
    """``F.unfold`` (dilation 1) as one strided copy of a sliding-window view: (b, C·kh·kw, P).

    aten's CPU im2col is several times slower on larger maps."""
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else x
    windows = x.unfold(2, kernel[0], stride[0]).unfold(3, kernel[1], stride[1])  # (b, C, Ho, Wo, kh, kw)
    b, c, ho, wo = windows.shape[:4]
    return windows.permute(0, 1, 4, 5, 2, 3).reshape(b, c * kernel[0] * kernel[1], ho * wo)


def _unfold_taps(x: torch.Tensor, kernel, padding, stride, dilation) -> torch.Tensor:
    """The unfolded input tap-major, (b, P, kh·kw·C): column t·C + c is F.unfold's c·kh·kw + t.

    One strided copy of a window view of the channels-last (zero-padded) input, C innermost."""
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else x
    x = x.contiguous(memory_format=torch.channels_last)
    b, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    sb, sc, sy, sx = x.stride()
    windows = x.as_strided((b, ho, wo, kh, kw, c), (sb, sy * sh, sx * sw, sy * dh, sx * dw, sc), x.storage_offset())
    return windows.reshape(b, ho * wo, kh * kw * c)


def _finish(layers: list[dict[str, torch.Tensor]], numels: list[int], stats: Sequence[str] | None) -> torch.Tensor:
    """(B, L, S) statistics of L layers from their partial sums (float64); (B, L) ‖∇‖² if no stats."""
    p = {k: torch.stack([parts[k] for parts in layers], dim=1).double() for k in layers[0]}
    if stats is None:
        return p["s2"]
    n = torch.tensor(numels, dtype=torch.float64, device=p["s2"].device)
    mean = p["sm"] / n
    cols = {
        "l1": p["s1"], "l2": p["s2"].clamp_min(0).sqrt(), "max": p["mx"], "min": p["mn"], "mean": mean,
        "std": (p["s2"] / n - mean * mean).clamp_min(0).sqrt(),
    }
    return torch.stack([cols[s] for s in stats], dim=-1)


class _Totals:
    """Per-sample partial sums of one layer, filled chunk by chunk in sample order, joined once
    per part at the end (one assignment per part and chunk cost more than the chunk's reductions)."""

    def __init__(self, batch: int, need: frozenset[str]) -> None:
        self.chunks: list[dict[str, torch.Tensor] | torch.Tensor] = []
        self.batch, self.need = batch, need

    def put(self, sl: slice, parts: dict[str, torch.Tensor] | torch.Tensor) -> None:
        """Parts of samples ``sl`` (the next ones): {part: (b,)}, or (b, 5) in PARTS order."""
        self.chunks.append(parts)

    def result(self, extra: dict[str, torch.Tensor] | None, layer_only: set[str]) -> dict[str, torch.Tensor]:
        """The layer's partial sums; ``layer_only`` parts come from ``extra`` alone (not chunked)."""
        out = {}
        for i, k in enumerate(PARTS):
            if k in self.need and k not in layer_only:
                col = [c[:, i] if isinstance(c, torch.Tensor) else c[k] for c in self.chunks]
                out[k] = (col[0] if len(col) == 1 else torch.cat(col)).double()
        assert not out or next(iter(out.values())).shape[0] == self.batch
        if extra is None:
            return out
        extra = {k: v.double() for k, v in extra.items()}
        merged = _merge(out, {k: v for k, v in extra.items() if k in out})
        merged.update({k: v for k, v in extra.items() if k not in out})
        return merged


def _layer_values(k: _Kernel, progress: Callable[[], None]) -> dict[str, torch.Tensor]:
    """Partial sums {part: (B,) float64} of one layer, chunk by chunk, with the calibrated plan."""
    key = k.signature()
    plan = _CHOICE.get(key)
    totals, start = _Totals(k.batch, k.need), 0
    plans = k.plans()
    if plan is None and len(plans) > 1:
        # One-off calibration on the first chunk: each plan three times (the first call of a shape
        # pays set-up costs; the best of the others resists a busy core), plus what its strategy
        # builds once per layer (prepare); the cheapest for the whole layer is used for every
        # later chunk and batch.
        best_cost, best_parts, setup, tried = float("inf"), None, {}, {}
        for cand in plans:
            if cand[0] not in setup:  # a set-up that alone costs more than the best plan: skip it
                skip = best_cost < float("inf") and k.setup_estimate(cand[0]) > CALIBRATION_MARGIN * best_cost
                t0 = time.perf_counter()
                if not skip:
                    k.prepare(cand[0])
                setup[cand[0]] = None if skip else time.perf_counter() - t0
            if setup[cand[0]] is None or tried.get(cand[0], 0.0) > 2 * CALIBRATION_MARGIN * best_cost:
                continue  # another chunk size seldom makes up for that much
            sl, buf = slice(0, cand[1]), _buffer(k, *cand)
            rate = float("inf")
            for run in range(3):
                t0 = time.perf_counter()
                parts = k.parts(cand[0], sl, buf)
                rate = min(rate, (time.perf_counter() - t0) / cand[1])
                if run and setup[cand[0]] + rate * k.batch > CALIBRATION_MARGIN * best_cost:
                    break  # clearly slower after its warm-up run: no third run
            cost = setup[cand[0]] + rate * k.batch
            tried[cand[0]] = min(tried.get(cand[0], float("inf")), cost)
            if cost < best_cost:
                best_cost, best_parts, plan = cost, parts, cand
        _CHOICE[key] = plan
        totals.put(slice(0, plan[1]), best_parts)
        start = plan[1]
        progress()
    strategy, step = plan or plans[0]
    buf = _buffer(k, strategy, step)
    for i in range(start, k.batch, step):
        totals.put(slice(i, i + step), k.parts(strategy, slice(i, i + step), buf))
        progress()
    layer_only = k.cheap if strategy in ("bmm", "conv") and k.kind == "dense" else set()
    result = totals.result(k.layer_parts(strategy), layer_only)
    if k.fold is not None:
        k.finish_fold(strategy)
    return result


_SCRATCH = threading.local()


def _buffer(k: _Kernel, strategy: str, samples: int) -> torch.Tensor | None:
    """The ``bmm`` strategy's output buffer: one per thread, reused across chunks, layers and calls
    (a fresh multi-MiB allocation costs a page fault per 4 KiB on every first touch)."""
    if k.kind != "dense" or strategy != "bmm":
        return None
    n = samples * k.o * (k.k // k.groups)
    key = (k.inp.dtype, k.inp.device)
    buf = getattr(_SCRATCH, "buffers", {}).get(key)
    if buf is None or buf.numel() < n:
        _SCRATCH.buffers = {**getattr(_SCRATCH, "buffers", {}), key: k.inp.new_empty(n)}
        buf = _SCRATCH.buffers[key]
    return buf[:n]


# --------------------------------------------------------------------------------------------
# Public API


def _check_stats(stats: Sequence[str]) -> tuple[str, ...]:
    stats = tuple(stats)
    bad = [s for s in stats if s not in STATS]
    if bad or not stats:
        raise MethodError(f"unknown statistic(s) {bad}; choose from {', '.join(STATS)}")
    return stats


def _over_sub_batches(model, x, layers, progress, run: Callable[[GradientPass, Callable | None], tuple]):
    """Run ``run(pass, progress)`` on sub-batches of at most FORWARD_BATCH; concatenates values."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] == 0:
        raise GradvizError("expected a non-empty batch tensor (B, C, H, W)")
    starts = list(range(0, x.shape[0], FORWARD_BATCH))
    results = []
    for i, start in enumerate(starts):
        sub = None
        if progress is not None:  # scale each sub-batch's chunk count to the whole batch
            sub = lambda d, t, i=i: progress(i * t + d, t * len(starts))  # noqa: E731
        gp = GradientPass(model, x[start:start + FORWARD_BATCH], layers)
        results.append(run(gp, sub))
        del gp
    first = results[0]
    return first[:-1] + (torch.cat([r[-1] for r in results], dim=0),)


def layer_gradient_stats(model: nn.Module, x: torch.Tensor, loss: str | Callable = "nll_pred",
                         stats: Sequence[str] = STATS, layers: Sequence[str] | None = None,
                         chunk_mib: float | None = None, progress: Callable[[int, int], None] | None = None,
                         compile: bool | str | None = None) -> LayerStats:
    """Per-sample statistics of ∇_{θ_l} ℓ_b for every parametrised layer l (Oberdiek et al. 2018).

    ``loss`` names a per-sample loss by its logit gradient (:data:`LOSSES`; default the
    pseudo-label NLL −log p_ŷ) or is a callable ``logits -> ∂ℓ/∂logits``. ``stats`` ⊆
    :data:`STATS`; ``layers`` restricts to some qualified names (see :func:`parametrised_layers`).
    Conv gradients are materialised in chunks of at most ``chunk_mib`` MiB (default
    ``settings().chunk_mib``); ``progress(done, total)`` is called after each chunk.
    ``compile``: ``"auto"`` (default, ``GRADVIZ_COMPILE``) uses the fused compiled reduction once
    it is built (in the background), ``"on"``/True builds it now, ``"off"``/False stays eager;
    where compiling is impossible the eager path is used (:mod:`gradviz.reductions`).
    Returns :class:`LayerStats` with values (B, L, S) float32, layers in forward order.
    """
    stats = _check_stats(stats)
    _Job(stats, chunk_mib, compile)  # validate before any forward
    names, numels, values = _over_sub_batches(
        model, x, layers, progress,
        lambda gp, prog: gp._reduce(loss, layers, _Job(stats, chunk_mib, compile), prog))
    return LayerStats(names, stats, values.float(), numels)


def head_gradient_stats(head: nn.Linear, logits: torch.Tensor, features: torch.Tensor,
                        loss: str | Callable = "nll_pred", stats: Sequence[str] = STATS) -> torch.Tensor:
    """Statistics of the classifier head's per-sample gradient in closed form, (B, S) float32.

    With g = ∂ℓ/∂z and h the head input, ∇[W | b] = g [hᵀ | 1] is rank one (METHODS.md §1):
    L1 = ‖g‖₁(‖h‖₁ + 1), L2 = ‖g‖(‖h‖² + 1)^½, max/min from the extremes of g and h, and the
    mean and std from Σg·(Σh + 1) — no backward pass, only the logits and features of a forward.
    """
    stats = _check_stats(stats)
    dloss = LOSSES.get(loss) if isinstance(loss, str) else loss
    if dloss is None:
        raise MethodError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
    with torch.no_grad():
        g = dloss(logits.detach())  # (B, C)
        h = features.detach().reshape(features.shape[0], -1).to(g.dtype)  # (B, D)
        bias = head.bias is not None
        kernel = fused_kernel(resolve_mode(None), g.dtype)
        parts = _rank_one_parts(g[:, None], h[:, None], bias, frozenset(PARTS), kernel)
        numel = head.weight.numel() + (head.bias.numel() if bias else 0)
        return _finish([parts], [numel], stats)[:, 0].float()


def layer_sq_l2_norms(model: nn.Module, x: torch.Tensor, loss: str | Callable = "confounding_sigmoid",
                      layers: Sequence[str] | None = None, chunk_mib: float | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      compile: bool | str | None = None) -> tuple[list[str], torch.Tensor]:
    """(layer names, ‖∇_{θ_l} ℓ_b‖² as (B, L) float32): the fast L2-only path (Lee & AlRegib 2020).

    Per conv layer the fastest of the compiled direct kernel (``compile``, as in
    :func:`layer_gradient_stats`), materialising ∇W_b (``bmm``/``conv``) and the Gram ("ghost")
    norm Σ_{pq}(UᵀU ⊙ ΔᵀΔ)_{pq} is used; Linear layers and 1×1-output convs use ‖δ‖²(‖a‖² + 1).
    """
    _Job(None, chunk_mib, compile)
    names, _, values = _over_sub_batches(
        model, x, layers, progress,
        lambda gp, prog: gp._reduce(loss, layers, _Job(None, chunk_mib, compile), prog))
    return names, values.float()
