"""The one list of uncertainty methods. Pages, CLI and tests read it; nothing hard-codes names.

A method is a function ``fn(batch: ModelOutputs, **params) -> Tensor (B,)`` returning an
*uncertainty* (higher = more uncertain / more likely OOD), or, when it must be fitted, a
class with ``fit(model, images, labels)`` and ``score(batch) -> Tensor (B,)``.

Everything a person needs to read a score lives in its registration (:func:`register`): the
family it belongs to (output / feature / gradient), paper, year, link, formula, intuition, how
to read its plots, and what it is expected to do on the bundled model (``expected``; the
contract tests assert it, docs/RESULTS.md measures it). The Learn page, the pickers, the CLI
and the report read these fields; there is no second list. Adding a method = one module in
``gradviz/methods/`` (found by :mod:`gradviz.methods`) + one test.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from gradviz import engine as _engine
from gradviz.errors import GradvizError, MethodError
from gradviz.engine import GradientPass
from gradviz.models import GradvizModel

__all__ = ["ModelOutputs", "MethodInfo", "register", "get_method", "list_methods", "resolve_methods", "run_method",
           "needs_graph", "shared_input_grads", "scoring_order", "check_param", "adaptation_notes",
           "TEMPERATURE_BOUNDS", "FAMILIES", "DIRECTIONS", "methods_by_family",
           "meets_expectation", "differentiable", "not_differentiable", "INPUT_ROUTES"]

# The three families, in display order, with what a method of each reads.
FAMILIES: dict[str, str] = {
    "output": "reads the network's outputs (logits, softmax)",
    "feature": "reads the penultimate features",
    "gradient": "reads gradients (parameter or feature-map gradients)",
}
# What a score does on an OOD set of the bundled model, compared with held-out digits (AUROC with
# OOD as the positive class): "higher" = OOD scores above digits, "lower" = reversed, "chance" = no
# clear separation. The contract tests and docs/RESULTS.md check declarations with these bounds.
DIRECTIONS = ("higher", "lower", "chance")
_BOUNDS = {"higher": (0.55, 1.0), "lower": (0.0, 0.45), "chance": (0.4, 0.6)}


def meets_expectation(direction: str, auroc: float) -> bool:
    """Whether an AUROC (digits negative, the OOD set positive) matches a declared direction."""
    lo, hi = _BOUNDS[direction]
    return lo <= auroc <= hi if direction != "chance" else lo < auroc < hi


@dataclass
class ModelOutputs:
    """One batch seen by a model: inputs, logits, penultimate features, and a memo cache.

    Gradient methods share ONE hooked forward of the batch (:meth:`gradient_pass`) and run
    their backward passes on its graph; expensive shared results (e.g. the layerwise gradient
    table used by all ``grad_*`` scores) are memoised in ``cache`` so they are computed once
    per batch.
    """

    model: GradvizModel
    x: torch.Tensor  # (B, C, H, W) in [0, 1]
    logits: torch.Tensor  # (B, K)
    features: torch.Tensor  # (B, D) penultimate (input of the head)
    cache: dict = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: GradvizModel, x: torch.Tensor, keep_graph: bool = False,
                   input_grads: set[str] | frozenset[str] = frozenset()) -> "ModelOutputs":
        """The batch's logits and features; ``keep_graph=True`` takes them from the shared hooked
        forward that gradient methods will reuse (one forward instead of two). ``input_grads``: losses whose
        backward on that pass also keeps the input gradient (:func:`shared_input_grads`)."""
        x = x.to(model.device)
        if keep_graph and x.shape[0] <= _engine.FORWARD_BATCH:
            try:
                gp = GradientPass(model, x)
            except GradvizError:  # e.g. no supported layer: methods report their own errors later
                gp = None
            if gp is not None and gp.features is not None:
                gp.input_grad_losses = set(input_grads)
                batch = cls(model, x, gp.logits.detach(), gp.features.detach())
                batch.cache["gradient_pass"] = gp
                return batch
        logits, features = model.logits_and_features(x)
        batch = cls(model, x, logits, features)
        batch.cache["input_grads"] = set(input_grads)
        return batch

    def gradient_pass(self) -> "GradientPass | None":
        """The batch's hooked forward with its graph kept (memoised), or None for batches larger
        than one engine sub-batch (methods then run the sub-batched public functions)."""
        if self.x.shape[0] > _engine.FORWARD_BATCH:
            return None
        return self.memo("gradient_pass", self._new_pass)

    def _new_pass(self) -> "GradientPass":
        gp = GradientPass(self.model, self.x)
        gp.input_grad_losses = set(self.cache.get("input_grads", ()))
        return gp

    @property
    def probs(self) -> torch.Tensor:
        if "probs" not in self.cache:
            self.cache["probs"] = self.logits.softmax(-1)
        return self.cache["probs"]

    @property
    def prediction(self) -> torch.Tensor:
        return self.logits.argmax(-1)

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per batch and key."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]


@dataclass
class MethodInfo:
    """A registry row: the callable plus what a person needs to read its score."""

    name: str
    impl: Callable | type
    title: str
    paper: str
    year: int
    formula: str  # LaTeX
    family: str  # one of FAMILIES
    needs_fit: bool = False
    defaults: dict = field(default_factory=dict)
    summary: str = ""
    backprop: bool = False  # runs a backward pass (closed-form gradient methods do not)
    bounds: dict = field(default_factory=dict)  # {parameter: (low, high)} inclusive; None = open end
    choices: dict = field(default_factory=dict)  # {parameter: (allowed values, ...)}; the default is one of them
    paper_settings: dict = field(default_factory=dict)  # {parameter: the paper's setting} where gradviz adapts it
    link: str = ""  # the paper (arXiv or proceedings)
    intuition: str = ""  # why the score should separate ID from OOD, in plain words
    reading: str = ""  # how to read its histograms and ROC
    expected: dict[str, str] = field(default_factory=dict)  # bundled model: OOD set -> one of DIRECTIONS
    # the score as a differentiable function of the input (gradviz.explain.scores): None = not differentiable,
    # "direct" = the method itself, given a batch whose logits/features carry the graph, or a form
    # ``form(batch, **params) -> (B,)`` written with autograd; ``input_route`` names which (INPUT_ROUTES)
    input_form: Callable | str | None = None
    input_route: str = ""
    not_differentiable: str = ""  # why the score is not a differentiable function of the input
    # How charts show the score when the raw value reads oddly (MSP's −max p as 1 − max p): the name shown
    # and the constant added for display only; ranks, thresholds and AUROCs use the raw score.
    shown_as: str = ""
    shown_offset: float = 0.0
    # (params, number of classes) -> the engine loss (gradviz.engine.losses) whose input gradient gives the sign
    # of the method's input step, so that another method's backward of it serves (PRO-MSP: −log p_ŷ); or None
    input_grad_of: Callable[[dict, int], str | None] | None = None

    def shown(self, values):
        """``values`` as charts show them (raw + ``shown_offset``)."""
        return values + self.shown_offset if self.shown_offset else values

    @property
    def shown_name(self) -> str:
        return self.shown_as or self.name

    def create(self, **params) -> "MethodRunner":
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise MethodError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(self.defaults)}")
        params = {key: check_param(self, key, value) for key, value in params.items()}
        return MethodRunner(self, {**self.defaults, **params})


def check_param(info: MethodInfo, key: str, value: Any) -> Any:
    """``value`` if it has the type of the parameter's default (12.0 -> 12 for whole numbers) and lies
    within its declared bounds; else :class:`MethodError` naming the method, parameter and range."""
    default = info.defaults[key]
    where = f"{info.name}: parameter {key!r}"
    if key in info.choices:
        allowed = ", ".join(map(str, info.choices[key]))
        if type(value) is not type(default):
            raise MethodError(f"{where} must be {type(default).__name__} (one of {allowed}), got {value!r:.60}")
        if value not in info.choices[key]:
            raise MethodError(f"{where} must be one of {allowed}, got {value!r:.60}")
        return value
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        if type(value) is not type(default) and default is not None:
            raise MethodError(f"{where} must be {type(default).__name__}, got {value!r:.60}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MethodError(f"{where} must be a finite number, got {value!r:.60}")
    if isinstance(default, int) and not float(value).is_integer():
        raise MethodError(f"{where} must be a whole number, got {value!r}")
    low, high = info.bounds.get(key, (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"from {low:g} to {high:g}" if low is not None and high is not None else (
            f"at least {low:g}" if low is not None else f"at most {high:g}")
        raise MethodError(f"{where} must be {span}, got {value!r}")
    return int(value) if isinstance(default, int) else value


@dataclass
class MethodRunner:
    """A method with its parameters fixed; fitted methods hold their fitted state here."""

    info: MethodInfo
    params: dict
    state: Any = None

    def fit(self, model: GradvizModel, images: torch.Tensor, labels: Any) -> "MethodRunner":
        if self.info.needs_fit:
            self.state = self.info.impl(**self.params).fit(model, images, labels)
        return self

    def score(self, batch: ModelOutputs) -> torch.Tensor:
        if self.info.needs_fit:
            if self.state is None:
                raise MethodError(f"{self.info.name} must be fitted on ID training data first")
            out = self.state.score(batch)
        else:
            out = self.info.impl(batch, **self.params)
        return out.detach().float().reshape(-1).cpu()


REGISTRY: dict[str, MethodInfo] = {}
TEMPERATURE_BOUNDS = (1e-3, 1e5)  # softmax/energy temperatures: z/T stays finite in float32 for any real logits


def needs_graph(runners: list["MethodRunner"]) -> bool:
    """True if any runner backpropagates (then the batch keeps one shared hooked forward).

    Closed forms (``gradnorm``, ``grad_* layer="last"``) only read logits and features."""
    return any(r.info.backprop and r.params.get("layer") != "last" for r in runners)


def shared_input_grads(runners: list["MethodRunner"], classes: int) -> set[str]:
    """The engine losses whose backward should also deliver the input gradient on a batch's shared pass, because
    a runner steps the input along that loss's direction (:attr:`MethodInfo.input_grad_of`) on a model with
    ``classes`` outputs. Such runners score after the others (:func:`scoring_order`)."""
    return {loss for r in runners if r.info.input_grad_of is not None
            and (loss := r.info.input_grad_of(r.params, classes)) is not None}


def scoring_order(runners: list["MethodRunner"]) -> list["MethodRunner"]:
    """``runners`` in the order they score a batch: the registry's (a loss's full statistics, grad_*, before its
    norms alone, gradient_density, which read them from the same backward), except that methods which may step
    along another's input gradient (:attr:`MethodInfo.input_grad_of`) come last, after the backward serving them."""
    rank = {info.name: i for i, info in enumerate(list_methods())}
    return sorted(runners, key=lambda r: (r.info.input_grad_of is not None, rank.get(r.info.name, len(rank))))


