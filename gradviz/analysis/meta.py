"""Meta classifiers on layerwise gradient metrics — Oberdiek, Rottmann & Gottschalk 2018.

"Classification Uncertainty of Deep Neural Networks Based on Gradient Information"
(arXiv 1805.08440). Per sample, the six statistics (L1, L2, max, min, mean,
std) of the gradient of ℓ(x) = −log p_ŷ(x) w.r.t. each layer's weights, plus softmax
entropy and MSP, feed a small classifier (logistic regression, gradient boosting or an MLP)
that predicts either

- ``task="correct"``: is the prediction wrong? (ID samples with labels; y = 1 incorrect), or
- ``task="ood"``: is the sample out-of-distribution? (y = 1 OOD), in two settings:

  * **unknown** (always reported): no OOD sample is seen in training. The meta classifier is
    trained for correct-vs-incorrect on ID samples only, and its probability of "incorrect"
    is used as the OOD score — the paper's meta classifier "trained on ID metrics only",
    where an OOD input counts as a prediction that cannot be correct. Every OOD set is
    evaluated as ``unseen:<set>`` (held-out ID vs that set).
    Beside them, the unsupervised twin (``gradient norms · density``): a Gaussian on the per-layer
    log squared gradient norms of the ID training folds, −log density as the OOD score
    (:mod:`gradviz.methods.gradient_density`, here fitted on the table's own ID rows).
  * **known** (when ``known_ood`` names some OOD sets — "known unknowns"): trained on ID
    (y = 0) + the known sets (y = 1). Evaluated out-of-fold on the training pool (``cv``),
    per seen set (``seen:<set>``: held-out ID vs held-out samples of that set) and on every
    OOD set never seen in training (``unseen:<set>``).

Every evaluation uses held-out predictions only: out-of-fold probabilities from a
``StratifiedKFold`` (``n_splits = min(cv, minority count)``) for training-pool samples, and
the mean of the fold models' probabilities for samples outside the pool. Single-metric
baselines (``model="threshold"``: entropy or MSP thresholded) are reported beside them:
AUROC of the raw score, accuracy at the best-accuracy threshold chosen on the training folds.

The input table has one row per sample: metadata (``dataset``, ``role`` id/ood, ``correct``),
the uncertainty scores ``entropy`` and ``msp`` (higher = more uncertain, as everywhere in
gradviz), and gradient metrics as ``(layer, stat)`` MultiIndex columns or flattened
``"layer/stat"`` strings.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.inspection import permutation_importance
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import StratifiedKFold, TunedThresholdClassifierCV
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from gradviz.errors import GradvizError
from gradviz.reporting.tables import column_name, flatten_columns

__all__ = [
    "FEATURE_SETS", "MODELS", "MetaClassifier", "MetaReport", "feature_sets", "meta_report",
]

MODELS = ("logistic", "boosting", "mlp")
FEATURE_SETS = ("entropy", "msp", "gradient", "gradient+entropy", "all")
META_COLUMNS = ("dataset", "role", "index", "path", "label", "prediction", "confidence", "correct", "sample")
BASELINE_SCORES = ("entropy", "msp")
DENSITY = ("gradient norms", "density")  # (feature set, model) of the unsupervised density rows
RESULT_COLUMNS = ["task", "setting", "feature_set", "model", "evaluation", "auroc", "accuracy", "n", "n_positive",
                  "curve"]


def feature_sets(columns: Sequence) -> dict[str, list[str]]:
    """Named feature lists found in ``columns``: entropy, msp, gradient, gradient+entropy, all.

    Gradient metrics are the ``"layer/stat"`` (or ``(layer, stat)``) columns; "all" = gradient
    metrics + entropy + MSP. Sets whose columns are absent are left out.
    """
    names = [column_name(c) for c in columns]
    gradient = [c for c in names if "/" in c and c not in META_COLUMNS]
    sets = {
        "entropy": [c for c in names if c == "entropy"],
        "msp": [c for c in names if c == "msp"],
        "gradient": gradient,
    }
    sets["gradient+entropy"] = gradient + sets["entropy"] if gradient and sets["entropy"] else []
    sets["all"] = gradient + sets["entropy"] + sets["msp"]
    return {k: v for k, v in sets.items() if v}


def _make_estimator(model: str, seed: int):
    if model == "logistic":
        clf = LogisticRegression(max_iter=2000)
    elif model == "boosting":
        clf = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
    elif model == "mlp":
        # lbfgs: scikit-learn's advice for small tables (fast, deterministic given the seed)
        clf = MLPClassifier(hidden_layer_sizes=(32,), solver="lbfgs", alpha=1e-3, max_iter=200, random_state=seed)
    else:
        raise GradvizError(f"unknown meta classifier {model!r}; choose from {', '.join(MODELS)}")
    return Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler()), ("clf", clf)])


def _single_thread():
    """Meta tables are small: BLAS and OpenMP threads cost more than they gain
    (measured on 2 busy cores: boosting 300 × 7 0.08 s vs 0.5–7 s, MLP 190 × 5 0.6 s vs 6.7 s)."""
    return threadpool_limits(1)


def _as_frame(X) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        return flatten_columns(X)
    a = np.asarray(X, dtype=float)
    if a.ndim != 2:
        raise GradvizError(f"features must be a 2-D table (samples × features); got shape {a.shape}")
    return pd.DataFrame(a, columns=[f"x{i}" for i in range(a.shape[1])])


def _numeric(frame: pd.DataFrame) -> np.ndarray:
    a = np.array(frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float, na_value=np.nan), dtype=float)
    a[~np.isfinite(a)] = np.nan
    return a


def _binary_labels(y) -> np.ndarray:
    a = np.asarray(pd.Series(y).astype("float").to_numpy(), dtype=float)
    if np.isnan(a).any() or not np.isin(a, (0.0, 1.0)).all():
        raise GradvizError("meta classifier labels must be 0/1 (or booleans) without missing values")
    return a.astype(int)


class MetaClassifier:
    """A meta classifier: impute (median) → standardise → logistic / boosting / MLP (scikit-learn).

    ``features`` is a feature-set name (see :func:`feature_sets`) or a list of columns. At
    ``fit`` all-NaN and constant columns are dropped (``columns_`` keeps the rest).
    """

    def __init__(self, features: list[str] | str = "all", model: str = "logistic", cv: int = 5, seed: int = 0) -> None:
        if model not in MODELS:
            raise GradvizError(f"unknown meta classifier {model!r}; choose from {', '.join(MODELS)}")
        self.features = features
        self.model = model
        self.cv = cv
        self.seed = seed

    def _select(self, X) -> pd.DataFrame:
        frame = _as_frame(X)
        if isinstance(self.features, str):
            if not isinstance(X, pd.DataFrame) and self.features == "all":
                return frame
            sets = feature_sets(frame.columns)
            if self.features not in sets:
                raise GradvizError(
                    f"feature set {self.features!r} has no columns in this table; available: "
                    f"{', '.join(sets) or 'none'}"
                )
            cols = sets[self.features]
        else:
            cols = list(self.features)
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise GradvizError(f"feature column(s) missing from the table: {missing[:5]}")
        return frame[cols]

    def fit(self, X, y) -> "MetaClassifier":
        """Fit on features ``X`` (DataFrame or array) and 0/1 labels ``y``."""
        frame = self._select(X)
        y = _binary_labels(y)
        if len(np.unique(y)) < 2:
            raise GradvizError("the meta classifier needs samples of both classes to train")
        a = _numeric(frame)
        keep = [i for i in range(a.shape[1]) if np.isfinite(a[:, i]).any() and np.nanstd(a[:, i]) > 0]
        if not keep:
            raise GradvizError("every feature column is empty (all NaN) or constant; nothing to learn from")
        self.columns_ = [frame.columns[i] for i in keep]
        self.pipeline_ = _make_estimator(self.model, self.seed)
        with warnings.catch_warnings(), _single_thread():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.pipeline_.fit(a[:, keep], y)
        return self

    def _matrix(self, X) -> np.ndarray:
        if not hasattr(self, "pipeline_"):
            raise GradvizError("the meta classifier is not fitted yet; call fit(X, y) first")
        frame = _as_frame(X)
        if not isinstance(X, pd.DataFrame):
            frame = self._select(X)
        return _numeric(frame[self.columns_])

    def predict_proba(self, X) -> np.ndarray:
        """(n, 2) probabilities of class 0 and class 1."""
        a = self._matrix(X)
        with _single_thread():
            return self.pipeline_.predict_proba(a)

    def uncertainty(self, X) -> np.ndarray:
        """Probability of class 1 (incorrect / OOD): the meta classifier's uncertainty score."""
        return self.predict_proba(X)[:, 1]

    def predict(self, X) -> np.ndarray:
        """0/1 predictions at probability 0.5."""
        return (self.uncertainty(X) > 0.5).astype(int)

    def score(self, X, y) -> float:
        """Accuracy (as scikit-learn's ``score``)."""
        return float((self.predict(X) == _binary_labels(y)).mean())

    def cross_val_proba(self, X, y) -> np.ndarray:
        """Out-of-fold probability of class 1 with ``StratifiedKFold(min(cv, minority count))``."""
        y = _binary_labels(y)
        frame = _as_frame(X)
        out = np.empty(len(y))
        for train, test in _folds(y, self.cv, self.seed, "class 1"):
            est = MetaClassifier(self.features, self.model, self.cv, self.seed).fit(frame.iloc[train], y[train])
            out[test] = est.uncertainty(frame.iloc[test])
        return out

    def importances(self, X=None, y=None) -> pd.DataFrame:
        """Feature importance (feature, importance): |coef| of the standardised logistic
        regression, else permutation importance (AUROC drop) on ``X, y``."""
        if not hasattr(self, "pipeline_"):
            raise GradvizError("the meta classifier is not fitted yet; call fit(X, y) first")
        if self.model == "logistic":
            values = np.abs(self.pipeline_.named_steps["clf"].coef_[0])
        else:
            if X is None or y is None:
                raise GradvizError("permutation importance needs the data (X, y)")
            with _single_thread():
                res = permutation_importance(
                    self.pipeline_, self._matrix(X), _binary_labels(y), scoring="roc_auc", n_repeats=5,
                    random_state=self.seed,
                )
            values = res.importances_mean
        names = [str(c) for c in self.columns_]
        out = pd.DataFrame({
            "feature": names,
            "importance": values,
            "layer": [n.rsplit("/", 1)[0] for n in names],
            "stat": [n.rsplit("/", 1)[1] if "/" in n else "" for n in names],
        })
        return out.sort_values("importance", ascending=False, ignore_index=True)


