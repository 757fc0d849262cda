"""Low-dimensional gradients — Wu, Li, Cheng, Yang & Huang, "Low-Dimensional Gradient Helps
Out-of-Distribution Detection", 2023 (arXiv 2310.17163; code
github.com/Wuyingwen/Low-dimensional-Gradient-Helps-OOD-Detection).

Per-sample gradients of the energy E(x) = log Σ_c e^{z_c}, normalised as in the paper's
"neural Fisher kernel" (each parameter centred by its mean and scaled by 1/std over the ID
training set), are projected onto their ``components`` leading principal directions; the
low-dimensional vectors are then scored by a class-conditional Mahalanobis distance (class means
and a tied covariance fitted on the ID training set, as :mod:`gradviz.methods.mahalanobis`):

    γ(x) = [⟨(∇θE(x) − μ)/σ, v_j⟩]_{j=1..k},     u(x) = min_c (γ − m_c)ᵀ Σ_γ⁻¹ (γ − m_c)

gradviz takes θ = the classifier head [W | b] (the paper uses every parameter): there
∇[W|b] E = p [hᵀ | 1] is rank one, so each projection is a bilinear form
⟨(p h̃ᵀ − μ)/σ, V_j⟩ = pᵀ (V_j/σ) h̃ − ⟨μ/σ, V_j⟩ with h̃ = [h, 1], computed for a whole batch with
one einsum; no per-sample gradient is formed when scoring. The fit materialises the
normalised head gradients of at most ``max_entries`` (rows × parameters; a seeded subset of the
fit set beyond that) for the SVD.
"""

from __future__ import annotations

import numpy as np
import torch

from gradviz.errors import MethodError
from gradviz.methods._fitting import (COVARIANCES, check_covariance, check_labels, class_gaussians, fit_outputs,
                                      require_fitted, sq_mahalanobis)
from gradviz.methods.registry import ModelOutputs, register
from gradviz.models import GradvizModel


def _with_one(h: torch.Tensor) -> torch.Tensor:
    """[h, 1] (B, D + 1): the head's bias as one more input."""
    return torch.cat([h, torch.ones(h.shape[0], 1, dtype=h.dtype)], dim=1)


@register("lowdim_grad", title="Low-dimensional gradients (PCA + Mahalanobis)", paper="Wu et al., 2023", year=2023,
          formula=r"u(x) = \min_c (\gamma - m_c)^\top \Sigma_\gamma^{-1} (\gamma - m_c),\; "
                  r"\gamma_j = \big\langle (\nabla_{W,b}\, \mathrm{LSE}(z) - \mu)/\sigma,\; v_j \big\rangle",
          family="gradient", backprop=False, link="https://arxiv.org/abs/2310.17163",
          intuition="A full gradient is huge and mostly noise. Keep only its coordinates along the few directions "
                    "in which ID gradients vary most (PCA of the ID training gradients), then ask how typical those "
                    "few numbers are for the predicted class — a Mahalanobis distance in gradient space.",
          reading="gradviz projects the classifier head's gradient (closed form); the paper projects every "
                  "parameter's. Compare with `mahalanobis`: features vs the gradient those features produce. "
                  "Choice (`covariance` of the projected gradients): `ledoit-wolf` (default, an adaptation) or "
                  "`empirical` (the maximum-likelihood estimate of Lee et al.'s Mahalanobis score, which the "
                  "paper applies).",
          expected={"noise-uniform": "higher", "letters": "higher"},
          bounds={"components": (1, None), "max_entries": (1, None)}, choices={"covariance": COVARIANCES},
          paper_settings={"covariance": "empirical"})
class LowDimGradient:
    """Mahalanobis distance of the head's energy gradient projected on its ID principal components."""

    def __init__(self, components: int = 16, covariance: str = "ledoit-wolf", max_entries: int = 2**24,
                 seed: int = 0) -> None:
        if int(components) < 1:
            raise MethodError(f"lowdim_grad: components must be >= 1, got {components}")
        if int(max_entries) < 1:
            raise MethodError(f"lowdim_grad: max_entries must be >= 1, got {max_entries}")
        self.components, self.max_entries, self.seed = int(components), int(max_entries), int(seed)
        self.covariance = check_covariance("lowdim_grad", covariance)
        self.weights_: torch.Tensor | None = None  # (k, C, D + 1) = V_j / σ, float64
        self.offset_: torch.Tensor | None = None  # (k,) = ⟨μ/σ, V_j⟩
        self.means_: torch.Tensor | None = None  # (classes, k)
        self.precision_: torch.Tensor | None = None  # (k, k)

    def project(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """γ (B, k): the normalised head gradients of the energy projected on the fitted components."""
        weights, offset = require_fitted("lowdim_grad", self.weights_, self.offset_)
        p = logits.detach().double().cpu().softmax(-1)  # ∂ logsumexp(z)/∂z, (B, C)
        h = _with_one(features.detach().double().cpu().reshape(features.shape[0], -1))  # (B, D + 1)
        if h.shape[1] != weights.shape[2] or p.shape[1] != weights.shape[1]:
            raise MethodError(f"lowdim_grad was fitted on a head of shape {tuple(weights.shape[1:])}, "
                              f"got ({p.shape[1]}, {h.shape[1]})")
        return torch.einsum("bc,kcd,bd->bk", p, weights, h) - offset

    def fit(self, model: GradvizModel, images: torch.Tensor, labels) -> "LowDimGradient":
        """Normalisation, principal components and class Gaussians on ID training ``images`` with ``labels``."""
        labels = check_labels("lowdim_grad", images, labels)
        logits, feats = fit_outputs(model, images)
        p = logits.double().softmax(-1)  # (N, C)
        h = _with_one(feats.double())  # (N, D + 1)
        n, c, d = p.shape[0], p.shape[1], h.shape[1]
        # per-parameter mean and std of g_cd = p_c h_d without forming the gradients (einsum over the set)
        mean = torch.einsum("nc,nd->cd", p, h) / n
        std = (torch.einsum("nc,nd->cd", p.square(), h.square()) / n - mean.square()).clamp_min(0).sqrt()
        std = torch.where(std > 1e-12 * float(std.max().clamp_min(1e-300)), std, torch.ones_like(std))
        rows = min(n, max(1, self.max_entries // (c * d)))  # the SVD needs the gradients themselves
        pick = np.sort(np.random.default_rng(self.seed).choice(n, rows, replace=False)) if rows < n else np.arange(n)
        grads = ((p[pick, :, None] * h[pick, None, :] - mean) / std).reshape(len(pick), c * d)  # (rows, C·(D+1))
        k = min(self.components, *grads.shape)
        _, _, vt = torch.linalg.svd(grads, full_matrices=False)  # rows of vt: principal directions
        v = vt[:k].reshape(k, c, d)
        self.weights_ = v / std
        self.offset_ = (v * (mean / std)).sum((1, 2))
        gamma = self.project(logits, feats).numpy()  # (N, k)
        _, means, precision = class_gaussians(gamma, labels, self.covariance)
        self.means_, self.precision_ = torch.from_numpy(means), torch.from_numpy(precision)
        return self

    def score(self, batch: ModelOutputs) -> torch.Tensor:
        """min_c Mahalanobis distance² of γ(x) to the class means in the projected space, (B,)."""
        means, precision = require_fitted("lowdim_grad", self.means_, self.precision_)
        return sq_mahalanobis(self.project(batch.logits, batch.features), means, precision).amin(-1).float()
