"""Selective prediction (misclassification detection): when can a prediction be trusted?

Every score is an uncertainty (higher = more uncertain), so a selective classifier *accepts* the
predictions whose score is at most a threshold and *rejects* the rest, most uncertain first.
Plain NumPy in, plain NumPy / floats out, in scikit-learn's style.

- **Risk–coverage curve** (El-Yaniv & Wiener 2010; Geifman & El-Yaniv 2017): sort the n samples by
  score, ascending; accepting the k least uncertain gives coverage k/n and selective risk
  (errors among the accepted) / k, for k = 1…n.
- **AURC** (Geifman et al. 2019, "Bias-reduced uncertainty estimation for deep neural
  classifiers", ICLR): the mean of the selective risk over the n coverages, ``(1/n) Σ_k risk(k)``.
  Lower is better; a constant (or random) score gives the error rate r.
- **E-AURC** = AURC − AURC*, where AURC* is the oracle's: every correct prediction accepted before
  any error. It removes the part of AURC that is due to the error rate alone (for large n,
  AURC* ≈ r + (1 − r) ln(1 − r)). 0 = the score ranks like the oracle.
- **Misclassification AUROC / FPR95**: the score as a detector of errors (incorrect = positive for
  AUROC); FPR95 = the share of errors accepted when 95 % of the correct predictions are accepted.
  These reuse :mod:`gradviz.analysis.metrics` (scikit-learn's ROC, no hand-written AUROC).

Ties: samples with equal scores are accepted or rejected together by a threshold, so inside a tied
group the curve takes the *expected* error count over every order of the group: accepting j of a
group of g samples holding e errors adds j·e/g errors. AURC is then the expectation over random
tie-breaking, and a constant score gives AURC = r exactly. Non-finite scores are left out (counted
in ``n_invalid`` by the tables).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gradviz.errors import GradvizError
from gradviz.analysis.metrics import MIN_VALID, fpr_at_tpr
from gradviz.analysis.metrics import auroc as _auroc

__all__ = ["risk_coverage_curve", "aurc", "oracle_aurc", "e_aurc", "misclassification_auroc", "misclassification_fpr95",
           "selective_at_coverage", "misclassification_table", "labelled_sets", "SELECTIVE_KEYS"]

SELECTIVE_KEYS = ("aurc", "e_aurc", "auroc", "fpr95")


def _pairs(correct, score) -> tuple[np.ndarray, np.ndarray]:
    """(correct as bool, score as float64), both 1-D, rows with a non-finite score dropped."""
    c = np.asarray(correct).reshape(-1)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    if c.shape != s.shape:
        raise GradvizError(f"{c.shape[0]} correctness flags but {s.shape[0]} scores: give one of each per sample")
    c = c.astype(bool)
    ok = np.isfinite(s)
    return c[ok], s[ok]


def risk_coverage_curve(correct, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coverage, risk, thresholds), one point per accepted count k = 1…n, samples sorted by score ascending.

    ``coverage[k-1] = k/n``; ``risk[k-1]`` = expected errors among the k least uncertain / k (ties
    spread evenly, see the module doc); ``thresholds[k-1]`` = the k-th smallest score (accept when
    score ≤ threshold). Empty arrays when no score is finite.
    """
    c, s = _pairs(correct, score)
    n = len(s)
    if n == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(s, kind="stable")
    s_sorted, errors = s[order], (~c[order]).astype(np.float64)
    cum = np.cumsum(errors)
    _, first, size = np.unique(s_sorted, return_index=True, return_counts=True)  # tied groups, in score order
    before = np.where(first > 0, cum[np.maximum(first - 1, 0)], 0.0)  # errors accepted before each group
    inside = cum[first + size - 1] - before  # errors within each group
    group = np.repeat(np.arange(len(first)), size)
    j = np.arange(n) - first[group] + 1  # how many of its group are accepted at each k
    k = np.arange(1, n + 1)
    expected_errors = before[group] + j * inside[group] / size[group]
    return k / n, expected_errors / k, s_sorted


def aurc(correct, score) -> float:
    """Area under the risk–coverage curve: ``(1/n) Σ_{k=1..n} risk(k)`` (Geifman et al. 2019). Lower is
    better; NaN with fewer than 2 finite scores."""
    _, risk, _ = risk_coverage_curve(correct, score)
    return float(risk.mean()) if len(risk) >= MIN_VALID else math.nan


def oracle_aurc(correct) -> float:
    """AURC of the oracle that accepts every correct prediction before any error (the best possible)."""
    c = np.asarray(correct).astype(bool).reshape(-1)
    return aurc(c, (~c).astype(np.float64))