def _folds(y: np.ndarray, cv: int, seed: int, what: str) -> list[tuple[np.ndarray, np.ndarray]]:
    counts = np.bincount(y, minlength=2)
    minority = int(counts.min())
    if minority < 2:
        raise GradvizError(
            f"too few samples for a cross-validated meta classifier: {counts[1]} {what} vs {counts[0]} others "
            f"(each class needs at least 2). Score more samples, or use a harder data set / weaker model"
        )
    splitter = StratifiedKFold(n_splits=max(2, min(int(cv), minority)), shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y))


# --------------------------------------------------------------------------- report


@dataclass
class MetaReport:
    """Results of :func:`meta_report`: compute once, plot many times."""

    results: pd.DataFrame  # columns RESULT_COLUMNS, one row per (setting, feature set, model, evaluation)
    roc: dict[str, pd.DataFrame]  # curve key (results["curve"]) -> DataFrame(fpr, tpr, threshold)
    feature_importances: pd.DataFrame  # feature, importance, layer, stat (descending)
    importance_for: str = ""  # which classifier the importances belong to
    notes: list[str] = field(default_factory=list)



class _ScoreColumn(ClassifierMixin, BaseEstimator):
    """A fixed 'classifier' whose decision function is the single score column itself (nothing to learn)."""

    def fit(self, X, y=None) -> "_ScoreColumn":
        self.classes_ = np.array([0, 1])
        return self

    def decision_function(self, X) -> np.ndarray:
        return np.asarray(X, dtype=float)[:, 0]


