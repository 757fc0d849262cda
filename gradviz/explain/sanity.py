"""Can this map be trusted? Cheap checks of an attribution map (all batched, no Quantus dependency).

- :func:`randomization_check` — the model-parameter randomisation test of Adebayo et al., "Sanity Checks for
  Saliency Maps", NeurIPS 2018: re-initialise the top layers of a *copy* of the model (cascading, from the head
  down), recompute the map for the same class, and measure the Spearman rank correlation of |map| before and
  after. A map that stays (rank-)similar when the weights it claims to explain are destroyed does not depend
  on the model: it is flagged (similarity > ``threshold``).
- :func:`deletion_insertion` — faithfulness curves (Petsiuk et al., "RISE", BMVC 2018): delete the pixels in
  the map's order (most important first) and watch the output fall; insert them into a blank image and watch
  it rise. The areas under the curves (deletion ↓ better, insertion ↑ better) over the fraction of pixels.
- :func:`gini_sparseness` — the Gini index of |map| (Chalasani et al., ICML 2020; Quantus's "Sparseness"):
  0 = mass spread evenly over every pixel, (n−1)/n = all of it on one pixel.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.stats import spearmanr

from gradviz.errors import GradvizError
from gradviz.models import GradvizModel

__all__ = ["Explainer", "RandomizationResult", "randomization_check", "top_layers", "randomized_copy",
           "Curves", "deletion_insertion", "gini_sparseness", "saliency_explainer"]

# an attribution method under test: (model, x (B, C, H, W), target (B,)) -> maps (B, H, W)
Explainer = Callable[[GradvizModel, torch.Tensor, torch.Tensor], torch.Tensor]


def saliency_explainer(model: GradvizModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|∂z_t/∂x| summed over channels (gradviz.explain.attributions' saliency), (B, H, W)."""
    from gradviz.explain.attributions import attribute

    return attribute(model, x, "saliency", target=target).maps


def top_layers(model: GradvizModel, k: int) -> list[str]:
    """The ``k`` parametrised layers nearest the output (the head first), names inside ``model.net``."""
    from gradviz.engine import parametrised_layers

    names = [name for name, _ in parametrised_layers(model)]
    if not 1 <= int(k) <= len(names):
        raise GradvizError(f"randomise between 1 and {len(names)} top layers, got {k}")
    return names[::-1][:int(k)]


def randomized_copy(model: GradvizModel, layers: list[str], seed: int = 0) -> GradvizModel:
    """A copy of ``model`` whose ``layers`` are re-initialised with their own ``reset_parameters`` (seeded); the
    shared model is untouched."""
    net = copy.deepcopy(model.net)
    modules = dict(net.named_modules())
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        for name in layers:
            module = modules.get(name)
            if module is None or not hasattr(module, "reset_parameters"):
                raise GradvizError(f"layer {name!r} cannot be re-initialised (no reset_parameters)")
            module.reset_parameters()
    finally:
        torch.random.set_rng_state(gen_state)
    return GradvizModel(net, model.card).to(model.device)


