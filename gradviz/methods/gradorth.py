"""GradOrth — Behpour, Doan, Li, He, Gou & Ren, "GradOrth: A Simple yet Efficient
Out-of-Distribution Detection with Orthogonal Projection of Gradients", NeurIPS 2023
(arXiv 2308.00310).

Fit (once, ID training set): the representation matrix R = [h_1 … h_N] (D × N) of the head's
inputs; its SVD R = U S Vᵀ; the "important" subspace S_k = U[:, :k] with k the smallest rank whose
singular values keep a fraction ``energy`` of ‖R‖_F² (Σ_{i≤k} s_i² ≥ energy · Σ_i s_i², the
gradient-projection-memory rule GradOrth builds on).

Score: the head's weight gradient of the GradNorm loss KL(u ‖ softmax(z)), ∇W = g hᵀ with
g = p − u, projected onto the important subspace on its input side, ∇W S_kS_kᵀ = g (S_kS_kᵀh)ᵀ.
A small projection means the sample's gradient lives outside what ID data spans:

    u(x) = −‖∇W S_kS_kᵀ‖_F = −‖p − u‖₂ · ‖S_kᵀ h‖₂

(rank one: the Frobenius norm of the projection is the product of two vector norms, computed for
the whole batch at once; no per-sample gradient is formed). gradviz uses the Frobenius (L2)
norm, the norm an orthogonal projection preserves; the head's bias is not projected.
"""

from __future__ import annotations

import numpy as np
import torch

from gradviz.errors import MethodError
from gradviz.methods._fitting import fit_outputs, require_fitted
from gradviz.methods.registry import ModelOutputs, register
from gradviz.models import GradvizModel


def energy_rank(singular_values: np.ndarray, energy: float) -> int:
    """Smallest k with Σ_{i≤k} s_i² ≥ energy · Σ_i s_i² (at least 1)."""
    sq = np.asarray(singular_values, dtype=np.float64) ** 2
    kept = np.cumsum(sq) / max(sq.sum(), 1e-300)
    return min(len(sq), int(np.searchsorted(kept, energy - 1e-12)) + 1)


@register("gradorth", title="GradOrth (gradient projected on the ID subspace)",
          paper="Behpour et al., NeurIPS 2023", year=2023,
          formula=r"u(x) = -\lVert \nabla_W \mathrm{KL}(u\,\Vert\,p)\, S_k S_k^\top \rVert_F "
                  r"= -\lVert p - u\rVert_2\,\lVert S_k^\top h\rVert_2",
          family="gradient", backprop=False, link="https://arxiv.org/abs/2308.00310",
          intuition="Find the few feature directions that ID training data actually uses (an SVD of their "
                    "penultimate features). Project the last layer's gradient onto them: an ID input's gradient "
                    "lies mostly inside that subspace, an OOD input's gradient partly outside, so its projection "
                    "is smaller.",
          reading="Like GradNorm, it multiplies an output factor (‖p − u‖₂) with a feature factor — here only the "
                  "part of h inside the ID subspace. Inputs with huge features inside that subspace (the bundled "
                  "model's noise) still look familiar.",
          expected={"noise-uniform": "lower", "letters": "higher"})
class GradOrth:
    """−‖p − u‖₂ · ‖S_kᵀh‖₂: the head's KL-to-uniform gradient projected onto the ID feature subspace."""

    def __init__(self, energy: float = 0.97) -> None:
        if not 0.0 < float(energy) <= 1.0:
            raise MethodError(f"gradorth: energy must be in (0, 1], got {energy}")
        self.energy = float(energy)
        self.basis_: torch.Tensor | None = None  # (D, k) float64, orthonormal columns

    def fit(self, model: GradvizModel, images: torch.Tensor, labels=None) -> "GradOrth":
        """The important subspace of the head's inputs on the ID training ``images`` (labels unused)."""
        feats = fit_outputs(model, images)[1].double()  # (N, D) = Rᵀ
        u, s, _ = torch.linalg.svd(feats.T, full_matrices=False)  # R = U S Vᵀ, U (D, min(D, N))
        self.basis_ = u[:, :energy_rank(s.numpy(), self.energy)].contiguous()
        return self

    def score(self, batch: ModelOutputs) -> torch.Tensor:
        """−‖p − u‖₂ · ‖S_kᵀh‖₂, (B,)."""
        basis = require_fitted("gradorth", self.basis_)
        h = batch.features.detach().double().cpu().reshape(batch.features.shape[0], -1)
        if h.shape[1] != basis.shape[0]:
            raise MethodError(f"gradorth was fitted on {basis.shape[0]}-d features, got {h.shape[1]}-d")
        p = batch.logits.detach().double().cpu().softmax(-1)
        g = p - 1.0 / p.shape[-1]  # ∂KL(u‖softmax z)/∂z
        return (-(g.norm(dim=-1) * (h @ basis).norm(dim=-1))).float()