MAX_THRESHOLDS = 2048  # candidate thresholds: every distinct training score, or this many quantiles of them


class _Threshold:
    """Single-score baseline: uncertainty itself as the score, best-accuracy threshold from training
    (scikit-learn's ``TunedThresholdClassifierCV`` on the training scores; predict positive where score ≥ it)."""

    def __init__(self, column: str) -> None:
        self.column = column

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> "_Threshold":
        s = _numeric(X[[self.column]])
        s = np.where(np.isfinite(s), s, np.nanmedian(s))
        cand = np.unique(s) if len(np.unique(s)) <= MAX_THRESHOLDS else np.unique(
            np.quantile(s, np.linspace(0, 1, MAX_THRESHOLDS + 1)))
        self.tuned_ = TunedThresholdClassifierCV(_ScoreColumn().fit(s, y), scoring="accuracy", cv="prefit",
                                                 refit=False, thresholds=np.append(cand, np.inf)).fit(s, y)
        return self

    def score_pred(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        s = _numeric(X[[self.column]])
        return s[:, 0], self.tuned_.predict(s).astype(float)


class _Meta:
    """Adapter: MetaClassifier with the (score, prediction) interface of :class:`_Threshold`."""

    def __init__(self, columns: list[str], model: str, seed: int) -> None:
        self.inner = MetaClassifier(columns, model, seed=seed)

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> "_Meta":
        self.inner.fit(X, y)
        return self

    def score_pred(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        p = self.inner.uncertainty(X)
        return p, (p > 0.5).astype(float)


class _Density:
    """Unsupervised twin of the meta classifier (gradviz.methods.gradient_density): a Gaussian on the per-layer log
    squared gradient norms (the table's ``layer/l2`` columns) of the training rows, labels unused; the score is
    the negative log density, the prediction "OOD" above the 95th percentile of the training rows' scores."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = columns

    def _logs(self, X: pd.DataFrame) -> np.ndarray:
        l2 = np.nan_to_num(_numeric(X[self.columns]), nan=0.0)
        return 2 * np.log(np.maximum(l2, np.finfo(np.float32).tiny))

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> "_Density":
        from gradviz.methods.gradient_density import GaussianDensity

        v = self._logs(X)
        self.density_ = GaussianDensity().fit(v)
        self.threshold_ = float(np.quantile(self.density_.neg_log_density(v), 0.95))
        return self

    def score_pred(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        s = self.density_.neg_log_density(self._logs(X))
        return s, (s > self.threshold_).astype(float)


_Estimator = _Threshold | _Meta | _Density  # fit(X, y) -> self, then scores and predictions


def _held_out(make: Callable[[], _Estimator], X: pd.DataFrame, y: np.ndarray, outside: pd.DataFrame | None,
              folds) -> tuple:
    """Out-of-fold (score, pred) on X, fold-averaged (score, pred) on ``outside``."""
    score, pred = np.full(len(y), np.nan), np.full(len(y), np.nan)
    o_score = np.zeros(0 if outside is None else len(outside))
    o_pred = np.zeros_like(o_score)
    for train, test in folds:
        est = make().fit(X.iloc[train], y[train])
        score[test], pred[test] = est.score_pred(X.iloc[test])
        if outside is not None and len(outside):
            s, p = est.score_pred(outside)
            o_score += s / len(folds)
            o_pred += p / len(folds)
    return score, pred, o_score, (o_pred >= 0.5).astype(float)


def _row_metrics(y: np.ndarray, score: np.ndarray, pred: np.ndarray) -> tuple[float, float, pd.DataFrame | None]:
    ok = np.isfinite(score)
    y, score, pred = y[ok], score[ok], pred[ok]
    acc = float((pred == y).mean()) if len(y) else float("nan")
    if len(np.unique(y)) < 2:
        return float("nan"), acc, None
    fpr, tpr, thr = roc_curve(y, score)
    return float(roc_auc_score(y, score)), acc, pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr})


def _prepare_table(table: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame) or table.empty:
        raise GradvizError("the meta classifier needs a non-empty table (one row per sample)")
    t = flatten_columns(table).reset_index(drop=True)
    if t.columns.duplicated().any():
        raise GradvizError(f"duplicate columns in the table: {sorted(set(t.columns[t.columns.duplicated()]))[:5]}")
    return t


def _id_rows(t: pd.DataFrame) -> pd.Series:
    if "role" not in t.columns:
        return pd.Series(True, index=t.index)
    return t["role"].astype(str).str.lower().eq("id")


def _correct_labels(t: pd.DataFrame, mask: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Rows of ``mask`` with a known ``correct`` value, and y = 1 for incorrect."""
    if "correct" not in t.columns:
        raise GradvizError("task 'correct' needs a 'correct' column (true/false per ID sample)")
    correct = t["correct"].astype("boolean")
    rows = mask & correct.notna()
    if not rows.any():
        raise GradvizError("no ID sample has a known label, so correct-vs-incorrect cannot be learned")
    return rows, (~correct[rows].astype(bool)).to_numpy().astype(int)


def meta_report(
    table: pd.DataFrame,
    task: str = "correct",
    known_ood: list[str] | None = None,
    feature_set: str | Sequence[str] | None = None,
    model: str | Sequence[str] = "logistic",
    cv: int = 5,
    seed: int = 0,
) -> MetaReport:
    """Cross-validated meta classification (Oberdiek et al. 2018) with threshold baselines.

    ``feature_set`` None compares every available set (entropy, msp, gradient,
    gradient+entropy, all). ``model`` is one name or several. See the module docstring for
    the settings (unknown / known) and evaluations (cv, seen:<set>, unseen:<set>).
    """
    if task not in ("correct", "ood"):
        raise GradvizError(f"unknown task {task!r}; use 'correct' (misclassification) or 'ood'")
    t = _prepare_table(table)
    available = feature_sets(t.columns)
    if feature_set is None:
        chosen = list(available)
    else:
        chosen = [feature_set] if isinstance(feature_set, str) else list(feature_set)
        bad = [f for f in chosen if f not in available]
        if bad:
            raise GradvizError(f"feature set(s) {bad} not available in this table; available: "
                               f"{', '.join(available) or 'none'}")
    if not chosen:
        raise GradvizError("the table has no feature columns (entropy, msp or 'layer/stat' gradient metrics)")
    models = [model] if isinstance(model, str) else list(model)
    for m in models:
        if m not in MODELS:
            raise GradvizError(f"unknown meta classifier {m!r}; choose from {', '.join(MODELS)}")
    if int(cv) < 2:
        raise GradvizError("cv must be at least 2 folds")

    # Each candidate: (feature set, model name, factory of a fresh estimator)
    candidates: list[tuple[str, str, Callable[[], _Estimator]]] = [
        (fs, m, partial(_Meta, available[fs], m, seed)) for fs in chosen for m in models]
    candidates += [(b, "threshold", partial(_Threshold, b)) for b in BASELINE_SCORES if b in available]

    rows: list[dict] = []
    roc: dict[str, pd.DataFrame] = {}

    def add(setting: str, fs: str, m: str, evaluation: str, y: np.ndarray, score: np.ndarray, pred: np.ndarray) -> None:
        auroc, acc, curve = _row_metrics(y, score, pred)
        key = f"{task} · {setting} · {fs} · {m} · {evaluation}"
        if curve is not None:
            roc[key] = curve
        rows.append(dict(task=task, setting=setting, feature_set=fs, model=m, evaluation=evaluation, auroc=auroc,
                         accuracy=acc, n=int(len(y)), n_positive=int(y.sum()), curve=key))

    is_id = _id_rows(t)
    id_rows, y_id = _correct_labels(t, is_id)
    notes: list[str] = []

    if task == "correct":
        X = t[id_rows]
        folds = _folds(y_id, cv, seed, "incorrect predictions")
        notes.append(f"{len(X)} ID samples, {int(y_id.sum())} incorrect; {len(folds)}-fold stratified CV")
        for fs, m, make in candidates:
            score, pred, _, _ = _held_out(make, X, y_id, None, folds)
            add("id", fs, m, "cv", y_id, score, pred)
        imp_X, imp_y, imp_for = X, y_id, "correct-vs-incorrect on ID"
    else:
        ood = t[~is_id]
        if ood.empty:
            raise GradvizError("task 'ood' needs OOD rows (role = 'ood') in the table")
        if "dataset" not in t.columns:
            raise GradvizError("task 'ood' needs a 'dataset' column naming each sample's set")
        sets = list(dict.fromkeys(ood["dataset"].astype(str)))
        known = list(dict.fromkeys(known_ood or []))
        bad = [k for k in known if k not in sets]
        if bad:
            raise GradvizError(f"known OOD set(s) {bad} are not in the table; OOD sets: {', '.join(sets)}")
        ood_name = ood["dataset"].astype(str)
        id_all = t[is_id]

        # unknown: correct-vs-incorrect on ID only, applied as an OOD score
        X_id = t[id_rows]
        folds = _folds(y_id, cv, seed, "incorrect ID predictions")
        outside = pd.concat([ood, id_all[~id_rows[is_id]]])  # OOD + unlabeled ID rows
        notes.append(f"unknown setting: trained correct-vs-incorrect on {len(X_id)} ID samples "
                     f"({int(y_id.sum())} incorrect), {len(folds)} folds; OOD never seen")
        n_ood = len(ood)
        l2 = [c for c in available.get("gradient", []) if c.endswith("/l2")]
        density: list[tuple[str, str, Callable[[], _Estimator]]] = \
            [(DENSITY[0], DENSITY[1], lambda: _Density(l2))] if l2 else []
        if density:
            notes.append("unknown setting also shows the unsupervised twin: a Gaussian density of the per-layer log "
                         "gradient norms of the ID training folds (no labels, no OOD), −log density as the score")
        for fs, m, make in candidates + density:
            score, pred, o_score, o_pred = _held_out(make, X_id, y_id, outside, folds)
            id_score, id_pred = score, pred
            extra_id = slice(n_ood, None)  # unlabeled ID rows scored by the fold models
            id_score = np.concatenate([id_score, o_score[extra_id]])
            id_pred = np.concatenate([id_pred, o_pred[extra_id]])
            for name in sets:
                sel = (ood_name == name).to_numpy()
                s, p = o_score[:n_ood][sel], o_pred[:n_ood][sel]
                y = np.concatenate([np.zeros(len(id_score)), np.ones(len(s))])
                add("unknown", fs, m, f"unseen:{name}", y, np.concatenate([id_score, s]), np.concatenate([id_pred, p]))
            y = np.concatenate([np.zeros(len(id_score)), np.ones(n_ood)])
            add("unknown", fs, m, "unseen:all", y, np.concatenate([id_score, o_score[:n_ood]]),
                np.concatenate([id_pred, o_pred[:n_ood]]))
        imp_X, imp_y, imp_for = X_id, y_id, "unknown setting: correct-vs-incorrect on ID"

        if known:
            seen = ood_name.isin(known).to_numpy()
            pool = pd.concat([id_all, ood[seen]])
            y_pool = np.concatenate([np.zeros(len(id_all), dtype=int), np.ones(int(seen.sum()), dtype=int)])
            pool_names = np.concatenate([np.full(len(id_all), ""), ood_name[seen].to_numpy()])
            unseen = ood[~seen]
            unseen_names = ood_name[~seen].to_numpy()
            folds = _folds(y_pool, cv, seed, "known OOD samples")
            notes.append(f"known setting: trained on {len(id_all)} ID + {int(seen.sum())} OOD samples of "
                         f"{', '.join(known)}; {len(folds)} folds; "
                         f"unseen: {', '.join(sorted(set(unseen_names))) or 'none'}")
            for fs, m, make in candidates:
                score, pred, o_score, o_pred = _held_out(make, pool, y_pool, unseen, folds)
                add("known", fs, m, "cv", y_pool, score, pred)
                id_sel = y_pool == 0
                for name in known:
                    sel = id_sel | (pool_names == name)
                    add("known", fs, m, f"seen:{name}", y_pool[sel], score[sel], pred[sel])
                for name in dict.fromkeys(unseen_names):
                    sel = unseen_names == name
                    y = np.concatenate([np.zeros(int(id_sel.sum())), np.ones(int(sel.sum()))])
                    add("known", fs, m, f"unseen:{name}", y, np.concatenate([score[id_sel], o_score[sel]]),
                        np.concatenate([pred[id_sel], o_pred[sel]]))
            imp_X, imp_y, imp_for = pool, y_pool, f"known setting: ID vs {', '.join(known)}"

    results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    # importances of the richest meta classifier (first model), fitted on all training data
    rich = max((fs for fs in chosen), key=lambda fs: len(available[fs]))
    clf = MetaClassifier(available[rich], models[0], cv=cv, seed=seed).fit(imp_X, imp_y)
    importances = clf.importances(imp_X, imp_y)
    return MetaReport(results, roc, importances, f"{models[0]} on '{rich}' — {imp_for}", notes)
