"""ReAct — Sun, Guo & Li, "ReAct: Out-of-distribution Detection With Rectified Activations",
NeurIPS 2021 (arXiv 2111.12797).

OOD inputs drive a few penultimate units to abnormally high values, and those inflate the logits
(overconfidence). ReAct clips the features at a threshold c before the head and scores the
energy of the rectified logits:

    h̄ = min(h, c),   z̄ = W h̄ + b,   u(x) = −log Σ_c e^{z̄_c}

c = the ``percentile``-th percentile of all penultimate activations of the ID training set
(90, the paper's default). Forward only: the head is re-applied to the clipped features.
"""

from __future__ import annotations

import numpy as np
import torch

from gradviz.errors import MethodError
from gradviz.methods._fitting import fit_outputs, require_fitted, score_dtype
from gradviz.methods.registry import ModelOutputs, differentiable, register
from gradviz.models import GradvizModel


@differentiable()
@register("react", title="ReAct (rectified activations + energy)", paper="Sun, Guo & Li, NeurIPS 2021", year=2021,
          formula=r"u(x) = -\log \sum_c e^{\bar z_c},\quad \bar z = W \min(h, c) + b", family="feature",
          link="https://arxiv.org/abs/2111.12797",
          intuition="Unfamiliar inputs often switch a few feature units on abnormally strongly, and those units "
                    "make the logits (and the confidence) explode. Clip every feature at a level typical for "
                    "training data, then read the energy: the overconfidence is cut off at its source.",
          reading="Same scale as `energy`; where energy fails because of a few extreme activations, ReAct should "
                  "separate better.",
          expected={"noise-uniform": "lower", "letters": "higher"})
class ReAct:
    """Energy of the logits recomputed from penultimate features clipped at an ID percentile."""

    def __init__(self, percentile: float = 90.0) -> None:
        if not 0.0 < float(percentile) <= 100.0:
            raise MethodError(f"react: percentile must be in (0, 100], got {percentile}")
        self.percentile = float(percentile)
        self.threshold_: float | None = None

    def fit(self, model: GradvizModel, images: torch.Tensor, labels=None) -> "ReAct":
        """The clipping threshold from the ID training ``images``' activations (labels unused)."""
        feats = fit_outputs(model, images)[1]
        self.threshold_ = float(np.percentile(feats.numpy().reshape(-1), self.percentile))
        return self

    def score(self, batch: ModelOutputs) -> torch.Tensor:
        """−logsumexp of the rectified logits, (B,)."""
        threshold = require_fitted("react", self.threshold_)
        head = batch.model.head
        # a graph only when explaining (gradviz.explain.scores)
        with torch.set_grad_enabled(batch.features.requires_grad):
            h = batch.features.clamp_max(threshold).to(head.weight.dtype)
            logits = head(h.to(head.weight.device))
        return -torch.logsumexp(logits.to(score_dtype(logits)), dim=-1)