def register(name: str, *, title: str, paper: str, year: int, formula: str, family: str, link: str,
             intuition: str, reading: str = "", expected: dict[str, str] | None = None, summary: str = "",
             backprop: bool | None = None, bounds: dict[str, tuple[float | None, float | None]] | None = None,
             choices: dict[str, tuple] | None = None, paper_settings: dict[str, Any] | None = None,
             shown_as: str = "", shown_offset: float = 0.0,
             input_grad_of: Callable[[dict, int], str | None] | None = None):
    """Decorator adding a method function or fitted class to the registry under ``name``.

    ``family``: "output", "feature" or "gradient" (:data:`FAMILIES`). ``link``: the paper's URL.
    ``intuition`` / ``reading``: why the score works and how to read its plots (the Learn page and
    the method pickers show them). ``expected``: what the score does on the bundled model's OOD sets
    ({"noise-uniform": "higher", "letters": "lower"}, values from :data:`DIRECTIONS`), asserted by
    the contract tests and measured in docs/RESULTS.md. ``backprop``: whether the method runs a
    backward pass (default: its family is "gradient"); closed forms pass False, ODIN True.
    ``bounds``: {parameter: (low, high)} inclusive ranges of numeric parameters (None = open end);
    every value given to :meth:`MethodInfo.create` is checked against its type and range.
    ``choices``: {parameter: (allowed values, ...)} for a parameter that picks one of a few settings (the
    sidebar shows a select box; any other value is refused with the list). ``paper_settings``: {parameter:
    the paper's (or its authors' code's) setting} for parameters whose default is an adaptation; the metrics
    table's footnote (:func:`adaptation_notes`) says which setting produced a score.
    ``shown_as`` / ``shown_offset``: how charts name and shift a score that reads oddly raw (display only).
    ``input_grad_of``: (params, number of classes) -> the engine loss whose input gradient has the sign of the
    method's input step, so that another method's backward of that loss can deliver it (:func:`shared_input_grads`),
    else None.
    """
    if family not in FAMILIES:
        raise MethodError(f"{name}: family must be one of {list(FAMILIES)}, got {family!r}")
    bad = {k: v for k, v in (expected or {}).items() if v not in DIRECTIONS}
    if bad:
        raise MethodError(f"{name}: expected directions must be one of {DIRECTIONS}, got {bad}")

    def deco(impl):
        target = impl.__init__ if inspect.isclass(impl) else impl
        sig = inspect.signature(target)
        defaults = {
            k: p.default for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty and k not in ("self",)
        }
        REGISTRY[name] = MethodInfo(
            name, impl, title, paper, year, formula, family, needs_fit=inspect.isclass(impl),
            defaults=defaults, summary=summary or (inspect.getdoc(impl) or "").split("\n")[0],
            backprop=family == "gradient" if backprop is None else backprop,
            link=link, intuition=intuition, reading=reading, expected=dict(expected or {}),
            shown_as=shown_as, shown_offset=float(shown_offset), input_grad_of=input_grad_of,
            bounds=_checked_bounds(name, bounds or {}, defaults),
            choices=_checked_choices(name, choices or {}, defaults),
            paper_settings=_checked_paper_settings(name, paper_settings or {}, defaults),
        )
        return impl

    return deco


