"""One captured forward of a batch, its graph kept; per-sample gradient statistics for any loss.

:class:`GradientPass` runs the forward under the engine's capture (:mod:`.capture`), on the folded
twin of the network where there is one (:mod:`.folding`). Per loss, ONE ``torch.autograd.grad``
from the logits delivers every use's output gradient δ through a tensor hook, and the use's plan
(:mod:`.plans`) reduces it right there, while δ is hot in cache; δ is not kept, so memory stays
that of a plain forward+backward. The graph is kept, so one forward serves several losses (and
GAIA, ODIN: :meth:`GradientPass.output_grads`).

Every per-sample gradient is linear in the loss's logit gradient g_b, so the backward runs on
g_b / max|g_b| and the partial sums are scaled back in float64: gradients of ~1e-19 (noise on an
overconfident model) neither underflow nor lose their squares.

The model may be shared between threads: the capture is active only inside ``model.lock`` during
the forward; no ``.grad`` and no ``requires_grad`` change is left behind.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from gradviz.engine.capture import FOLD_KEEP_BYTES, Capturer, ParamRef, Use, param_table
from gradviz.engine.folding import fold_enabled, twin_of
from gradviz.engine.losses import loss_gradient
from gradviz.engine.plans import Job, Plan, Sink, fast_plans_enabled, make_plan
from gradviz.engine.reduce import STATS, LayerStats, Parts, check_stats, finish, merge, rescale
from gradviz.errors import GradvizError, MethodError

__all__ = ["GradientPass", "Group", "root_of"]

# model -> {(input shape, dtype, fold): indices of uses whose tensors break the layout convention}
_LAYOUT: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _eager(model: nn.Module) -> nn.Module:
    """``model`` itself, or the module a root-level ``torch.compile`` wrapped; refused if compiled inside
    (a compiled graph skips the capture's hooks: the norms came out 10–13 % low, silently)."""
    from gradviz.models.compiled import is_compiled

    if not is_compiled(model):
        return model
    inner = getattr(model, "_orig_mod", None)
    if isinstance(inner, nn.Module) and not is_compiled(inner):
        return inner
    raise GradvizError("the model runs parts of itself through torch.compile; per-sample gradients need the eager "
                       "module: wrap it in GradvizModel (which removes torch.compile) or use "
                       "gradviz.models.compiled.uncompiled(net)")


def root_of(model: nn.Module) -> nn.Module:
    """The wrapped network (names without the ``net.`` prefix) for a GradvizModel; the eager module
    for a ``torch.compile``'d one (see :func:`_eager`)."""
    model = _eager(model)
    net = getattr(model, "net", None)
    return net if isinstance(net, nn.Module) else model


@dataclass(eq=False)
class Group:
    """The parameters reported together as one "layer": a module's own parameters (or one parameter
    of the root). ``uses``: the indices of the uses that reach them, in forward order."""

    name: str
    refs: list[ParamRef]
    uses: list[int]

    @property
    def numel(self) -> int:
        return sum(r.param.numel() for r in self.refs)


class _HookSink:
    """Where the graph's tensor hooks deliver output gradients during one backward.

    Outside :meth:`collecting` (and for uses nobody asked for) a gradient is dropped at once.
    The sink holds no reference to the graph or the pass, so they form no reference cycle."""

    def __init__(self) -> None:
        self.pending: dict[int, list[Use]] | None = None
        self.each: Callable | None = None
        self.done: Callable[[list[Use]], None] | None = None
        self.results: dict[int, object] = {}

    def hook(self, index: int) -> Callable[[torch.Tensor], None]:
        def store(grad: torch.Tensor) -> None:  # returns None: the gradient flowing on is unchanged
            pending = self.pending
            if pending is not None and index in pending:
                for use in pending[index]:  # the output's own use, and a BatchNorm folded into it
                    if use.index not in self.results:
                        self.results[use.index] = self.each(use, grad.detach()) if self.each else grad.detach()
                if self.done is not None:
                    self.done(pending[index])
        return store

    @contextmanager
    def collecting(self, pending: dict[int, list[Use]], each: Callable | None,
                   done: Callable[[list[Use]], None] | None = None) -> Iterator[dict[int, object]]:
        self.pending, self.each, self.done, self.results = pending, each, done, {}
        try:
            yield self.results
        finally:
            self.pending, self.each, self.done = None, None, None


def _no_use(_use: Use) -> None:
    """The capturer's callback once the forward is over."""
    return None


class GradientPass:
    """A batch's captured forward with its graph kept; per-sample output gradients for any loss.

    ``logits`` (B, K), ``features`` (the head's input, (B, D)) and ``x_in`` (the input leaf) stay in
    the graph, so methods can run their own backward passes on it: :meth:`output_grads` for use
    outputs, :meth:`layer_stats` / :meth:`sq_l2_norms` for per-sample parameter-gradient statistics.
    ``groups`` lists every parameter group of the network in forward order (unused ones last).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, layers: Sequence[str] | None = None,
                 fold_bn: bool | None = None) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] == 0:
            raise GradvizError("expected a non-empty batch tensor (B, C, H, W)")
        model = _eager(model)
        if model.training:
            raise GradvizError("per-sample gradients need the model in eval() mode (BatchNorm and dropout mix or "
                               "perturb samples in train mode)")
        self.model = model
        root = root_of(model)
        if not any(True for _ in root.parameters()):
            raise GradvizError("the model has no parameters")
        runnable = root is model or callable(getattr(model, "normalize", None))
        fold = runnable and fast_plans_enabled() and fold_enabled(fold_bn)
        self.twin = twin_of(root) if fold else None
        param = next(root.parameters())
        self.x_in = x.detach().to(device=param.device, dtype=param.dtype).requires_grad_(True)
        self.batch = int(x.shape[0])
        self.refs = param_table(root, self.twin)
        self._sink = _HookSink()  # the graph's tensor hooks write here; it holds no reference back (no cycle)
        for clone_inputs in (False, True):
            self._forward(clone_inputs)
            # An input modified in place after its use (rare) would give wrong statistics: rerun keeping copies.
            if clone_inputs or all(t._version == v for u in self.uses for t, v in zip(u.batch, u.versions)):
                break
        self.groups = self._groups(root)
        self.chosen = self.resolve(layers)
        # (loss name, layers) -> (parts computed, groups, unscaled partial sums per group, scale): a loss asked
        # for again (another statistic, its L2 norms, the unit-scaled norms) reuses its one backward
        self._reduced: dict[tuple, tuple[frozenset, list[Group], list[Parts], torch.Tensor]] = {}
        # Losses whose backward also delivers ∂/∂x_in, for a later method that steps the input along the same
        # direction (PRO-MSP after grad_*): set before the losses run (``ModelOutputs.from_model``). The
        # backward then runs down to the input (one more input gradient of the stem) instead of stopping above.
        self.input_grad_losses: set[str] = set()
        self._input_grads: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ---- the forward

    def _forward(self, clone_inputs: bool) -> None:
        head = getattr(self.model, "head", None)
        self.features: torch.Tensor | None = None
        sink = self._sink
        capturer = None

        def on_use(use: Use) -> torch.Tensor | None:
            out = use.out
            if not isinstance(out, torch.Tensor):
                return None
            if head is not None and use.op == "linear" and any(r.module is head for r in use.refs):
                live = use.live
                self.features = live.flatten(1) if live.ndim > 2 else live
            small = out.numel() * out.element_size() <= FOLD_KEEP_BYTES
            # The first use's output hands a copy downstream (if small): an in-place op after it (a ReLU
            # after a folded BatchNorm) changes the copy, so this output stays as produced and the
            # backward can stop at it, skipping the stem's input gradient.
            own_copy = use.index == 0 and small and out.requires_grad and use.op in ("conv2d", "linear") and \
                not any(r.module is head for r in use.refs)
            fold = use.refs[0].fold if use.op == "conv2d" and use.refs else None
            if fold is not None and fold.z_safe and small and not own_copy:
                use.z = out.detach().clone()  # a later in-place op would change it (cheap: small)
            if out.requires_grad:
                out.register_hook(sink.hook(use.index))
            if fold is not None:  # the BatchNorm folded into this conv: its use shares the output
                bn_refs = [self.refs[id(p)] for p in fold.bn.parameters(recurse=False)]
                capturer.uses.append(Use(len(capturer.uses), "batch_norm", torch.batch_norm, (), {}, out,
                                         out._version, bn_refs, [], [], [], [], source=use.index, fold=fold))
            return out.clone() if own_copy else None

        capturer = Capturer(self.refs, self.batch, on_use, clone_inputs)
        try:
            self.logits = self._run(capturer, self.x_in)
        finally:
            # on_use holds this pass; what the capturer leaves in the graph must not hold it back, or every batch's
            # pass (its activations and graph) would wait for Python's cyclic collector instead of going at once
            capturer.on_use = _no_use
        self.uses: list[Use] = capturer.uses
        self._derived = capturer.derived  # keeps derived tensors (and their graph) alive with the pass

    def _run(self, capturer: Capturer, x: torch.Tensor) -> torch.Tensor:
        """The network's forward of ``x`` under ``capturer`` (on the folded twin where there is one)."""
        root, twin = root_of(self.model), self.twin
        with getattr(self.model, "lock", nullcontext()):
            with torch.enable_grad(), capturer:
                if twin is None:
                    return self.model(x)
                return twin.net(x if root is self.model else self.model.normalize(x))

    def layout_violations(self) -> set[int]:
        """Uses whose tensors do not hold whole samples along dimension 0, sample-major (the engine's
        layout convention), found once per model and input shape by a probe: a forward of two samples,
        the second all NaN. NaN reaches exactly what depends on that sample, so a row the convention
        gives to sample 0 that holds a NaN mixes the samples (interleaved or batch-first layouts
        elsewhere than dimension 0, or an op across the batch). A probe that cannot run (NaN breaks
        the model's control flow) or runs other ops checks nothing."""
        key = (tuple(self.x_in.shape[1:]), self.x_in.dtype, self.twin is not None)
        known = _LAYOUT.setdefault(self.model, {})
        if key in known:
            return known[key]
        bad: set[int] = set()

        def check(use: Use) -> None:
            for t in (*use.batch, use.out):
                if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                    continue
                if t.dim() == 0 or t.shape[0] % 2 or torch.isnan(t[: t.shape[0] // 2]).any():
                    bad.add(use.index)

        x = torch.cat([self.x_in[:1].detach(), torch.full_like(self.x_in[:1], float("nan"))]).requires_grad_(True)
        probe = Capturer(self.refs, 2, lambda use: check(use), clone_inputs=False)
        try:
            self._run(probe, x)
        except Exception:  # NaN broke the model's own logic: nothing can be said
            bad = set()
        if len(probe.uses) != sum(1 for u in self.uses if u.source is None):
            bad = set()
        else:  # the probe has no folded BatchNorm uses: map its indices onto this pass's
            real = [u.index for u in self.uses if u.source is None]
            bad = {real[i] for i in bad}
        known[key] = bad
        return bad

    def _groups(self, root: nn.Module) -> dict[str, Group]:
        """Every parameter group, in the order the forward first reached it; unreached groups last."""
        groups: dict[str, Group] = {}
        by_group: dict[str, list[ParamRef]] = {}
        for ref in {id(r.param): r for r in self.refs.values()}.values():
            by_group.setdefault(ref.group, []).append(ref)
        for use in self.uses:
            for ref in use.params:
                group = groups.get(ref.group)
                if group is None:
                    group = groups[ref.group] = Group(ref.group, by_group[ref.group], [])
                if use.index not in group.uses:
                    group.uses.append(use.index)
            if use.params:
                use.group = use.params[0].group
        for name, refs in by_group.items():
            if name not in groups:
                groups[name] = Group(name, refs, [])
        return groups

    def resolve(self, layers: Sequence[str] | str | None) -> list[Group]:
        """The groups named by ``layers`` (all by default), in forward order."""
        if layers is None:
            return list(self.groups.values())
        if isinstance(layers, str):
            layers = [layers]
        unknown = [n for n in layers if n not in self.groups]
        if unknown:
            raise MethodError(f"unknown layer(s) {unknown}; parameter groups: {', '.join(self.groups)}")
        wanted = set(layers)
        return [g for g in self.groups.values() if g.name in wanted]

    def uses_per_param(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for use in self.uses:
            if use.source is None:
                for ref in use.params:
                    counts[id(ref.param)] = counts.get(id(ref.param), 0) + 1
        return counts

    def uncovered(self, groups: Sequence[Group] | None = None) -> list[str]:
        """Parameters of ``groups`` that no captured use reaches although the logits depend on them
        (used through something the capture cannot see): their statistics would be wrong."""
        covered = {id(r.param) for u in self.uses for r in u.params}
        missing = [r for g in (groups or self.groups.values()) for r in g.refs if id(r.param) not in covered]
        if not missing:
            return []
        got = torch.autograd.grad(self.logits.sum(), [r.param for r in missing], retain_graph=True, allow_unused=True)
        return [r.name for r, g in zip(missing, got) if g is not None]

    def norm_uses(self) -> list[Use]:
        """Uses of normalisation layers (BatchNorm, folded or not, LayerNorm, GroupNorm), forward order."""
        return [u for u in self.uses if u.op in ("batch_norm", "layer_norm", "group_norm")]

    # ---- backward passes

    def output_grads(self, root: torch.Tensor, grad: torch.Tensor | None, uses: Sequence[Use],
                     input_grad: bool = False, each: Callable[[Use, torch.Tensor], object] | None = None,
                     done: Callable[[list[Use]], None] | None = None) -> tuple[list, torch.Tensor | None]:
        """One backward of ``root`` weighted by ``grad`` on the kept graph.

        Returns ([``each(u, δ_u)`` — or δ_u itself — for each use], ∂/∂x_in if ``input_grad``).
        Every δ_u arrives through the tensor hook registered on the output during the forward (the
        value produced, even if an op changed it in place later), and ``each`` runs right there, while
        δ_u is hot in cache; δ_u is not kept. The backward is driven to the first use's output if no op
        changed it in place (else to the input), so it runs through every use once; where only later
        uses are asked for, it stops at the earliest of them. ``done(uses)`` runs after ``each`` has served all
        the uses of one tensor hook."""
        if grad is not None:
            grad = grad.to(root.dtype)
        results: dict[int, object] = {}
        pending: dict[int, list[Use]] = {}  # hook index -> uses served by it, forward order
        for u in sorted(uses, key=lambda u: u.index):
            if u.out is root:  # e.g. the head's output when root is the logits: δ is ``grad`` itself
                results[u.index] = each(u, grad) if each else grad
            else:
                pending.setdefault(u.index if u.source is None else u.source, []).append(u)
        x_grad = None
        first = self.uses[0] if self.uses else None
        anchor = first.out if first is not None and isinstance(first.out, torch.Tensor) and not first.modified \
            and first.out.requires_grad and first.out is not root else None
        use_input = input_grad or anchor is None
        if not input_grad and pending and first is not None and first.index not in pending:
            # Only later uses asked for (e.g. GAIA-A's last two stages): differentiate w.r.t. their own
            # outputs, so the backward stops at the earliest of them instead of running down to the stem.
            stops = [_stop_of(u, root) for u in (self.uses[i] for i in pending)]
            if all(t is not None for t in stops):
                with self._sink.collecting(pending, each, done) as got:
                    torch.autograd.grad(root, stops, grad_outputs=grad, retain_graph=True, allow_unused=True)
                results.update(got)
                # whatever is left does not influence ``root`` (no gradient reached it): zero, no 2nd backward
                for us in pending.values():
                    for u in us:
                        if u.index not in results:
                            zero = torch.zeros_like(u.out)
                            results[u.index] = each(u, zero) if each else zero
                pending = {}
        while pending or input_grad:
            # Uses that read no batch tensor with a gradient (a parameter expanded to the batch, an embedding
            # looked up by the batch's indices) start branches of their own, upstream of neither the input
            # nor the anchor: their outputs are targets too.
            side = [self.uses[i].out for i in pending if not self.uses[i].from_input
                    and self.uses[i].out.requires_grad and self.uses[i].out is not root]
            targets = ([self.x_in] if use_input else [anchor]) + side
            with self._sink.collecting(pending, each, done) as got:
                out = torch.autograd.grad(root, targets, grad_outputs=grad, retain_graph=True, allow_unused=True)
            results.update(got)
            x_grad = out[0] if use_input and input_grad else x_grad
            pending = {i: left for i, us in pending.items() if (left := [u for u in us if u.index not in results])}
            if use_input or not pending:
                break
            use_input = True  # a use is not downstream of the anchor: drive the backward to the input
        for us in pending.values():  # outputs that do not influence ``root``: zero gradient
            for u in us:
                zero = torch.zeros_like(u.out)
                results[u.index] = each(u, zero) if each else zero
        return [results[u.index] for u in uses], (None if x_grad is None else x_grad.detach())

    def reduce(self, loss, layers: Sequence[str] | None, job: Job,
               progress: Callable[[int, int], None] | None, unit: bool = False
               ) -> tuple[list[str], list[int], torch.Tensor]:
        """(group names, numels, (B, L[, S]) float64): per-group statistics of one loss, one backward.

        A loss named in :data:`~gradviz.engine.losses.LOSSES` is reduced once per pass and layer selection:
        a later call for the same loss and layers whose parts were all computed (the six statistics hold
        ‖∇‖²) reads them without a backward. ``unit=True``: statistics of the gradient of ℓ / max_c |∂ℓ/∂z_c|
        (the scale the engine backpropagates at), not scaled back."""
        key = (loss, None if layers is None else tuple(layers)) if isinstance(loss, str) else None
        hit = self._reduced.get(key) if key is not None else None
        if hit is not None and job.need <= hit[0]:
            _, groups, parts, scale = hit
        else:
            groups, parts, scale = self._reduce_parts(loss, layers, job, progress)
            if key is not None:
                self._reduced[key] = (job.need, groups, parts, scale)
        out = parts if unit else [rescale(p, scale) for p in parts]
        with torch.no_grad():
            values = finish(out, [g.numel for g in groups], job.stats)
        return [g.name for g in groups], [g.numel for g in groups], values

    def _reduce_parts(self, loss, layers: Sequence[str] | None, job: Job,
                      progress: Callable[[int, int], None] | None
                      ) -> tuple[list[Group], list[Parts], torch.Tensor]:
        """(groups, partial sums of each group's gradient of ℓ / scale, scale (B,)): one backward."""
        dloss = loss_gradient(loss)
        groups = self.chosen if layers is None else self.resolve(layers)
        missing = self.uncovered(groups)
        if missing:
            raise GradvizError(f"parameter(s) {', '.join(missing[:6])} reach the output through an operation the "
                               f"per-sample gradient engine cannot see; their statistics cannot be computed")
        mixed = self.layout_violations()
        wanted = {g.name for g in groups}
        needed = [u for u in self.uses if any(r.group in wanted for r in u.params)]
        needed += [self.uses[u.source] for u in needed if u.source is not None and self.uses[u.source] not in needed]
        needed.sort(key=lambda u: u.index)
        broken = [r.name for u in needed if u.index in mixed for r in u.params]
        if broken:
            raise GradvizError(f"parameter(s) {', '.join(dict.fromkeys(broken[:6]))} are used on tensors whose first "
                               f"dimension does not hold whole samples (sample-major), or that mix samples; "
                               f"per-sample gradients need the batch along dimension 0")
        counts = self.uses_per_param()
        sink = Sink(self.batch, job, counts)
        plans: dict[int, Plan] = {u.index: make_plan(u, job, sink, self.batch, counts) for u in needed}
        for u in needed:
            if u.source is not None:
                plans[u.index].source = plans[u.source]
        total = sum(p.chunk_count for p in plans.values())
        done = [0]

        def tick() -> None:  # the chunk count is known exactly only after calibration: end on total
            done[0] += 1
            if progress is not None and done[0] < total:
                progress(done[0], total)

        def each(use: Use, grad: torch.Tensor) -> dict[str, Parts]:
            plan = plans[use.index]
            plan.grad = grad
            grad_mode = torch.enable_grad() if plan.kind in ("broadcast", "generic") else torch.no_grad()
            with grad_mode:
                return plan.run(tick)

        g = dloss(self.logits.detach())
        scale = g.abs().amax(-1)
        scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
        take_x = isinstance(loss, str) and loss in self.input_grad_losses and loss not in self._input_grads
        results, x_grad = self.output_grads(self.logits, g / scale[:, None], needed, input_grad=take_x, each=each,
                                            done=lambda served: [plans[u.index].release() for u in served])
        if take_x and x_grad is not None:
            self._input_grads[loss] = (x_grad, scale)
        by_group: dict[str, Parts | None] = {}
        covered: set[int] = set()
        for use, res in zip(needed, results):
            for name, parts in res.items():
                by_group[name] = merge(by_group.get(name), parts)
                covered.update(id(r.param) for r in use.refs if r.group == name)
        per_param = sink.parts()
        out = []
        for group in groups:
            parts = by_group.get(group.name)
            for ref in group.refs:
                if id(ref.param) in per_param:
                    parts = merge(parts, per_param[id(ref.param)])
                elif id(ref.param) not in covered:  # never reached by the forward: its gradient is 0
                    parts = merge(parts, _zeros(self.batch, job))
            out.append(parts)
        if progress is not None:
            progress(total, total)
        return groups, out, scale

    def input_grad(self, loss: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(∂(ℓ / s)/∂x_in (B, ...), s (B,)) from the backward that reduced the named ``loss`` on this pass, if one ran
        with ``loss`` in :attr:`input_grad_losses`; else None. s = max_c |∂ℓ/∂z_c| is the scale the engine
        backpropagates at (no float32 underflow where the softmax saturates): the gradient is s times the first."""
        return self._input_grads.get(loss)

    def layer_stats(self, loss: str | Callable = "nll_pred", stats: Sequence[str] = STATS,
                    layers: Sequence[str] | None = None, chunk_mib: float | None = None,
                    progress: Callable[[int, int], None] | None = None, c_kernel: bool | str | None = None
                    ) -> LayerStats:
        """:func:`~gradviz.engine.layer_gradient_stats` of this pass's batch (one backward on the kept graph)."""
        stats = check_stats(stats)
        names, numels, values = self.reduce(loss, layers, Job(stats, chunk_mib, c_kernel), progress)
        return LayerStats(names, stats, values.float(), numels)

    def sq_l2_norms(self, loss: str | Callable = "confounding_sigmoid", layers: Sequence[str] | None = None,
                    chunk_mib: float | None = None, progress: Callable[[int, int], None] | None = None,
                    c_kernel: bool | str | None = None) -> tuple[list[str], torch.Tensor]:
        """:func:`~gradviz.engine.layer_sq_l2_norms` of this pass's batch (one backward on the kept graph)."""
        names, _, values = self.reduce(loss, layers, Job(None, chunk_mib, c_kernel), progress)
        return names, values.float()

    def unit_sq_l2_norms(self, loss: str = "nll_pred", layers: Sequence[str] | None = None,
                         chunk_mib: float | None = None, c_kernel: bool | str | None = None
                         ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """(layer names, ‖∇θ_l (ℓ / s)‖² as (B, L) float64, s = max_c |∂ℓ/∂z_c| as (B,)): the squared norms of the
        gradient at the scale the engine backpropagates at (no float32 underflow where the softmax saturates);
        shares the backward of :meth:`layer_stats` / :meth:`sq_l2_norms` of the same loss."""
        names, _, values = self.reduce(loss, layers, Job(None, chunk_mib, c_kernel), None, unit=True)
        return names, values, self._reduced[(loss, None if layers is None else tuple(layers))][3]

    def plans(self, job: Job) -> dict[int, Plan]:
        """The plan of every use (for the coverage report; nothing is computed)."""
        counts = self.uses_per_param()
        sink = Sink(self.batch, job, counts)
        return {u.index: make_plan(u, job, sink, self.batch, counts) for u in self.uses}


def _stop_of(use: Use, root: torch.Tensor) -> torch.Tensor | None:
    """Where a backward serving ``use`` may stop: its output, or — if an op changed the output in place later (a
    ReLU or a residual ``+=`` after a BatchNorm) — its input as the use read it (the backward then runs through
    the use, whose tensor hook delivers δ); None if neither is a tensor of the graph at the version used."""
    if use.out is root:
        return None
    if not use.modified and use.out.requires_grad:
        return use.out
    live = use.live
    if live is not None and live.requires_grad and use.live_version is not None and live._version == use.live_version:
        return live
    return None


def _zeros(batch: int, job: Job) -> Parts:
    zero = torch.zeros(batch, dtype=torch.float64)
    return {k: zero for k in job.need}
