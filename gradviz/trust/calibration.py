"""Calibration of a classifier's probabilities: reliability diagram, ECE, MCE, Brier score, NLL, temperature scaling.

A model is calibrated when, among the predictions made with confidence p, a share p is right.

- **Reliability diagram**: the confidences (max softmax probability) are put in bins; per bin the mean
  confidence, the accuracy and the count. ``strategy="uniform"``: M equal-width bins of [0, 1];
  ``"quantile"``: equal-mass bins, their edges the 0, 1/M, …, 1 quantiles of the confidences (as in
  scikit-learn's ``calibration_curve``; tied confidences can leave a bin empty). Bins are right-closed,
  (e_{m−1}, e_m], the first one also holding its lower edge.
- **ECE** (Naeini et al. 2015; Guo et al. 2017) = Σ_m (|B_m| / n) · |acc(B_m) − conf(B_m)|;
  **MCE** = max over non-empty bins of |acc(B_m) − conf(B_m)|.
- **Brier score** (multiclass, Brier 1950) = (1/n) Σ_i Σ_k (p_ik − y_ik)², y one-hot; in [0, 2].
- **NLL** = −(1/n) Σ_i log softmax(z_i)[y_i], from logits through ``log_softmax`` (stable for confident
  predictions, where log(softmax) would give −inf).
- **Temperature scaling** (Guo et al. 2017, "On Calibration of Modern Neural Networks", ICML): one scalar
  T > 0 divides the logits, softmax(z / T); T is fitted by minimising the NLL on labelled data with
  L-BFGS over log T (so T stays positive). It never changes a prediction, only its confidence. T belongs
  to held-out data: fitted on the images the model was trained on it comes out too small.
  :func:`crossfit_temperatures` fits it on one half of a labelled test set and applies it to the other.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from gradviz.errors import GradvizError

__all__ = ["reliability_diagram", "ece", "mce", "brier_score", "nll", "fit_temperature", "crossfit_temperatures",
           "softmax", "calibration_summary", "STRATEGIES", "CALIBRATION_KEYS"]

STRATEGIES = ("uniform", "quantile")
CALIBRATION_KEYS = ("ece", "mce", "brier", "nll")
T_MAX = 100.0  # fitted temperatures lie in [1/T_MAX, T_MAX]


def _confidence(probs_or_confidence) -> np.ndarray:
    """Max probability per sample from (n, K) probabilities, or the (n,) confidences themselves."""
    a = np.asarray(probs_or_confidence, dtype=np.float64)
    conf = a.max(axis=1) if a.ndim == 2 else a.reshape(-1)
    if len(conf) and (not np.isfinite(conf).all() or conf.min() < 0 or conf.max() > 1):
        raise GradvizError("confidences must be finite probabilities in [0, 1]")
    return conf


def reliability_diagram(probs_or_confidence, correct, n_bins: int = 15, strategy: str = "uniform") -> pd.DataFrame:
    """Per bin: lower, upper (edges), confidence (mean), accuracy (share correct), count; NaN in empty bins.

    ``probs_or_confidence``: (n, K) probabilities (their max is taken) or (n,) confidences; ``correct``:
    (n,) booleans, whether each prediction is right.
    """
    if strategy not in STRATEGIES:
        raise GradvizError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if int(n_bins) < 1:
        raise GradvizError(f"n_bins must be at least 1, got {n_bins}")
    conf = _confidence(probs_or_confidence)
    c = np.asarray(correct).astype(np.float64).reshape(-1)
    if c.shape != conf.shape:
        raise GradvizError(f"{conf.shape[0]} confidences but {c.shape[0]} correctness flags")
    if strategy == "uniform" or len(conf) == 0:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        edges = np.percentile(conf, np.linspace(0, 100, n_bins + 1))
    ids = np.searchsorted(edges[1:-1], conf)  # right-closed bins: conf == e_m falls in bin m
    count = np.bincount(ids, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(ids, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(ids, weights=c, minlength=n_bins) / count
    return pd.DataFrame({"lower": edges[:-1], "upper": edges[1:], "confidence": mean_conf, "accuracy": accuracy,
                         "count": count})


def ece(probs_or_confidence, correct, n_bins: int = 15, strategy: str = "uniform") -> float:
    """Expected calibration error: Σ_m (|B_m|/n)·|acc(B_m) − conf(B_m)| over ``strategy`` bins ("uniform" =
    equal width, "quantile" = equal mass). NaN with no sample."""
    bins = reliability_diagram(probs_or_confidence, correct, n_bins, strategy)
    n = bins["count"].sum()
    if n == 0:
        return math.nan
    used = bins[bins["count"] > 0]
    return float((used["count"] / n * (used["accuracy"] - used["confidence"]).abs()).sum())


def mce(probs_or_confidence, correct, n_bins: int = 15, strategy: str = "uniform") -> float:
    """Maximum calibration error: the largest |acc(B_m) − conf(B_m)| over the non-empty bins."""
    bins = reliability_diagram(probs_or_confidence, correct, n_bins, strategy)
    used = bins[bins["count"] > 0]
    return float((used["accuracy"] - used["confidence"]).abs().max()) if len(used) else math.nan


def _labels(labels, n: int, k: int) -> np.ndarray:
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(y) != n:
        raise GradvizError(f"{n} predictions but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= k):
        raise GradvizError(f"labels must be class indices in [0, {k}); unlabelled samples (-1) cannot be scored")
    return y


def brier_score(probs, labels) -> float:
    """Multiclass Brier score: (1/n) Σ_i Σ_k (p_ik − 1[y_i = k])², in [0, 2]; lower is better."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise GradvizError(f"probs must be (samples, classes), got shape {p.shape}")
    y = _labels(labels, p.shape[0], p.shape[1])
    if len(y) == 0:
        return math.nan
    onehot = np.eye(p.shape[1])[y]
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def _logits(logits) -> torch.Tensor:
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if z.ndim != 2:
        raise GradvizError(f"logits must be (samples, classes), got shape {tuple(z.shape)}")
    return z


