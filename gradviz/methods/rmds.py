"""Relative Mahalanobis distance — Ren, Fort, Liu, Roy, Padhy & Lakshminarayanan, "A Simple Fix to
Mahalanobis Distance for Improving Near-OOD Detection", 2021 (arXiv 2106.09022).

The class-conditional Mahalanobis distance MD_c(h) = (h − μ_c)ᵀΣ⁻¹(h − μ_c) (class means, tied
covariance, as :mod:`gradviz.methods.mahalanobis`) minus the distance to a single "background"
Gaussian fitted on all ID training features, MD_0(h) = (h − μ_0)ᵀΣ_0⁻¹(h − μ_0):

    u(x) = min_c [MD_c(h) − MD_0(h)]

The background term removes what is far from *everything* (feature directions common to all
classes), which is what makes the plain distance weak on near-OOD inputs. Both covariances use
the same estimate (``covariance``: Ledoit-Wolf by default as for ``mahalanobis``, an adaptation;
``"empirical"`` is the paper's maximum-likelihood estimate). Batched.
"""

from __future__ import annotations

import torch

from gradviz.methods._fitting import (COVARIANCES, check_covariance, check_labels, class_gaussians, fit_outputs,
                                      precision_of, require_fitted, score_dtype, sq_mahalanobis)
from gradviz.methods.registry import ModelOutputs, differentiable, register
from gradviz.models import GradvizModel


@differentiable()
@register("rmds", title="Relative Mahalanobis distance", paper="Ren et al., 2021", year=2021,
          formula=r"u(x) = \min_c \big[(h-\mu_c)^\top\Sigma^{-1}(h-\mu_c) - (h-\mu_0)^\top\Sigma_0^{-1}(h-\mu_0)\big]",
          family="feature", link="https://arxiv.org/abs/2106.09022",
          intuition="Mahalanobis distance to the nearest class, minus the distance to one broad Gaussian of ALL "
                    "training features. What is unusual for every class alike (e.g. overall brightness) cancels; "
                    "what is unusual for the predicted class remains — aimed at near-OOD inputs.",
          reading="Can be negative (closer to a class than to the bulk). Compare with `mahalanobis` on letters, "
                  "the near-OOD set. Choice (`covariance`, both Gaussians): `ledoit-wolf` (default, an adaptation) "
                  "or `empirical` (the paper's maximum-likelihood estimate).",
          expected={"noise-uniform": "higher", "letters": "higher"},
          choices={"covariance": COVARIANCES}, paper_settings={"covariance": "empirical"})
class RelativeMahalanobis:
    """min_c MD_c(h) − MD_0(h): class-conditional minus background Mahalanobis distance²."""

    def __init__(self, covariance: str = "ledoit-wolf") -> None:
        self.covariance = check_covariance("rmds", covariance)
        self.means_: torch.Tensor | None = None  # (C, D)
        self.precision_: torch.Tensor | None = None  # (D, D)
        self.background_mean_: torch.Tensor | None = None  # (1, D)
        self.background_precision_: torch.Tensor | None = None  # (D, D)

    def fit(self, model: GradvizModel, images: torch.Tensor, labels) -> "RelativeMahalanobis":
        """Class Gaussians and the background Gaussian on ID training ``images`` with true ``labels``."""
        labels = check_labels("rmds", images, labels)
        feats = fit_outputs(model, images)[1].double().numpy()
        _, means, precision = class_gaussians(feats, labels, self.covariance)
        mean0 = feats.mean(0, keepdims=True)
        self.means_, self.precision_ = torch.from_numpy(means), torch.from_numpy(precision)
        self.background_mean_ = torch.from_numpy(mean0)
        self.background_precision_ = torch.from_numpy(precision_of(feats - mean0, self.covariance))
        return self

    def score(self, batch: ModelOutputs) -> torch.Tensor:
        """min_c (MD_c − MD_0), (B,)."""
        means, precision, background_mean, background_precision = require_fitted(
            "rmds", self.means_, self.precision_, self.background_mean_, self.background_precision_)
        md = sq_mahalanobis(batch.features, means, precision)  # (B, C)
        md0 = sq_mahalanobis(batch.features, background_mean, background_precision)  # (B, 1)
        return (md - md0).amin(-1).to(score_dtype(batch.logits))