def _info_of(impl) -> MethodInfo:
    for info in REGISTRY.values():
        if info.impl is impl:
            return info
    raise ValueError(f"{impl!r} is not a registered method: put @differentiable above @register")


INPUT_ROUTES = {  # how a score becomes a differentiable function of the input: route -> what that means
    "direct": "directly: the registered score itself, on logits and features that keep their graph to the input",
    "double backprop": "by double backprop: each sample's parameter gradient is taken with its graph kept, and "
                       "its statistic is differentiated with respect to the input (a second backward)",
    "input step": "through its input step: the sign of the input gradient is piecewise constant, so the step "
                  "x̃ = x − ε·sign(∇ₓ) is differentiated with that sign held fixed",
}


def differentiable(form: Callable | None = None, route: str = "direct"):
    """Decorator (above :func:`register`) declaring the method's score a differentiable function of the input.

    Without ``form`` the method itself is differentiable once its batch's logits and features carry the
    graph (output and closed-form scores, fitted feature scores); with ``form(batch, **params)`` that
    function computes the same score with autograd from ``batch.model`` and ``batch.x``, by ``route``
    ("double backprop" or "input step", see :data:`INPUT_ROUTES`). :func:`gradviz.explain.scores.score_fn`
    reads it."""
    if route not in INPUT_ROUTES or (form is None) != (route == "direct"):
        raise ValueError(f"differentiable: route {route!r} with form {form!r}; a form needs one of "
                         f"{[r for r in INPUT_ROUTES if r != 'direct']}, no form means 'direct'")

    def deco(impl):
        info = _info_of(impl)
        info.input_form, info.input_route = (form if form is not None else "direct"), route
        return impl
    return deco