def _per_row(temperature, n: int) -> torch.Tensor | float:
    """A scalar T, or one T per sample as an (n, 1) column (cross-fitted temperatures)."""
    t = np.asarray(temperature, dtype=np.float64)
    if t.ndim == 0:
        return float(t)
    if t.shape != (n,):
        raise GradvizError(f"{n} samples but {t.size} temperatures: give one, or one per sample")
    return torch.as_tensor(t).reshape(-1, 1)


def nll(logits, labels, temperature=1.0) -> float:
    """Mean negative log-likelihood −log softmax(z/T)[y], through ``log_softmax`` (never log(softmax)).
    ``temperature``: one T, or one per sample."""
    z = _logits(logits)
    y = torch.as_tensor(_labels(labels, z.shape[0], z.shape[1]))
    if len(y) == 0:
        return math.nan
    return float(F.cross_entropy(z / _per_row(temperature, len(y)), y))


def softmax(logits, temperature=1.0) -> np.ndarray:
    """softmax(z / T) as float64 NumPy; ``temperature``: one T, or one per sample."""
    z = _logits(logits)
    return torch.softmax(z / _per_row(temperature, z.shape[0]), dim=1).numpy()


def fit_temperature(logits, labels, max_iter: int = 100) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising NLL(softmax(z/T), y), by L-BFGS on log T
    (start T = 1), kept in [1/T_MAX, T_MAX]. Needs at least one labelled sample; float64 throughout."""
    z = _logits(logits)
    y = torch.as_tensor(_labels(labels, z.shape[0], z.shape[1]))
    if len(y) == 0:
        raise GradvizError("temperature scaling needs labelled samples; got none")
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")
    bound = math.log(T_MAX)  # every prediction right: the NLL falls as T -> 0, so T stops at the bound

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.clamp(-bound, bound).exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().clamp(-bound, bound).exp())
    if not math.isfinite(t) or t <= 0:
        raise GradvizError("temperature scaling did not converge (check the logits are finite)")
    return t


def crossfit_temperatures(logits, labels, seed: int = 0) -> np.ndarray:
    """One temperature per sample, fitted without it: the samples are split in two seeded halves and each half is
    scaled by the T fitted on the other (2-fold cross-fitting), so the "after" numbers are not optimistic."""
    z = np.asarray(logits)
    y = _labels(labels, z.shape[0], z.shape[1] if z.ndim == 2 else 0)
    if len(y) < 4:
        raise GradvizError(f"cross-fitting a temperature needs at least 4 labelled samples, got {len(y)}")
    order = np.random.default_rng(seed).permutation(len(y))
    halves = order[: len(y) // 2], order[len(y) // 2:]
    t = np.empty(len(y))
    t[halves[0]] = fit_temperature(z[halves[1]], y[halves[1]])
    t[halves[1]] = fit_temperature(z[halves[0]], y[halves[0]])
    return t


def calibration_summary(logits, labels, temperature=1.0, n_bins: int = 15,
                        strategy: str = "uniform") -> dict:
    """ECE, MCE, Brier, NLL and accuracy of softmax(logits / T) against ``labels``, plus n."""
    y = np.asarray(labels).reshape(-1)
    p = softmax(logits, temperature)
    correct = p.argmax(axis=1) == y
    return {"ece": ece(p, correct, n_bins, strategy), "mce": mce(p, correct, n_bins, strategy),
            "brier": brier_score(p, y), "nll": nll(logits, y, temperature),
            "accuracy": float(correct.mean()) if len(y) else math.nan, "n": int(len(y))}
