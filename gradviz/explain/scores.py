"""Explain the uncertainty: an uncertainty score as a differentiable function of the input, so that
Saliency, Integrated Gradients, SmoothGrad and Grad-CAM attribute *the score* instead of a class.

    f = score_fn(model, "energy")             # x (B, C, H, W) -> u(x) (B,), with its graph
    att = explain_score(model, x, "saliency", "energy")   # a gradviz.explain.attributions.Attribution

How a method's score becomes a function of x is declared beside the method (its registration's
``input_form`` and ``input_route``, see :func:`gradviz.methods.registry.differentiable`; :func:`explainability`
lists them for the Learn page):

- output scores (MSP, max logit, energy, entropy) and closed-form gradient scores (GradNorm,
  ExGrad) are the registered function itself, run on logits and features that keep the graph;
- fitted feature scores (Mahalanobis, relative Mahalanobis, ViM, ReAct) likewise, from the fitted
  state (class means, precision, subspace, threshold held fixed);
- parameter-gradient scores (grad_l1 … grad_std, confounding) by double backprop: each sample's
  parameter gradient is taken with ``torch.func`` (graph kept) and its norm differentiated w.r.t. x;
- ODIN through its input step: the sign of ∇_x CE is piecewise constant, so x̃ = x − ε·s with s fixed.

The value of ``score_fn(...)(x)`` is the method's registered score on the same inputs (the tests
check it), so the map explains the number shown beside it. A method without such a form raises
:class:`GradvizError` "X's score is not a differentiable function of the input: …".
"""

from __future__ import annotations

from typing import Callable

import torch

from gradviz.errors import GradvizError, MethodError
from gradviz.methods.registry import INPUT_ROUTES, MethodInfo, MethodRunner, ModelOutputs, get_method, list_methods
from gradviz.models import GradvizModel

__all__ = ["EXPLAIN_TARGETS", "score_fn", "differentiable_methods", "graph_outputs", "explain_score",
           "check_differentiable", "explainability"]

# what an attribution explains: the predicted class's logit, or an uncertainty score
EXPLAIN_TARGETS = ("the class", "this score")


def differentiable_methods() -> list[str]:
    """Names of the registered methods whose score can be attributed to the input."""
    return [m.name for m in list_methods() if m.input_form is not None]


def check_differentiable(info: MethodInfo) -> None:
    """Raise the clear :class:`GradvizError` if ``info``'s score is not a differentiable function of the input."""
    if info.input_form is not None:
        return
    reason = info.not_differentiable or (
        f"gradviz has no differentiable form of this {info.family} score (its value is read from hooks or "
        "from a fitted non-smooth model)")
    raise GradvizError(f"{info.name}'s score is not a differentiable function of the input: {reason}. "
                       f"Explain the class instead, or one of: {', '.join(differentiable_methods())}.")


def graph_outputs(model: GradvizModel, x: torch.Tensor) -> ModelOutputs:
    """A batch whose logits (B, K) and penultimate features (B, D) keep their graph to ``x``."""
    with model.lock, torch.enable_grad(), model.capture_features() as store:
        logits = model(x)
    return ModelOutputs(model, x, logits, store["h"])


def score_fn(model: GradvizModel, method: str | MethodRunner, params: dict | None = None
             ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x (B, C, H, W) -> u(x) (B,)``: the uncertainty score of ``method`` as a differentiable function of
    the input, usable as a captum forward function.

    ``method``: a method name (with ``params``) or a :class:`MethodRunner`; fitted methods need a fitted
    runner (e.g. :func:`gradviz.scoring.make_runner`), whose fitted state is held fixed."""
    if isinstance(method, MethodRunner):
        if params:
            raise MethodError("score_fn: give params to the runner, not beside it")
        runner = method
    else:
        runner = get_method(method).create(**(params or {}))
    info = runner.info
    check_differentiable(info)
    if info.needs_fit and runner.state is None:
        raise MethodError(f"{info.name} must be fitted on ID training data first: pass a fitted runner "
                          "(gradviz.scoring.make_runner)")
    form = info.input_form

    def score(x: torch.Tensor) -> torch.Tensor:
        with model.lock, torch.enable_grad():  # the double backprop runs the shared network: one pass at a time
            batch = graph_outputs(model, x)
            if form == "direct":
                out = runner.state.score(batch) if info.needs_fit else info.impl(batch, **runner.params)
            else:
                out = form(batch, **runner.params)
        return out.reshape(-1).to(x.device)

    score.__name__ = f"score_{info.name}"
    score.route = info.input_route
    # False where the score re-runs the network per sample (double backprop): Grad-CAM then has no one
    # activation of its layer to differentiate
    score.layer_maps = info.input_route != "double backprop"
    return score


def explainability() -> list[dict]:
    """One row per registered method: method, title, family, explainable (bool) and how — the route by which its
    score is a differentiable function of the input (:data:`~gradviz.methods.registry.INPUT_ROUTES`), or why
    it is not. Read from the registrations (the Learn page shows it)."""
    rows = []
    for info in list_methods():
        if info.input_form is not None:
            how = INPUT_ROUTES[info.input_route]
            if info.needs_fit:
                how += " (the fitted state held fixed)"
            if info.input_route == "double backprop":
                how += "; Grad-CAM and the attention relevance need one pass and do not apply"
        else:
            how = "not explainable: " + (info.not_differentiable or "no differentiable form is registered")
        rows.append({"method": info.name, "title": info.title, "family": info.family,
                     "explainable": info.input_form is not None, "how": how})
    return rows


def explain_score(model: GradvizModel, x: torch.Tensor, attribution: str, method: str | MethodRunner,
                  params: dict | None = None, **attribution_params) -> "Attribution":  # noqa: F821
    """Attribute ``method``'s uncertainty score of ``x`` to its pixels with ``attribution`` (a name of
    :data:`gradviz.explain.attributions.ATTRIBUTIONS`); the note says which score was explained."""
    from gradviz.explain.attributions import attribute

    f = score_fn(model, method, params)
    name = method.info.name if isinstance(method, MethodRunner) else method
    att = attribute(model, x, attribution, forward=f, **attribution_params)
    att.note = f"explains {name}'s score u(x)" + (f"; {att.note}" if att.note else "")
    return att
