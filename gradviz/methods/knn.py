"""KNN — Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022
(arXiv 2204.06507).

Penultimate features are L2-normalised, z = h/‖h‖; the ID training set's normalised features are
kept (no labels needed). The uncertainty of a test input is the distance to its k-th nearest
normalised training feature:

    u(x) = ‖z − z_(k)‖₂,   z_(k) the k-th nearest of {z_i} (ID training set)

(the paper's ID score is its negative). Non-parametric: no Gaussian or class assumption.
k = 50 as in the paper's CIFAR-10 setting and OpenOOD's default (50 of 50,000 training images); a fit set
smaller than k caps k at its size (``k_``, the k actually used: a user's own ID set of a few dozen images
still works). ``k_fraction > 0`` sets k relative to the fit set instead, k = max(1, round(k_fraction · N)),
as the paper does for ImageNet (k = 1000 for the full 1.28M images, scaled with the share sampled): the same
fraction keeps the neighbourhood's share of the data when the fit set is smaller than the paper's. Batched: the
(B, N) distance matrix of a batch against the fit set (``torch.cdist``, in chunks of ``chunk`` fit samples for
large fit sets) and ``kthvalue``; exact, no approximate index (the fit set is a few thousand).
"""

from __future__ import annotations

import torch

from gradviz.errors import MethodError
from gradviz.methods._fitting import fit_outputs, require_fitted
from gradviz.methods.registry import ModelOutputs, not_differentiable, register
from gradviz.models import GradvizModel


def _normalised(h: torch.Tensor) -> torch.Tensor:
    h = h.detach().float().cpu().reshape(h.shape[0], -1)
    return h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@not_differentiable("the distance to the k-th nearest of a fixed set of training features switches "
                    "neighbour as the input moves (a sorted selection), so gradviz does not attribute it")
@register("knn", title="k-th nearest neighbour distance", paper="Sun, Ming, Zhu & Li, ICML 2022", year=2022,
          formula=r"u(x) = \lVert z - z_{(k)} \rVert_2,\quad z = h/\lVert h\rVert_2", family="feature",
          link="https://arxiv.org/abs/2204.06507",
          intuition="Normalise the penultimate features to unit length and ask how far the k-th closest training "
                    "image is. ID inputs sit in dense neighbourhoods of their class; an unfamiliar input has no "
                    "close neighbours. No Gaussian assumption, no labels.",
          reading="Scores live in [0, 2] (distances between unit vectors). Compare with Mahalanobis: same "
                  "features, a different notion of 'far'. Choice: `k` = 50 (the paper's CIFAR-10 k, tuned for "
                  "50,000 training images) or `k_fraction` > 0, k as a share of the fit set (the paper's ImageNet "
                  "setting; 0.001 = CIFAR-10's 50 of 50,000). 0 = use `k`.",
          expected={"noise-uniform": "higher", "letters": "higher"},
          bounds={"k": (1, None), "k_fraction": (0.0, 1.0), "chunk": (1, None)},
          paper_settings={"k_fraction": "k = 50 of 50,000 CIFAR-10 images, i.e. 0.001"})
class KNN:
    """Distance to the k-th nearest L2-normalised ID training feature (higher = more uncertain)."""

    def __init__(self, k: int = 50, chunk: int = 4096, k_fraction: float = 0.0) -> None:
        if int(k) < 1:
            raise MethodError(f"knn: k must be >= 1, got {k}")
        if int(chunk) < 1:
            raise MethodError(f"knn: chunk must be >= 1, got {chunk}")
        if not 0.0 <= float(k_fraction) <= 1.0:
            raise MethodError(f"knn: k_fraction must be in [0, 1] (0 = use k), got {k_fraction}")
        self.k, self.chunk, self.k_fraction = int(k), int(chunk), float(k_fraction)
        self.bank_: torch.Tensor | None = None  # (N, D) normalised ID training features
        self.k_ = self.k  # the k used: min(k, N), or the fraction of N

    def fit(self, model: GradvizModel, images: torch.Tensor, labels=None) -> "KNN":
        """Keep the normalised penultimate features of the ID training ``images`` (labels unused); k is capped
        at their number (or is ``k_fraction`` of it)."""
        bank = _normalised(fit_outputs(model, images)[1])
        n = int(bank.shape[0])
        self.bank_ = bank
        self.k_ = min(n, max(1, round(self.k_fraction * n))) if self.k_fraction > 0 else min(self.k, n)
        return self

    def score(self, batch: ModelOutputs) -> torch.Tensor:
        """Distance to the k-th nearest training feature, (B,)."""
        bank = require_fitted("knn", self.bank_)
        z = _normalised(batch.features)  # (B, D)
        if z.shape[1] != bank.shape[1]:
            raise MethodError(f"knn was fitted on {bank.shape[1]}-d features, got {z.shape[1]}-d")
        # the k smallest distances of each chunk of the bank, then the k-th of those (exact)
        best = torch.cat([torch.cdist(z, part).topk(min(self.k_, part.shape[0]), dim=1, largest=False).values
                          for part in bank.split(self.chunk)], dim=1)  # (B, ≤ k·chunks)
        return best.kthvalue(self.k_, dim=1).values
