"""Layerwise gradient-norm density — after Dauncey, Holmes, Williams & Falck, "Approximations to the
Fisher Information Metric of Deep Generative Models for Out-Of-Distribution Detection", TMLR 2024
(arXiv 2403.01485).

Per sample, the squared L2 norm of the gradient of a loss with respect to every parametrised layer,
n_l = ‖∇_{θ_l} ℓ‖² (the engine's :func:`gradviz.engine.layer_sq_l2_norms`, one batched
backward), taken in logs, v = [log n_1, …, log n_L]. A Gaussian N(μ, Σ) is fitted to v over the
ID training set — no labels, no OOD data — and the uncertainty is the negative log density:

    u(x) = −log N(v(x); μ, Σ) = ½ (v − μ)ᵀ Σ⁻¹ (v − μ) + ½ log det(2πΣ)

Dauncey et al. find layerwise log gradient norms of a likelihood close to Gaussian on ID data and
score their deviation; here the loss is the classifier's own-prediction likelihood −log p_ŷ
(``loss="nll_pred"``, the Fisher view of Oberdiek et al.'s metrics) or the confounding label
(``"confounding_sigmoid"``). Two-sided: gradients that are too SMALL (an overconfident input) are as
atypical as too large ones — which is what the one-sided gradient scores miss. It is the
unsupervised twin of the meta classifier (the Meta classifier page shows both). The norms are
computed for the loss gradient scaled to max 1 and scaled back in logs (no float32 underflow on a
saturated softmax). Σ: Ledoit-Wolf shrinkage (default) or the empirical estimate (``covariance``).
"""

from __future__ import annotations

import numpy as np
import torch

from gradviz.errors import MethodError
from gradviz.engine import FORWARD_BATCH, LOSSES, GradientPass
from gradviz.methods._fitting import COVARIANCES, check_covariance, precision_of, require_fitted
from gradviz.methods.registry import ModelOutputs, register
from gradviz.models import GradvizModel

FLOOR = float(torch.finfo(torch.float32).tiny)


def unit_norms(model: GradvizModel, x: torch.Tensor, loss: str) -> torch.Tensor:
    """‖∇θ_l (ℓ / max_c |∂ℓ/∂z_c|)‖² per layer, (B, L) float32: one captured forward and backward per sub-batch."""
    parts = [GradientPass(model, x[i:i + FORWARD_BATCH]).unit_sq_l2_norms(loss)[1]
             for i in range(0, int(x.shape[0]), FORWARD_BATCH)]
    return torch.cat(parts).float()


def fit_rows(model: GradvizModel, x: torch.Tensor, loss: str) -> torch.Tensor:
    """v = log ‖∇θ_l ℓ‖² per layer of images ``x``, (B, L) float64, as :func:`log_layer_norms` reads it off a
    scored batch: one captured forward and backward per sub-batch, the scale taken from that forward's logits."""
    parts = []
    for i in range(0, int(x.shape[0]), FORWARD_BATCH):
        gp = GradientPass(model, x[i:i + FORWARD_BATCH])
        parts.append(_logs(gp.unit_sq_l2_norms(loss)[1].float(), loss, gp.logits))
    return torch.cat(parts)


def _logs(unit_norms: torch.Tensor, loss: str, logits: torch.Tensor) -> torch.Tensor:
    """log ‖∇θ_l ℓ‖², (B, L) float64, from the norms at unit scale (float32) and the logits that set the scale:
    log of the clamped norms plus 2·log max_c |∂ℓ/∂z_c|."""
    scale = 2 * LOSSES[loss](logits.detach().double().cpu()).abs().amax(-1, keepdim=True).clamp_min(1e-300).log()
    return unit_norms.detach().double().cpu().clamp_min(FLOOR).log() + scale


def log_layer_norms(batch: ModelOutputs, loss: str = "nll_pred") -> torch.Tensor:
    """v = log ‖∇θ_l ℓ‖² per layer, (B, L) float64; one backward on the batch's shared forward (memoised).

    The engine backpropagates ∂ℓ/∂z / max|∂ℓ/∂z| and 2·log max|∂ℓ/∂z| is added back: on a saturated softmax
    ‖∇θ_l ℓ‖² ∝ (1 − p_ŷ)² falls below float32's smallest number (1e-40 for 1 − p_ŷ = 1e-20), where the
    float32 norms would all clamp to the same floor."""
    if loss not in LOSSES:
        raise MethodError(f"gradient_density: loss must be one of {sorted(LOSSES)}, got {loss!r}")

    def compute() -> torch.Tensor:  # shares the backward of grad_* (the same loss) on the batch's pass
        gp = batch.gradient_pass()
        return gp.unit_sq_l2_norms(loss)[1].float() if gp is not None else unit_norms(batch.model, batch.x, loss)

    norms = batch.memo(("layer_sq_l2_unit", loss), compute)
    return _logs(norms, loss, batch.logits)


