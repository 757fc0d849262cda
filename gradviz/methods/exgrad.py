"""ExGrad and the last-layer gradient decomposition — Igoe, Chung, Char & Schneider, "How Useful are
Gradients for OOD Detection Really?", 2022 (arXiv 2205.10439; code github.com/cvigoe/EpiGrad).

The last layer's gradient for any loss of the logits is rank one, ∇W = g hᵀ with g = ∂ℓ/∂z and h
the penultimate features, so every norm of it factorises into a FEATURE factor (a norm of h)
times an OUTPUT factor (a norm of g, a function of the softmax p only):

    GradNorm (KL to uniform):        ‖∇W‖₁ = ‖h‖₁ · ‖p − u‖₁
    ExGrad (labels y ~ p):       E_y ‖∇W‖₁ = ‖h‖₁ · E_y ‖e_y − p‖₁ = ‖h‖₁ · 2(1 − Σ_c p_c²)
    predicted label −log p_ŷ:       ‖∇W‖₁ = ‖h‖₁ · 2(1 − p_ŷ),   ‖∇W‖₂ = ‖h‖₂ · ‖p − e_ŷ‖₂

ExGrad is the expected L1 norm of the last-layer weight gradient of log p(y|x) when the label is
drawn from the model's own predictive distribution (E_y ‖e_y − p‖₁ = Σ_y p_y · 2(1 − p_y)).
gradviz returns it as an uncertainty, as is (a larger expected update = a less settled
prediction). Exact closed form, no backward pass.

:data:`LAST_LAYER_SCORES` lists the factors of every last-layer gradient score, and
:func:`last_layer_factors` computes them for a batch, so a user can see how much of a "gradient"
score is just the feature norm (:mod:`gradviz.analysis.decomposition` measures it per OOD set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from gradviz.engine.losses import top_complement
from gradviz.errors import MethodError
from gradviz.methods.registry import ModelOutputs, differentiable, register


NORMS = ("l1", "l2sq")  # ExGrad's norm: L1 of ∇W (gradviz's default), squared L2 of ∇[W | b] (the authors' code)


def gini(z: torch.Tensor) -> torch.Tensor:
    """1 − Σ_c p_c² of softmax(z), (B,), without cancellation where p_ŷ rounds to 1.

    1 − Σp² = Σ_c p_c (1 − p_c) = p_ŷ q + Σ_{c≠ŷ} p_c (1 − p_c), with q = 1 − p_ŷ = Σ_{c≠ŷ} p_c from
    logsumexp: a sum of non-negative terms, each to full relative precision (1 − Σp² in float32 is exactly
    0 for a softmax saturated at 1 − 1e-14, which would tie every such input)."""
    p, top, q = top_complement(z)
    rest = p.scatter(-1, top, 0.0)  # p_c for c ≠ ŷ (≤ ½, so 1 − p_c is exact enough)
    return p.gather(-1, top).squeeze(-1) * q.squeeze(-1) + (rest * (1 - rest)).sum(-1)


@differentiable()
@register("exgrad", title="ExGrad (expected last-layer gradient norm)",
          paper="Igoe, Chung, Char & Schneider, 2022", year=2022,
          formula=r"u(x) = \mathbb{E}_{y\sim p}\lVert \nabla_W \log p_y \rVert_1 "
                  r"= \lVert h\rVert_1 \cdot 2\big(1 - \textstyle\sum_c p_c^2\big)",
          family="gradient", backprop=False, link="https://arxiv.org/abs/2205.10439",
          intuition="Instead of a made-up target (GradNorm's uniform distribution), draw the label from the "
                    "model's own prediction and average the size of the last-layer gradient. The norm splits "
                    "exactly into feature norm ‖h‖₁ × an output term 2(1 − Σp²), which shows how much of a "
                    "'gradient' score is the feature norm and how much is confidence. Choice (`norm`): "
                    "`l1` (default) = L1 norm of the weight gradient ∇W, an adaptation; `l2sq` = the authors' "
                    "code, squared L2 norm of ∇[W | b] = (‖h‖₂² + 1)(1 − Σp²).",
          reading="Read it beside its two factors (Compare → metrics tab, 'feature norm vs output' table): "
                  "where ‖h‖₁ alone separates as well, the gradient adds nothing.",
          expected={"noise-uniform": "lower", "letters": "higher"},
          choices={"norm": NORMS}, paper_settings={"norm": "l2sq"})  # the authors' code
def exgrad(batch: ModelOutputs, norm: str = "l1") -> torch.Tensor:
    """E_{y~p} of a norm of the head's gradient of log p_y: ‖h‖₁ · 2(1 − Σp²) (``norm="l1"``, ∇W) or
    (‖h‖₂² + 1)(1 − Σp²) (``norm="l2sq"``, squared L2 of ∇[W | b], as the authors' code)."""
    h = batch.features.reshape(len(batch.logits), -1)
    if norm == "l1":
        return h.abs().sum(-1) * 2 * gini(batch.logits)
    if norm == "l2sq":  # Σ_y p_y ‖e_y − p‖² (‖h‖² + 1), and Σ_y p_y ‖e_y − p‖² = 1 − Σp²
        return (h.square().sum(-1) + 1) * gini(batch.logits)
    raise MethodError(f"exgrad: norm must be one of {NORMS}, got {norm!r}")


@dataclass(frozen=True)
class Factors:
    """A last-layer gradient score as feature factor × output factor (both ≥ 0).

    ``sign`` = +1 if the uncertainty grows with the product (ExGrad, grad_*), −1 if it is its negative
    (GradNorm): each factor alone, multiplied by ``sign``, is an uncertainty in the same direction."""

    feature: str  # name of the feature factor
    output: str  # name of the output factor
    sign: int
    params: dict  # the method's parameters this decomposition holds for


# feature factors: functions of the penultimate features h (B, D)
FEATURE_FACTORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "‖h‖₁": lambda h: h.abs().sum(-1),
    "‖h‖₁ + 1": lambda h: h.abs().sum(-1) + 1,  # weight and bias: ∇[W | b] = g [hᵀ | 1]
    "(‖h‖₂² + 1)^½": lambda h: (h.square().sum(-1) + 1).sqrt(),
    "‖h‖₂² + 1": lambda h: h.square().sum(-1) + 1,
}
def _distance_to_one_hot(p: torch.Tensor, top: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """‖p − e_ŷ‖₂ from :func:`top_complement`'s (p, ŷ, q): p with its top entry replaced by q = 1 − p_ŷ."""
    return p.scatter(-1, top, q).norm(dim=-1)


# output factors: functions of the logits z (B, C) through the softmax p, each without cancellation
# where p_ŷ rounds to 1 (1 − p_ŷ is read as q = Σ_{c≠ŷ} p_c, see :func:`top_complement`)
OUTPUT_FACTORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "‖p − u‖₁": lambda z: (z.softmax(-1) - 1.0 / z.shape[-1]).abs().sum(-1),
    "2(1 − Σp²)": lambda z: 2 * gini(z),
    "(1 − Σp²)": gini,
    "2(1 − p_ŷ)": lambda z: 2 * top_complement(z)[2].squeeze(-1),
    "‖p − e_ŷ‖₂": lambda z: _distance_to_one_hot(*top_complement(z)),
}
# method -> its factors (the head's parameters as gradviz computes them; grad_* only with layer="last")
LAST_LAYER_SCORES: dict[str, Factors] = {
    "gradnorm": Factors("‖h‖₁", "‖p − u‖₁", -1, {"temperature": 1.0}),
    "exgrad": Factors("‖h‖₁", "2(1 − Σp²)", +1, {"norm": "l1"}),
    "grad_l1": Factors("‖h‖₁ + 1", "2(1 − p_ŷ)", +1, {"layer": "last"}),
    "grad_l2": Factors("(‖h‖₂² + 1)^½", "‖p − e_ŷ‖₂", +1, {"layer": "last"}),
}


def last_layer_factors(batch: ModelOutputs) -> dict[str, torch.Tensor]:
    """Every feature and output factor of :data:`FEATURE_FACTORS` / :data:`OUTPUT_FACTORS` for a batch, (B,) each."""
    with torch.no_grad():
        h = batch.features.detach().reshape(batch.features.shape[0], -1).float()
        z = batch.logits.detach().float()
        out = {name: f(h) for name, f in FEATURE_FACTORS.items()}
        out.update({name: f(z) for name, f in OUTPUT_FACTORS.items()})
    return {k: v.cpu() for k, v in out.items()}
