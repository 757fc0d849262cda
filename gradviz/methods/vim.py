"""ViM — Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022
(arXiv 2203.10807).

Features are centred at the origin of the logit space, o = −W⁺b (W⁺ the pseudo-inverse of the
head weight, so W o + b = 0). The principal subspace P (the ``dim`` leading eigenvectors of the
uncentred covariance of h − o over the ID training set) carries what the classifier uses; the
residual x^{P⊥} = (I − PPᵀ)(h − o) is what it ignores. A virtual logit ‖x^{P⊥}‖·α, scaled by
α = mean_i max_c z_ic / mean_i ‖x_i^{P⊥}‖ on the training set, competes with the real logits:

    u(x) = α ‖x^{P⊥}‖ − log Σ_c e^{z_c}

(the paper's ID score is −u: the virtual class's softmax probability, up to a monotone map).

The principal dimension is a choice: ``dim > 0`` gives it; ``dim = 0`` applies ``rule``:
``"benchmark"`` = the ViM code's setting, 1000 for D ≥ 2048, else 512, capped at D − 1;
``"half"`` = D/2, an adaptation for small feature spaces; ``"auto"`` (default) = the benchmark rule
where D ≥ 768, D/2 below (32 of the bundled model's 64 features, where the benchmark rule would keep
63 and leave a one-dimensional residual). Forward only, batched.
"""

from __future__ import annotations

import numpy as np
import torch

from gradviz.errors import MethodError
from gradviz.methods._fitting import fit_outputs, require_fitted, score_dtype
from gradviz.methods.registry import ModelOutputs, differentiable, register
from gradviz.models import GradvizModel


RULES = ("auto", "benchmark", "half")


def principal_dim(d: int, rule: str = "auto") -> int:
    """The principal subspace's dimension for D features under ``rule`` (:data:`RULES`, see the module doc)."""
    if rule not in RULES:
        raise MethodError(f"vim: rule must be one of {RULES}, got {rule!r}")
    benchmark = min(1000 if d >= 2048 else 512, d - 1)
    half = max(1, d // 2)
    return benchmark if rule == "benchmark" or (rule == "auto" and d >= 768) else half


@differentiable()
@register("vim", title="ViM (virtual-logit matching)", paper="Wang, Li, Feng & Zhang, CVPR 2022", year=2022,
          formula=r"u(x) = \alpha\,\lVert (I - PP^\top)(h - o) \rVert_2 - \log \sum_c e^{z_c}", family="feature",
          link="https://arxiv.org/abs/2203.10807",
          intuition="The classifier only looks at a few feature directions. Whatever an input puts OUTSIDE that "
                    "principal subspace is invisible to the logits — ViM turns its size into a 'virtual logit' for "
                    "an extra 'none of these' class, so an input with a large residual and weak logits is OOD.",
          reading="Combines a feature score (the residual) with an output score (energy); when one of them fails "
                  "(e.g. energy on overconfident noise) the other can carry it. Choice (`rule`, used when `dim` "
                  "is 0): `benchmark` = the ViM code's principal dimension (1000 for D ≥ 2048, else 512, below D); "
                  "`half` = D/2 (an adaptation); `auto` (default) = benchmark from D = 768 up, D/2 below.",
          expected={"noise-uniform": "higher", "letters": "higher"},
          bounds={"dim": (0, None)}, choices={"rule": RULES}, paper_settings={"rule": "benchmark"})
class ViM:
    """Virtual-logit matching: α·‖residual of h outside the principal subspace‖ − logsumexp(z)."""

    def __init__(self, dim: int = 0, rule: str = "auto") -> None:
        if int(dim) < 0:
            raise MethodError(f"vim: dim must be >= 0 (0 = by `rule`), got {dim}")
        principal_dim(2, rule)  # validates the rule
        self.dim, self.rule = int(dim), rule
        self.origin_: torch.Tensor | None = None  # (D,) float64
        self.residual_basis_: torch.Tensor | None = None  # (D, D - dim) float64
        self.alpha_: float | None = None

    def fit(self, model: GradvizModel, images: torch.Tensor, labels=None) -> "ViM":
        """Principal subspace and α from the ID training ``images`` (labels unused)."""
        logits, feats = fit_outputs(model, images)
        h = feats.double().numpy()  # (N, D)
        d = h.shape[1]
        dim = self.dim or principal_dim(d, self.rule)
        if dim >= d:
            raise MethodError(f"vim: dim must be below the feature dimension {d}, got {dim}")
        head = model.head
        w = head.weight.detach().double().cpu().numpy()  # (K, D)
        b = head.bias.detach().double().cpu().numpy() if head.bias is not None else np.zeros(w.shape[0])
        origin = -np.linalg.pinv(w) @ b  # (D,)
        centred = h - origin
        eigval, eigvec = np.linalg.eigh(centred.T @ centred / len(centred))  # ascending
        residual = eigvec[:, np.argsort(-eigval)[dim:]]  # (D, D - dim): the directions the logits ignore
        vlogit = np.linalg.norm(centred @ residual, axis=-1)
        self.origin_, self.residual_basis_ = torch.from_numpy(origin), torch.from_numpy(residual)
        self.alpha_ = float(logits.double().amax(-1).mean() / max(vlogit.mean(), 1e-12))
        return self

    def score(self, batch: ModelOutputs) -> torch.Tensor:
        """α‖x^{P⊥}‖ − logsumexp(z), (B,)."""
        origin, basis, alpha = require_fitted("vim", self.origin_, self.residual_basis_, self.alpha_)
        h = batch.features.double().cpu()  # differentiable in h (gradviz.explain.scores)
        if h.shape[1] != origin.shape[0]:
            raise MethodError(f"vim was fitted on {origin.shape[0]}-d features, got {h.shape[1]}-d")
        vlogit = ((h - origin) @ basis).norm(dim=-1) * alpha
        return (vlogit - torch.logsumexp(batch.logits.double().cpu(), dim=-1)).to(score_dtype(batch.logits))