def e_aurc(correct, score) -> float:
    """Excess AURC: ``aurc(correct, score) − oracle_aurc(correct)`` over the samples with a finite score
    (Geifman et al. 2019). 0 = oracle ranking; a random score gives about r − AURC*."""
    c, s = _pairs(correct, score)
    return aurc(c, s) - oracle_aurc(c) if len(s) >= MIN_VALID else math.nan


def misclassification_auroc(correct, score) -> float:
    """AUROC of the score as a detector of errors (incorrect = positive): the chance that a random error
    scores above a random correct prediction. NaN with fewer than 2 of either."""
    c, s = _pairs(correct, score)
    return _auroc(s[c], s[~c])


def misclassification_fpr95(correct, score) -> float:
    """Share of errors accepted (score ≤ t) at the smallest t that accepts ≥ 95 % of correct predictions."""
    c, s = _pairs(correct, score)
    return fpr_at_tpr(s[c], s[~c], 0.95)


def selective_at_coverage(correct, score, coverage: float) -> dict:
    """The outcome of accepting about ``coverage`` of the predictions, least uncertain first.

    The threshold t is the ⌈coverage·n⌉-th smallest finite score; every sample with score ≤ t is kept
    (a tie at t is kept whole, so ``kept_share`` can exceed ``coverage``). Returns threshold, n, n_kept,
    kept_share, n_wrong_kept, risk (errors among the kept, NaN when none is kept), n_rejected.
    """
    if not 0.0 <= coverage <= 1.0:
        raise GradvizError(f"coverage must lie in [0, 1], got {coverage}")
    c, s = _pairs(correct, score)
    n = len(s)
    k = int(math.ceil(coverage * n - 1e-9))
    threshold = float(np.sort(s)[k - 1]) if k > 0 else -math.inf
    kept = s <= threshold
    n_kept, wrong = int(kept.sum()), int((kept & ~c).sum())
    return {"threshold": threshold, "n": n, "n_kept": n_kept, "kept_share": n_kept / n if n else math.nan,
            "n_wrong_kept": wrong, "risk": wrong / n_kept if n_kept else math.nan, "n_rejected": n - n_kept}


def labelled_sets(scores: pd.DataFrame, id_role: str = "id") -> list[str]:
    """The non-ID datasets of a scores table whose rows all have a known label (corruptions keep the digits'
    labels; letters and noise have none): the covariate-shifted sets misclassification is measured on."""
    ood = scores[scores["role"] != id_role]
    known = ood["correct"].notna().groupby(ood["dataset"], sort=False).all()
    return [str(d) for d, ok in known.items() if ok]


def _row(part: pd.DataFrame, method: str) -> dict:
    c = part["correct"].astype(bool).to_numpy()
    s = part[method].to_numpy(dtype=np.float64)
    ok = np.isfinite(s)
    return {"aurc": aurc(c, s), "e_aurc": e_aurc(c, s), "auroc": misclassification_auroc(c, s),
            "fpr95": misclassification_fpr95(c, s), "n": int(ok.sum()), "n_errors": int((~c[ok]).sum()),
            "error_rate": float((~c[ok]).mean()) if ok.any() else math.nan, "n_invalid": int((~ok).sum())}


def misclassification_table(scores: pd.DataFrame, methods, id_role: str = "id") -> pd.DataFrame:
    """One row per (evaluation set × method) of a scores table: AURC, E-AURC, AUROC, FPR95 for detecting errors.

    Evaluation sets: the ID rows alone (``shifted`` = ""), then the ID rows plus each labelled shifted set
    (:func:`labelled_sets`; ``shifted`` = its spec). Rows with an unknown label are never used. Columns:
    task ("misclassification"), id_dataset, shifted, method, aurc, e_aurc, auroc, fpr95, n, n_errors,
    error_rate, n_invalid.
    """
    methods = list(methods)
    missing = [col for col in ["dataset", "role", "correct", *methods] if col not in scores.columns]
    if missing:
        raise GradvizError(f"scores table lacks column(s) {missing}")
    is_id = (scores["role"] == id_role) & scores["correct"].notna()
    id_rows = scores[is_id]
    id_name = str(id_rows["dataset"].iloc[0]) if len(id_rows) else ""
    groups = [("", id_rows)] + [(spec, pd.concat([id_rows, scores[scores["dataset"] == spec]]))
                                 for spec in labelled_sets(scores, id_role)]
    rows = [{"task": "misclassification", "id_dataset": id_name, "shifted": spec, "method": m, **_row(part, m)}
            for spec, part in groups for m in methods]
    cols = ["task", "id_dataset", "shifted", "method", *SELECTIVE_KEYS, "n", "n_errors", "error_rate", "n_invalid"]
    return pd.DataFrame(rows, columns=cols)
