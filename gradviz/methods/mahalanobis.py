"""Mahalanobis — Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018.

Class-conditional Gaussians with a tied covariance on the penultimate features h:
μ_c = mean of h over ID training samples of class c, Σ = (1/N) Σ_c Σ_{i∈c} (h_i−μ_c)(h_i−μ_c)ᵀ.
ID score max_c −(h−μ_c)ᵀΣ⁻¹(h−μ_c); gradviz returns the uncertainty

    u(x) = min_c (h − μ_c)ᵀ Σ⁻¹ (h − μ_c).

Only the penultimate layer, without the paper's input preprocessing or layer ensemble
(the common "Mahalanobis baseline" of OpenOOD and pytorch-ood).

Covariance estimate: ``covariance="ledoit-wolf"`` (default) shrinks Σ towards a scaled
identity (scikit-learn ``LedoitWolf`` on the class-centred features), which keeps Σ⁻¹ stable
when the fit set is small or some features are dead (constant zero after ReLU);
``covariance="empirical"`` is the paper's maximum-likelihood estimate (``EmpiricalCovariance``,
precision by a pseudo-inverse). Distances are computed batched in float64 through
hᵀPh − 2hᵀPμ_c + μ_cᵀPμ_c, so memory is O(B·C), not O(B·C·D).
"""

from __future__ import annotations

import numpy as np
import torch

from gradviz.errors import MethodError
from gradviz.methods._fitting import (COVARIANCES, check_covariance, check_labels, class_gaussians, fit_outputs,
                                      require_fitted, score_dtype, sq_mahalanobis)
from gradviz.methods.registry import ModelOutputs, differentiable, register
from gradviz.models import GradvizModel


def extract_features(model: GradvizModel, images: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Penultimate features (N, D) of ``images`` in chunks of ``chunk``, on the CPU (memoised per fit set)."""
    return fit_outputs(model, images, chunk)[1]


@differentiable()
@register("mahalanobis", title="Mahalanobis distance", paper="Lee et al., NeurIPS 2018", year=2018,
          formula=r"u(x) = \min_c (h-\mu_c)^\top \Sigma^{-1} (h-\mu_c)", family="feature",
          link="https://arxiv.org/abs/1807.03888",
          intuition="Fit one Gaussian per class on penultimate features of training images (shared covariance). "
                    "An input far from every class mean, in Mahalanobis distance, is unfamiliar.",
          reading="Needs fitting on ID training data (done once, cached). Strong on far-OOD such as noise. "
                  "Choice (`covariance`): `ledoit-wolf` (default, an adaptation: shrinkage keeps Σ⁻¹ stable with "
                  "few images or dead features) or `empirical` (the paper's maximum-likelihood estimate).",
          expected={"noise-uniform": "higher", "letters": "higher"},
          bounds={"chunk": (1, 65536)}, choices={"covariance": COVARIANCES},
          paper_settings={"covariance": "empirical"})
class Mahalanobis:
    """Minimum class-conditional Mahalanobis distance² of the penultimate features (tied covariance)."""

    def __init__(self, covariance: str = "ledoit-wolf", chunk: int = 512) -> None:
        self.covariance = check_covariance("mahalanobis", covariance)
        self.chunk = int(chunk)
        if self.chunk <= 0:
            raise MethodError(f"mahalanobis: chunk must be a positive number of images, got {chunk}")
        self.classes_: np.ndarray | None = None
        self.means_: torch.Tensor | None = None  # (C, D) float64
        self.precision_: torch.Tensor | None = None  # (D, D) float64

    def fit(self, model: GradvizModel, images: torch.Tensor, labels) -> "Mahalanobis":
        """Fit class means and the tied covariance on ID training ``images`` with true ``labels``."""
        labels = check_labels("mahalanobis", images, labels)
        feats = extract_features(model, images, self.chunk).double().numpy()  # (N, D)
        self.classes_, means, precision = class_gaussians(feats, labels, self.covariance)
        self.means_, self.precision_ = torch.from_numpy(means), torch.from_numpy(precision)
        return self

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance to every class mean, (B, C) float64."""
        means, precision = require_fitted("mahalanobis", self.means_, self.precision_)
        return sq_mahalanobis(features, means, precision)

    def score(self, batch: ModelOutputs) -> torch.Tensor:
        """Uncertainty min_c Mahalanobis distance² (higher = farther from every class), (B,)."""
        return self.distances(batch.features).amin(-1).to(score_dtype(batch.logits))