def _spearman_rows(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman rank correlation of |a_i| and |b_i| for every row i, (B,); NaN (constant map) -> 0."""
    out = []
    for u, v in zip(a.reshape(a.shape[0], -1).abs().double().numpy(), b.reshape(b.shape[0], -1).abs().double().numpy()):
        rho = spearmanr(u, v).statistic if u.std() > 0 and v.std() > 0 else (1.0 if np.allclose(u, v) else 0.0)
        out.append(float(rho))
    return np.asarray(out)


@dataclass
class RandomizationResult:
    """Similarity of the map after re-initialising the top 1, 2, … layers (cascading), per sample."""

    layers: list[str]  # randomised in this order (cumulative)
    similarity: np.ndarray  # (len(layers), B): Spearman of |map| vs the original map
    threshold: float

    @property
    def final(self) -> np.ndarray:
        """Similarity after all chosen layers are re-initialised, (B,)."""
        return self.similarity[-1]

    @property
    def flagged(self) -> np.ndarray:
        """True where the map barely changed: it does not depend on the model's (top) weights, (B,)."""
        return self.final > self.threshold


def randomization_check(model: GradvizModel, x: torch.Tensor, explainer: Explainer = saliency_explainer,
                        n_layers: int = 3, threshold: float = 0.5, seed: int = 0,
                        target: torch.Tensor | None = None) -> RandomizationResult:
    """Adebayo et al.'s cascading model-randomisation test of ``explainer`` on ``x`` (B, C, H, W).

    The map of the original model for ``target`` (default: its predicted class) is compared with the map of
    copies whose top 1 … ``n_layers`` layers are re-initialised, for the same class."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise GradvizError(f"threshold must be a rank correlation in [0, 1], got {threshold}")
    if target is None:
        with torch.no_grad():
            target = model(x.to(model.device)).argmax(-1)
    original = explainer(model, x, target).detach().cpu()
    layers = top_layers(model, n_layers)
    sims = [_spearman_rows(original, explainer(randomized_copy(model, layers[:k], seed), x, target).detach().cpu())
            for k in range(1, len(layers) + 1)]
    return RandomizationResult(layers, np.stack(sims), float(threshold))


@dataclass
class Curves:
    """Deletion and insertion curves of one map: output vs fraction of pixels deleted / inserted."""

    fractions: np.ndarray  # (S,) from 0 to 1
    deletion: np.ndarray  # (S,)
    insertion: np.ndarray  # (S,)

    @property
    def deletion_auc(self) -> float:
        """Area under the deletion curve (lower = the map found the pixels the output needs)."""
        return float(np.trapezoid(self.deletion, self.fractions))

    @property
    def insertion_auc(self) -> float:
        """Area under the insertion curve (higher = the map's top pixels alone restore the output)."""
        return float(np.trapezoid(self.insertion, self.fractions))


def deletion_insertion(output: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, attribution: torch.Tensor,
                       steps: int = 20, baseline: float = 0.0) -> Curves:
    """Deletion / insertion curves of ``attribution`` (H, W) for one image ``x`` (1, C, H, W).

    ``output``: images (N, C, H, W) -> (N,) the explained quantity (e.g. the class probability, or a score
    function of :func:`gradviz.explain.scores.score_fn`). Pixels are ranked by the attribution (highest first); at
    step k the top ⌈k·n/steps⌉ pixels (all channels) are set to ``baseline`` (deletion) or copied from ``x`` into
    a ``baseline`` image (insertion). All 2·(steps+1) images go through ``output`` as one batch."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise GradvizError(f"deletion/insertion takes one image (1, C, H, W); got {tuple(x.shape)}")
    a = torch.as_tensor(attribution).detach().float().cpu().reshape(-1)
    h, w = x.shape[-2:]
    if a.numel() != h * w:
        raise GradvizError(f"the map has {a.numel()} values for a {h}×{w} image")
    if int(steps) < 1:
        raise GradvizError(f"steps must be >= 1, got {steps}")
    n = h * w
    order = torch.argsort(a, descending=True, stable=True)  # (n,)
    counts = np.ceil(np.linspace(0, n, int(steps) + 1)).astype(int)  # pixels changed at each step
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n)
    masks = torch.stack([(rank < c) for c in counts]).reshape(-1, 1, h, w).to(x.dtype)  # (S, 1, H, W): 1 = changed
    masks = masks.to(x.device)
    blank = torch.full_like(x, float(baseline))
    deleted = x * (1 - masks) + blank * masks  # (S, C, H, W)
    inserted = blank * (1 - masks) + x * masks
    with torch.no_grad():
        values = output(torch.cat([deleted, inserted])).detach().double().cpu().numpy().reshape(-1)
    s = len(counts)
    return Curves(counts / n, values[:s], values[s:])


def gini_sparseness(attribution: torch.Tensor | np.ndarray) -> np.ndarray:
    """Gini index of |a| per map: G = Σ_i (2i − n − 1)·a_(i) / (n·Σ a), a_(i) ascending; (B,) for (B, H, W)
    maps or a scalar array for one (H, W) map. 0 for a uniform map, (n−1)/n when one pixel holds everything."""
    a = np.abs(np.asarray(attribution.detach().cpu() if isinstance(attribution, torch.Tensor) else attribution,
                          dtype=np.float64))
    single = a.ndim == 2
    a = np.sort(a.reshape(1 if single else a.shape[0], -1), axis=1)
    n = a.shape[1]
    i = np.arange(1, n + 1)
    total = a.sum(1)
    g = np.where(total > 0, ((2 * i - n - 1) * a).sum(1) / (n * np.where(total > 0, total, 1)), 0.0)
    return g[0] if single else g


def map_checks(model: GradvizModel, x: torch.Tensor, methods: list[str], score=None, n_layers: int = 3,
               threshold: float = 0.5, steps: int = 20) -> "pd.DataFrame":  # noqa: F821
    """One row per attribution method for one image ``x`` (1, C, H, W): randomisation similarity (top
    ``n_layers`` re-initialised) and its flag, deletion / insertion AUC, Gini sparseness.

    ``score``: None explains the predicted class (curves read its probability); a method name or fitted
    :class:`~gradviz.methods.registry.MethodRunner` explains that uncertainty score (curves read the score)."""
    import pandas as pd

    from gradviz.explain.attributions import attribute
    from gradviz.explain.scores import score_fn

    with torch.no_grad():
        target = model(x.to(model.device)).argmax(-1)

    def explainer(name: str) -> Explainer:
        if score is None:
            return lambda m, xs, t: attribute(m, xs, name, target=t).maps
        return lambda m, xs, t: attribute(m, xs, name, forward=score_fn(m, score)).maps

    output = (lambda imgs: model(imgs).softmax(-1)[:, int(target[0])]) if score is None else score_fn(model, score)
    rows = []
    for name in methods:
        ex = explainer(name)
        att = ex(model, x, target)[0]
        rand = randomization_check(model, x, ex, n_layers=n_layers, threshold=threshold, target=target)
        curves = deletion_insertion(output, x, att, steps=steps)
        rows.append(dict(method=name, randomisation_similarity=float(rand.final[0]), flagged=bool(rand.flagged[0]),
                         deletion_auc=curves.deletion_auc, insertion_auc=curves.insertion_auc,
                         sparseness=float(gini_sparseness(att))))
    return pd.DataFrame(rows)