class GaussianDensity:
    """A full-covariance Gaussian on rows of a matrix: ``fit(v)``, ``neg_log_density(v)``."""

    def __init__(self, covariance: str = "ledoit-wolf") -> None:
        self.covariance = check_covariance("gradient_density", covariance)

    def fit(self, v: np.ndarray) -> "GaussianDensity":
        v = np.asarray(v, dtype=np.float64)
        self.mean_ = v.mean(0)
        self.precision_ = precision_of(v - self.mean_, self.covariance)
        sign, logdet = np.linalg.slogdet(self.precision_)
        if sign <= 0:
            raise MethodError(f"gradient_density: the fitted {self.covariance} covariance is singular (a layer's "
                              "log norm is constant on the fit set?); use covariance='ledoit-wolf'")
        self.log_norm_ = 0.5 * (v.shape[1] * np.log(2 * np.pi) - logdet)  # ½ log det(2πΣ)
        return self

    def neg_log_density(self, v) -> np.ndarray:
        d = np.asarray(v, dtype=np.float64) - self.mean_
        return 0.5 * np.einsum("bi,ij,bj->b", d, self.precision_, d) + self.log_norm_


@register("gradient_density", title="Layerwise gradient-norm density", paper="after Dauncey et al., TMLR 2024",
          year=2024,
          formula=r"u(x) = -\log \mathcal{N}\big(v(x);\, \mu, \Sigma\big),\; "
                  r"v_l = \log \lVert \nabla_{\theta_l} (-\log p_{\hat y}) \rVert_2^2",
          family="gradient", link="https://arxiv.org/abs/2403.01485",
          intuition="Each layer's gradient norm is one number; together they form a 'fingerprint' of how the "
                    "network reacts to an input. Fit a Gaussian to the fingerprints (in logs) of training images, "
                    "then ask how typical a new fingerprint is. Too-small gradients (overconfidence) are as "
                    "suspicious as too-large ones.",
          reading="The unsupervised twin of the meta classifier: no labels, no OOD data. See the Meta classifier "
                  "page for both side by side, and Layer profiles for the per-layer norms it reads. Choice "
                  "(`covariance` of the Gaussian): `ledoit-wolf` (default) or `empirical` (maximum likelihood); "
                  "the Gaussian itself is gradviz's adaptation, the paper fits none.",
          expected={"noise-uniform": "higher", "letters": "higher"},
          bounds={"fit_samples": (2, None)}, choices={"loss": tuple(sorted(LOSSES)), "covariance": COVARIANCES})
class GradientDensity:
    """−log density of the per-layer log gradient norms under a Gaussian fitted on ID training data."""

    def __init__(self, loss: str = "nll_pred", fit_samples: int = 1000, seed: int = 0,
                 covariance: str = "ledoit-wolf") -> None:
        if loss not in LOSSES:
            raise MethodError(f"gradient_density: loss must be one of {sorted(LOSSES)}, got {loss!r}")
        if int(fit_samples) < 2:
            raise MethodError(f"gradient_density: fit_samples must be >= 2, got {fit_samples}")
        self.loss, self.fit_samples, self.seed = loss, int(fit_samples), int(seed)
        self.covariance = check_covariance("gradient_density", covariance)
        self.density_: GaussianDensity | None = None

    def fit(self, model: GradvizModel, images: torch.Tensor, labels=None) -> "GradientDensity":
        """The Gaussian of the log layer norms of (a seeded subset of ``fit_samples`` of) the ID training
        ``images`` (labels unused): a Gaussian in L dimensions needs far fewer than the 4,000 digits, and
        each image costs a backward."""
        n = int(images.shape[0])
        if n > self.fit_samples:
            images = images[np.sort(np.random.default_rng(self.seed).choice(n, self.fit_samples, replace=False))]
        from gradviz.runtime.budget import batch_size_for
        from gradviz.runtime.progress import report

        step = batch_size_for(model, "gradients", "fitting gradient_density", n=int(images.shape[0]))
        total = -(-int(images.shape[0]) // step)
        parts = []
        for k, i in enumerate(range(0, int(images.shape[0]), step)):
            report(k, total)
            parts.append(fit_rows(model, images[i:i + step].to(model.device), self.loss))
        report(total, total)
        v = torch.cat(parts).numpy()
        if v.shape[0] < 2:
            raise MethodError("gradient_density needs at least 2 ID training images to fit")
        self.density_ = GaussianDensity(self.covariance).fit(v)
        return self

    def score(self, batch: ModelOutputs) -> torch.Tensor:
        """−log N(v(x); μ, Σ), (B,)."""
        density = require_fitted("gradient_density", self.density_)
        v = log_layer_norms(batch, self.loss).numpy()
        if v.shape[1] != density.mean_.shape[0]:
            raise MethodError(f"gradient_density was fitted on {density.mean_.shape[0]} layers, got {v.shape[1]}")
        return torch.from_numpy(density.neg_log_density(v)).float()
