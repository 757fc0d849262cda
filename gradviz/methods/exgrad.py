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
score is just the feature norm (:mod:`gradviz.decomposition` measures it per OOD set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from gradviz.methods.registry import ModelOutputs, differentiable, register


@differentiable()
@register("exgrad", title="ExGrad (expected last-layer gradient norm)",
          paper="Igoe, Chung, Char & Schneider, 2022", year=2022,
          formula=r"u(x) = \mathbb{E}_{y\sim p}\lVert \nabla_W \log p_y \rVert_1 "
                  r"= \lVert h\rVert_1 \cdot 2\big(1 - \textstyle\sum_c p_c^2\big)",
          family="gradient", backprop=False, link="https://arxiv.org/abs/2205.10439",
          intuition="Instead of a made-up target (GradNorm's uniform distribution), draw the label from the "
                    "model's own prediction and average the size of the last-layer gradient. The norm splits "
                    "exactly into feature norm ‖h‖₁ × an output term 2(1 − Σp²), which shows how much of a "
                    "'gradient' score is the feature norm and how much is confidence.",
          reading="Read it beside its two factors (Compare → metrics tab, 'feature norm vs output' table): "
                  "where ‖h‖₁ alone separates as well, the gradient adds nothing.",
          expected={"noise-uniform": "lower", "letters": "higher"})
def exgrad(batch: ModelOutputs) -> torch.Tensor:
    """‖h‖₁ · 2(1 − Σp²): the expected L1 norm of the head's weight gradient of log p_y, y ~ p."""
    p = batch.probs  # (B, C)
    return batch.features.reshape(len(p), -1).abs().sum(-1) * 2 * (1 - p.square().sum(-1))


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
}
# output factors: functions of the softmax p (B, C)
OUTPUT_FACTORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "‖p − u‖₁": lambda p: (p - 1.0 / p.shape[-1]).abs().sum(-1),
    "2(1 − Σp²)": lambda p: 2 * (1 - p.square().sum(-1)),
    "2(1 − p_ŷ)": lambda p: 2 * (1 - p.amax(-1)),
    "‖p − e_ŷ‖₂": lambda p: (p - torch.nn.functional.one_hot(p.argmax(-1), p.shape[-1]).to(p.dtype)).norm(dim=-1),
}
# method -> its factors (the head's parameters as gradviz computes them; grad_* only with layer="last")
LAST_LAYER_SCORES: dict[str, Factors] = {
    "gradnorm": Factors("‖h‖₁", "‖p − u‖₁", -1, {"temperature": 1.0}),
    "exgrad": Factors("‖h‖₁", "2(1 − Σp²)", +1, {}),
    "grad_l1": Factors("‖h‖₁ + 1", "2(1 − p_ŷ)", +1, {"layer": "last"}),
    "grad_l2": Factors("(‖h‖₂² + 1)^½", "‖p − e_ŷ‖₂", +1, {"layer": "last"}),
}


def last_layer_factors(batch: ModelOutputs) -> dict[str, torch.Tensor]:
    """Every feature and output factor of :data:`FEATURE_FACTORS` / :data:`OUTPUT_FACTORS` for a batch, (B,) each."""
    with torch.no_grad():
        h = batch.features.detach().reshape(batch.features.shape[0], -1).float()
        p = batch.logits.detach().float().softmax(-1)
        out = {name: f(h) for name, f in FEATURE_FACTORS.items()}
        out.update({name: f(p) for name, f in OUTPUT_FACTORS.items()})
    return {k: v.cpu() for k, v in out.items()}
