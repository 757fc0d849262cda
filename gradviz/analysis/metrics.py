"""Detection metrics for uncertainty scores (scikit-learn curves and areas; no hand-written ROC).

Convention: every score is an *uncertainty* (higher = more likely OOD / misclassified).
As in the OOD literature, ID is the positive class for FPR@95 and AUPR-In (scored by
−uncertainty); OOD is the positive class for AUPR-Out. AUROC is threshold-free and the same
either way (1.0 = every OOD sample more uncertain than every ID sample, 0.5 = chance).

- FPR@95: fraction of OOD accepted (classified ID) at the first ROC threshold where at least
  95 % of ID is accepted (``fpr[argmax(tpr >= 0.95)]`` on ``roc_curve`` with
  ``drop_intermediate=False``; the OpenOOD convention, no linear interpolation). That threshold is
  :func:`threshold_at_tpr` of the ID scores alone — the dashboard's default threshold is the same
  operating point.
- Detection error: min over thresholds of 0.5·(1 − TPR) + 0.5·FPR (equal priors).

Non-finite scores (NaN, ±inf) are dropped and counted (``n_invalid``); with fewer than two
valid scores on either side the metrics are NaN — never silently poisoned.

Correct-vs-incorrect (selective prediction: risk–coverage, AURC, E-AURC) lives in :mod:`gradviz.trust.selective`,
calibration (reliability diagram, ECE, Brier, NLL, temperature scaling) in :mod:`gradviz.trust.calibration`.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from gradviz.errors import GradvizError

__all__ = [
    "auroc", "threshold_at_tpr", "fpr_at_tpr", "aupr_in", "aupr_out", "detection_error", "roc_curve_points",
    "pr_curve_points", "summary", "metrics_table", "misclassification_summary", "METRIC_KEYS",
]

METRIC_KEYS = ("auroc", "fpr95", "aupr_in", "aupr_out", "detection_error")
MIN_VALID = 2


def _clean(scores) -> tuple[np.ndarray, int]:
    """(finite scores as float64 1-D, number dropped)."""
    a = np.asarray(scores, dtype=np.float64).reshape(-1)
    ok = np.isfinite(a)
    return a[ok], int((~ok).sum())


def _prepare(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(y with ID = 1, confidence = −uncertainty, n_invalid), or None if too few valid scores."""
    i, ni = _clean(id_scores)
    o, no = _clean(ood_scores)
    if len(i) < MIN_VALID or len(o) < MIN_VALID:
        return None
    y = np.concatenate([np.ones(len(i)), np.zeros(len(o))])
    return y, -np.concatenate([i, o]), ni + no


def auroc(id_scores, ood_scores) -> float:
    """Area under the ROC curve separating OOD (more uncertain) from ID; 1.0 = perfect."""
    p = _prepare(id_scores, ood_scores)
    return math.nan if p is None else float(roc_auc_score(p[0], p[1]))


def _threshold(id_scores: np.ndarray, tpr: float) -> float:
    """The ``k``-th smallest finite ID score, ``k`` = fewest accepted samples giving a true-positive rate ≥ ``tpr``."""
    s = np.sort(id_scores)
    k = int(np.ceil((tpr - 1e-12) * len(s)))  # ID samples that must be accepted (score ≤ threshold)
    return float(s[max(k, 1) - 1])


def threshold_at_tpr(id_scores, tpr: float = 0.95) -> float:
    """The smallest uncertainty threshold that accepts (score ≤ t) at least ``tpr`` of the finite ID scores.

    The ROC operating point of :func:`fpr_at_tpr` (its first threshold with TPR ≥ ``tpr``), from the ID
    scores alone: TPR only changes at ID scores, so that threshold is the ``⌈tpr·n⌉``-th smallest of them.
    """
    if not 0.0 < tpr <= 1.0:
        raise GradvizError(f"tpr must be in (0, 1], got {tpr}")
    i, _ = _clean(id_scores)
    if len(i) == 0:
        raise GradvizError("no finite ID scores to set a threshold from")
    return _threshold(i, tpr)


