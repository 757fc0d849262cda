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
from gradviz.methods.registry import ModelOutputs, register
from gradviz.models import GradvizModel

_COVARIANCES = ("ledoit-wolf", "empirical")


def extract_features(model: GradvizModel, images: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Penultimate features (N, D) of ``images`` in chunks of ``chunk``, on the CPU."""
    out = []
    for start in range(0, int(images.shape[0]), chunk):
        _, h = model.logits_and_features(images[start:start + chunk].to(model.device))
        out.append(h.detach().cpu())
    return torch.cat(out)


@register("mahalanobis", title="Mahalanobis distance", paper="Lee et al., NeurIPS 2018", year=2018,
          formula=r"u(x) = \min_c (h-\mu_c)^\top \Sigma^{-1} (h-\mu_c)", kind="feature",
          bounds={"chunk": (1, 65536)})
class Mahalanobis:
    """Minimum class-conditional Mahalanobis distance² of the penultimate features (tied covariance)."""

    def __init__(self, covariance: str = "ledoit-wolf", chunk: int = 512) -> None:
        if covariance not in _COVARIANCES:
            raise MethodError(f"mahalanobis: covariance must be one of {_COVARIANCES}, got {covariance!r}")
        if int(chunk) <= 0:
            raise MethodError(f"mahalanobis: chunk must be a positive number of images, got {chunk}")
        self.covariance = covariance
        self.chunk = int(chunk)
        self.classes_: np.ndarray | None = None
        self.means_: torch.Tensor | None = None  # (C, D) float64
        self.precision_: torch.Tensor | None = None  # (D, D) float64

    def fit(self, model: GradvizModel, images: torch.Tensor, labels) -> "Mahalanobis":
        """Fit class means and the tied covariance on ID training ``images`` with true ``labels``."""
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
        if labels.shape[0] != int(images.shape[0]):
            raise MethodError(f"mahalanobis: {images.shape[0]} images but {labels.shape[0]} labels")
        if labels.shape[0] < 2 or (labels < 0).any():
            raise MethodError("mahalanobis needs at least 2 labelled ID training images (labels >= 0) to fit")
        feats = extract_features(model, images, self.chunk).double().numpy()  # (N, D)
        self.classes_ = np.unique(labels)
        means = np.stack([feats[labels == c].mean(0) for c in self.classes_])  # (C, D)
        centred = feats - means[np.searchsorted(self.classes_, labels)]
        from sklearn.covariance import EmpiricalCovariance, LedoitWolf

        est = LedoitWolf(assume_centered=True) if self.covariance == "ledoit-wolf" else EmpiricalCovariance(assume_centered=True)
        est.fit(centred)
        self.means_ = torch.from_numpy(means)
        self.precision_ = torch.from_numpy(np.asarray(est.precision_, dtype=np.float64))
        return self

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance to every class mean, (B, C) float64."""
        if self.means_ is None or self.precision_ is None:
            raise MethodError("mahalanobis must be fitted on ID training data first")
        h = features.detach().double().cpu()  # (B, D)
        if h.shape[-1] != self.means_.shape[-1]:
            raise MethodError(f"mahalanobis was fitted on {self.means_.shape[-1]}-d features, got {h.shape[-1]}-d")
        P, mu = self.precision_, self.means_
        hP = h @ P  # (B, D)
        d = (hP * h).sum(-1, keepdim=True) - 2 * hP @ mu.T + ((mu @ P) * mu).sum(-1)  # (B, C)
        return d.clamp_min(0)

    def score(self, batch: ModelOutputs) -> torch.Tensor:
        """Uncertainty min_c Mahalanobis distance² (higher = farther from every class), (B,)."""
        return self.distances(batch.features).amin(-1).float()
