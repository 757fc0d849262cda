"""Analyses behind the dashboard's study pages: the corruption severity sweep (Lee & AlRegib 2020)
that the Corruption lab and ``python -m gradviz report`` share, best-layer call-outs and meta-classifier
result views (Oberdiek et al. 2018). (Each method's teaching text lives in its registration:
gradviz.methods.registry.)

Everything here is plain pandas/NumPy/torch (no Streamlit) so the pages stay thin and the
CLI or a notebook can call the same functions.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from gradviz.data import ImageSet, load_dataset
from gradviz.errors import GradvizError
from gradviz.methods.registry import MethodInfo, resolve_methods
from gradviz.models import GradvizModel
from gradviz.runtime.store import ResultStore

__all__ = [
    "SEVERITIES", "corruption_spec", "severity_scores", "severity_metrics", "severity_sweep", "severity_examples",
    "log_scale_ok", "best_layer_stat", "meta_curves", "meta_bar_frame",
]

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
Progress = Callable[[int, int, str], None]


def corruption_spec(name: str, severity: int) -> str:
    """Dataset spec of the ID test images under corruption ``name`` at ``severity`` (1–5)."""
    if int(severity) not in SEVERITIES:
        raise GradvizError(f"corruption severity must be one of {list(SEVERITIES)}, got {severity}")
    return f"corrupt:{name}:{int(severity)}"


def severity_scores(model: GradvizModel, corruption: str, methods: list[str] | str, *, id_spec: str = "mnist",
                    severities: tuple[int, ...] = SEVERITIES, limit: int | None = 500, seed: int = 0,
                    params: dict[str, dict] | None = None, fit_set: str = "mnist:train", batch_size: int | None = None,
                    store: ResultStore | None = None, progress: Progress | None = None,
                    loader: Callable[[str], ImageSet] | None = None, clean: pd.DataFrame | None = None,
                    unfitted: dict[str, str] | None = None) -> pd.DataFrame:
    """Scores of the clean ID set (severity 0) and its corrupted copies at ``severities`` (default 1–5).

    One row per sample, the columns of :func:`gradviz.scoring.score_dataset` plus ``severity``.
    Each set goes through the results ``store`` per method, so repeated sweeps only load data.
    ``loader(spec)`` may supply already-loaded sets (the dashboard's shared dataset cache);
    ``clean`` the clean set's scores already computed (a sweep over several corruptions scores it once).
    With ``unfitted`` (a dict) a fitted method that cannot be fitted on ``fit_set`` gets a NaN column
    and its reason there (as in :func:`gradviz.scoring.run`); without, the error is raised.
    """
    from gradviz.scoring import score_dataset

    infos: list[MethodInfo] = resolve_methods(methods)
    if not infos:
        raise GradvizError("choose at least one method for the severity sweep")
    load = loader or (lambda spec: load_dataset(spec, model.card, limit=limit, seed=seed))

    def scores(spec: str, role: str) -> pd.DataFrame:
        return score_dataset(model, load(spec), role, infos, params=params, fit_set=fit_set, seed=seed,
                             batch_size=batch_size, store=store, progress=progress, unfitted=unfitted)

    frames = [(scores(id_spec, "id") if clean is None else clean).assign(severity=0)]
    frames += [scores(corruption_spec(corruption, s), "ood").assign(severity=int(s)) for s in severities]
    out = pd.concat(frames, ignore_index=True)
    for name in unfitted or {}:  # blank everywhere (the clean set's column may come from a cache or ``clean``)
        if name in out.columns:
            out[name] = np.nan
    return out


def severity_metrics(scores: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """Clean-vs-corrupted detection metrics per method and severity -> rows (method, severity, auroc, fpr95, ...)."""
    from gradviz.analysis.metrics import summary

    clean = scores[scores["severity"] == 0]
    rows = []
    for m in methods:
        for severity in sorted(s for s in scores["severity"].unique() if s != 0):
            part = scores[scores["severity"] == severity]
            rows.append({"method": m, "severity": int(severity), **summary(clean[m], part[m])})
    return pd.DataFrame(rows)


def severity_sweep(model: GradvizModel, corruption: str, methods: list[str] | str, limit: int | None = 500,
                   seed: int = 0, store: ResultStore | None = None, progress: Progress | None = None,
                   **kwargs) -> pd.DataFrame:
    """Lee & AlRegib (2020) corrupted-input detection: clean ID vs ``corrupt:<name>:<s>`` for s = 1..5.

    Returns one row per (method, severity) with AUROC, FPR95, AUPR-In/Out and detection error.
    """
    scores = severity_scores(model, corruption, methods, limit=limit, seed=seed, store=store, progress=progress,
                             **kwargs)
    names = [i.name for i in resolve_methods(methods)]
    return severity_metrics(scores, names)


def severity_examples(sets: dict[int, ImageSet], index: int = 0) -> tuple[list, list[str]]:
    """The same sample at each severity: (images (C, H, W), titles), severity order."""
    images, titles = [], []
    for severity in sorted(sets):
        data = sets[severity]
        if len(data) == 0:
            continue
        images.append(data.images[min(index, len(data) - 1)])
        titles.append("clean" if severity == 0 else f"severity {severity}")
    return images, titles


def log_scale_ok(bands: pd.DataFrame) -> bool:
    """True when every band value is positive, so a log axis can show it (min/mean statistics can be ≤ 0)."""
    values = bands[["q05", "q50", "q95"]].to_numpy(dtype=float)
    return bool(np.isfinite(values).all() and (values > 0).all())


def best_layer_stat(auroc: pd.DataFrame) -> dict:
    """The (layer, stat) cell of a layer × statistic AUROC table farthest from chance (0.5).

    Returns {layer, stat, auroc, separation, direction}: direction "higher" if OOD gets the larger
    values (AUROC > 0.5), "lower" otherwise; ``separation`` = max(AUROC, 1 − AUROC).
    """
    values = auroc.to_numpy(dtype=float)
    dist = np.abs(values - 0.5)
    if not np.isfinite(dist).any():
        raise GradvizError("no finite AUROC in the layer table (too few samples per set?)")
    r, c = np.unravel_index(np.nanargmax(dist), dist.shape)
    a = float(values[r, c])
    return {"layer": str(auroc.index[r]), "stat": str(auroc.columns[c]), "auroc": a,
            "separation": max(a, 1 - a), "direction": "higher" if a >= 0.5 else "lower"}


def meta_curves(report, evaluation: str, setting: str | None = None) -> dict[str, pd.DataFrame]:
    """ROC points of a :class:`gradviz.analysis.meta.MetaReport` for one evaluation, keyed by a short legend label."""
    rows = report.results[report.results["evaluation"] == evaluation]
    if setting is not None:
        rows = rows[rows["setting"] == setting]
    out = {}
    for _, r in rows.iterrows():
        if r["curve"] in report.roc:
            out[f"{r['feature_set']} · {r['model']} (AUROC {r['auroc']:.3f})"] = report.roc[r["curve"]]
    return out


def meta_bar_frame(results: pd.DataFrame, setting: str | None = None) -> pd.DataFrame:
    """Meta results reshaped for :func:`gradviz.plots.figures.metric_bars`: one bar per (feature set · model), grouped
    by evaluation."""
    rows = results if setting is None else results[results["setting"] == setting]
    return pd.DataFrame({"method": rows["feature_set"] + " · " + rows["model"], "ood_dataset": rows["evaluation"],
                         "auroc": rows["auroc"], "accuracy": rows["accuracy"]})