def fpr_at_tpr(id_scores, ood_scores, tpr: float = 0.95) -> float:
    """Fraction of OOD accepted at the first threshold that accepts at least ``tpr`` of ID
    (:func:`threshold_at_tpr`)."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    i, _ = _clean(id_scores)
    o, _ = _clean(ood_scores)
    if len(i) < MIN_VALID or len(o) < MIN_VALID:
        return math.nan
    return float(np.mean(o <= _threshold(i, tpr)))


def aupr_in(id_scores, ood_scores) -> float:
    """Average precision with ID as the positive class (scored by −uncertainty)."""
    p = _prepare(id_scores, ood_scores)
    return math.nan if p is None else float(average_precision_score(p[0], p[1]))


def aupr_out(id_scores, ood_scores) -> float:
    """Average precision with OOD as the positive class (scored by uncertainty)."""
    p = _prepare(id_scores, ood_scores)
    return math.nan if p is None else float(average_precision_score(1 - p[0], -p[1]))


def detection_error(id_scores, ood_scores) -> float:
    """min over thresholds of 0.5·(1 − TPR) + 0.5·FPR (ID positive, equal priors)."""
    p = _prepare(id_scores, ood_scores)
    if p is None:
        return math.nan
    fpr, tpr, _ = roc_curve(p[0], p[1], drop_intermediate=False)
    return float(np.min(0.5 * (1 - tpr) + 0.5 * fpr))


def roc_curve_points(id_scores, ood_scores) -> pd.DataFrame:
    """ROC points (fpr = OOD accepted, tpr = ID accepted, threshold): a sample is accepted as ID
    when its uncertainty ≤ threshold. Empty frame when there are too few valid scores."""
    p = _prepare(id_scores, ood_scores)
    if p is None:
        return pd.DataFrame({"fpr": [], "tpr": [], "threshold": []})
    fpr, tpr, thr = roc_curve(p[0], p[1], drop_intermediate=False)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": -thr})


def pr_curve_points(id_scores, ood_scores, positive: str = "id") -> pd.DataFrame:
    """Precision-recall points (precision, recall, threshold) with ``positive`` = "id" or "ood".

    Thresholds are uncertainties: positive = ID when uncertainty ≤ threshold, positive = OOD
    when uncertainty ≥ threshold. The last point (recall 0) has no threshold (NaN).
    """
    if positive not in ("id", "ood"):
        raise ValueError(f"positive must be 'id' or 'ood', got {positive!r}")
    p = _prepare(id_scores, ood_scores)
    if p is None:
        return pd.DataFrame({"precision": [], "recall": [], "threshold": []})
    y, conf, _ = p
    if positive == "id":
        prec, rec, thr = precision_recall_curve(y, conf)
        thr = -thr
    else:
        prec, rec, thr = precision_recall_curve(1 - y, -conf)
    return pd.DataFrame({"precision": prec, "recall": rec, "threshold": np.append(thr, np.nan)})


def summary(id_scores, ood_scores) -> dict:
    """AUROC, FPR@95, AUPR-In, AUPR-Out, detection error, plus n_id, n_ood, n_invalid."""
    i, ni = _clean(id_scores)
    o, no = _clean(ood_scores)
    out = {
        "auroc": auroc(i, o), "fpr95": fpr_at_tpr(i, o, 0.95), "aupr_in": aupr_in(i, o),
        "aupr_out": aupr_out(i, o), "detection_error": detection_error(i, o),
    }
    out.update(n_id=len(i), n_ood=len(o), n_invalid=ni + no)
    return out


def misclassification_summary(scores, correct) -> dict:
    """Correct-vs-incorrect prediction detection: ``summary`` with correct samples as "ID".

    ``auroc`` treats incorrect predictions as the positive class (higher uncertainty = error);
    ``fpr95`` = fraction of errors accepted when 95 % of correct predictions are accepted;
    ``aupr_in`` = AUPR-Success, ``aupr_out`` = AUPR-Error. Adds n_correct, n_incorrect, n_invalid.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    c = np.asarray(correct).astype(bool).reshape(-1)
    if s.shape != c.shape:
        raise ValueError(f"{s.shape[0]} scores but {c.shape[0]} correctness flags")
    out = summary(s[c], s[~c])
    out["n_correct"] = out.pop("n_id")
    out["n_incorrect"] = out.pop("n_ood")
    return out


def metrics_table(scores_df: pd.DataFrame, methods: Iterable[str], id_role: str = "id") -> pd.DataFrame:
    """One row per (OOD dataset × method) from a scores table (dataset, role, …, one column per method).

    ID = all rows whose ``role`` is ``id_role``; each other dataset is one OOD set. Columns:
    ood_dataset, method, auroc, fpr95, aupr_in, aupr_out, detection_error, n_id, n_ood, n_invalid.
    """
    methods = list(methods)
    missing = [c for c in ["dataset", "role", *methods] if c not in scores_df.columns]
    if missing:
        raise ValueError(f"scores table lacks column(s) {missing}")
    is_id = scores_df["role"] == id_role
    id_rows, ood_rows = scores_df[is_id], scores_df[~is_id]
    rows = []
    for dataset, group in ood_rows.groupby("dataset", sort=False):
        for m in methods:
            rows.append({"ood_dataset": dataset, "method": m, **summary(id_rows[m].to_numpy(), group[m].to_numpy())})
    cols = ["ood_dataset", "method", *METRIC_KEYS, "n_id", "n_ood", "n_invalid"]
    return pd.DataFrame(rows, columns=cols)
