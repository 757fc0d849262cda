"""KNN — Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022
(arXiv 2204.06507).

Penultimate features are L2-normalised, z = h/‖h‖; the ID training set's normalised features are
kept (no labels needed). The uncertainty of a test input is the distance to its k-th nearest
normalised training feature:

    u(x) = ‖z − z_(k)‖₂,   z_(k) the k-th nearest of {z_i} (ID training set)

(the paper's ID score is its negative). Non-parametric: no Gaussian or class assumption.
k = 50 as in the paper's CIFAR-10 setting and OpenOOD's default; a fit set smaller than k caps k at
its size (``k_``, the k actually used: a user's own ID set of a few dozen images still works). Batched: the (B, N) distance
matrix of a batch against the fit set (``torch.cdist``, in chunks of ``chunk`` fit samples for
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
                  "features, a different notion of 'far'.",
          expected={"noise-uniform": "higher", "letters": "higher"})
class KNN:
    """Distance to the k-th nearest L2-normalised ID training feature (higher = more uncertain)."""

    def __init__(self, k: int = 50, chunk: int = 4096) -> None:
        if int(k) < 1:
            raise MethodError(f"knn: k must be >= 1, got {k}")
        if int(chunk) < 1:
            raise MethodError(f"knn: chunk must be >= 1, got {chunk}")
        self.k, self.chunk = int(k), int(chunk)
        self.bank_: torch.Tensor | None = None  # (N, D) normalised ID training features
        self.k_ = self.k  # the k used: min(k, N)

    def fit(self, model: GradvizModel, images: torch.Tensor, labels=None) -> "KNN":
        """Keep the normalised penultimate features of the ID training ``images`` (labels unused); k is capped
        at their number."""
        bank = _normalised(fit_outputs(model, images)[1])
        self.bank_, self.k_ = bank, min(self.k, int(bank.shape[0]))
        return self

    def score(self, batch: ModelOutputs) -> torch.Tensor:
        """Distance to the k-th nearest training feature, (B,)."""
        require_fitted("knn", self.bank_)
        z = _normalised(batch.features)  # (B, D)
        if z.shape[1] != self.bank_.shape[1]:
            raise MethodError(f"knn was fitted on {self.bank_.shape[1]}-d features, got {z.shape[1]}-d")
        # the k smallest distances of each chunk of the bank, then the k-th of those (exact)
        best = torch.cat([torch.cdist(z, part).topk(min(self.k_, part.shape[0]), dim=1, largest=False).values
                          for part in self.bank_.split(self.chunk)], dim=1)  # (B, ≤ k·chunks)
        return best.kthvalue(self.k_, dim=1).values