def not_differentiable(reason: str):
    """Decorator (above :func:`register`) saying why the method's score is not a differentiable function of the
    input."""
    def deco(impl):
        _info_of(impl).not_differentiable = reason
        return impl
    return deco


def _checked_bounds(name: str, bounds: dict, defaults: dict) -> dict:
    """``bounds`` of parameters the method has, each holding its default (a registration bug otherwise)."""
    for key, (low, high) in bounds.items():
        value = defaults.get(key)
        if key not in defaults or (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"{name}: bounds {key}={low, high} do not fit its parameters/defaults {defaults}")
    return dict(bounds)


def _checked_choices(name: str, choices: dict, defaults: dict) -> dict:
    """``choices`` of parameters the method has, each listing its default (a registration bug otherwise)."""
    for key, allowed in choices.items():
        if key not in defaults or defaults[key] not in allowed:
            raise ValueError(f"{name}: choices {key}={allowed} do not fit its parameters/defaults {defaults}")
    return {key: tuple(allowed) for key, allowed in choices.items()}


def _checked_paper_settings(name: str, settings: dict, defaults: dict) -> dict:
    unknown = set(settings) - set(defaults)
    if unknown:
        raise ValueError(f"{name}: paper settings for unknown parameters {sorted(unknown)}")
    return dict(settings)


def adaptation_notes(names: list[str], params: dict[str, dict] | None = None) -> list[str]:
    """One line per (method, parameter) whose paper setting is registered: the setting used (``params`` over the
    defaults) and whether it is the paper's — the footnote of a metrics table, so a score is read with its choice."""
    notes = []
    for name in names:
        info = REGISTRY.get(name)
        if info is None:
            continue
        for key, paper in info.paper_settings.items():
            used = (params or {}).get(name, {}).get(key, info.defaults[key])
            notes.append(f"`{name}` {key} = {used} ({'as the paper' if used == paper else f'paper: {paper}'})")
    return notes


def _ensure_registered() -> None:
    import gradviz.methods  # noqa: F401  (imports every method module)


def list_methods() -> list[MethodInfo]:
    """Every registered method: by family (output, feature, gradient), then by year, then registration order."""
    _ensure_registered()
    rank = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(REGISTRY.values(), key=lambda m: (rank.get(m.family, len(rank)), m.year))


def methods_by_family(names: list[str] | None = None) -> dict[str, list[MethodInfo]]:
    """{family: its methods} in display order (only ``names`` when given; families without one left out)."""
    chosen = list_methods() if names is None else resolve_methods(names)
    groups: dict[str, list[MethodInfo]] = {}
    for info in sorted(chosen, key=lambda m: list(FAMILIES).index(m.family)):
        groups.setdefault(info.family, []).append(info)
    return groups


def get_method(name: str) -> MethodInfo:
    _ensure_registered()
    if name not in REGISTRY:
        raise MethodError(f"unknown method {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def resolve_methods(names: str | list[str] | None) -> list[MethodInfo]:
    """``"all"``/None -> every method; otherwise a comma string or list of names (validated; a name given twice
    counts once, in its first place)."""
    _ensure_registered()
    if names is None or names == "all" or names == ["all"]:
        return list_methods()
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise MethodError("no method chosen")
    return [get_method(n) for n in dict.fromkeys(names)]


def run_method(name: str, batch: ModelOutputs, **params) -> torch.Tensor:
    """Score one batch with an unfitted method (convenience for notebooks and tests)."""
    return get_method(name).create(**params).score(batch)
