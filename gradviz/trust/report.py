"""A run's trust report: misclassification detection for every score and the model's calibration.

Shared by the CLI (``metrics.csv`` rows with ``task = misclassification``, ``calibration.csv``) and the
Trust page::

    result = run(cfg)                                   # gradviz.scoring
    report = trust_report(result, model, datasets, fit_data)
    report.misclassification   # per evaluation set × method: aurc, e_aurc, auroc, fpr95 (gradviz.trust.selective)
    report.calibration         # per evaluation set, before/after temperature: ece, mce, brier, nll
    report.temperature, report.temperature_source, report.crossfit  # fit split / ID halves

Only sets with labels take part: the ID test set and the covariate-shifted sets whose every image keeps
its label (corruptions); letters and noise have none. Logits are kept for those sets only (n × classes
float32 each), from one no-grad forward per set, cached in the results store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from gradviz.trust.calibration import (CALIBRATION_KEYS, calibration_summary, crossfit_temperatures, fit_temperature,
                                 reliability_diagram, softmax)
from gradviz.data import ImageSet, short_spec
from gradviz.errors import GradvizError
from gradviz.models import GradvizModel
from gradviz.trust.selective import (labelled_sets, misclassification_table, risk_coverage_curve,
                               selective_at_coverage)
from gradviz.runtime.store import ResultStore

__all__ = ["TrustReport", "TEMPERATURE_FITS", "trust_report", "set_logits", "metrics_with_task", "fit_split",
           "evaluation_rows", "risk_coverage_frame", "Selection", "select_at_coverage", "reliability_frames",
           "calibration_by_severity", "TEMPERATURE_FIT_LIMIT", "N_BINS"]

TEMPERATURE_FIT_LIMIT = 5000  # labelled images of the fit split the temperature is fitted on (seeded subset)
N_BINS = 15  # reliability-diagram bins (Guo et al. 2017 use 15)


# How the "after" temperature was fitted: the calibration table has one row per evaluation set and choice.
TEMPERATURE_FITS = {"none": "none (T = 1)", "fit": "fit split", "crossfit": "ID test halves (cross-fitted)"}


@dataclass
class TrustReport:
    """Misclassification metrics per method, calibration per evaluation set and temperature fit, the temperatures
    and where they were fitted; ``logits``/``labels`` of each labelled set (by spec, ID first) for the diagrams.

    Temperatures: ``temperature`` from the fit split (``temperature_source`` says where); ``crossfit`` one per ID
    row, each fitted on the other half of the ID set; ``crossfit_all`` fitted on the whole ID set, applied to
    shifted sets (never part of its fit)."""

    misclassification: pd.DataFrame
    calibration: pd.DataFrame
    temperature: float
    temperature_source: str
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    crossfit: np.ndarray | None = None
    crossfit_all: float = float("nan")

    def evaluation(self, shifted: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(logits, labels) of the ID set alone (``shifted=""``) or of ID + ``shifted``, rows as in the scores."""
        specs = [s for s in self.logits if s == self.id_spec or s == shifted]
        return np.concatenate([self.logits[s] for s in specs]), np.concatenate([self.labels[s] for s in specs])

    def temperatures(self, shifted: str = "", fit: str = "fit"):
        """The temperature of each row of :meth:`evaluation` for ``fit`` (a key of :data:`TEMPERATURE_FITS`):
        a float, or one per row for ``crossfit``."""
        if fit not in TEMPERATURE_FITS:
            raise GradvizError(f"fit must be one of {', '.join(TEMPERATURE_FITS)}, got {fit!r}")
        if fit != "crossfit":
            return 1.0 if fit == "none" else self.temperature
        if self.crossfit is None:
            raise GradvizError("too few labelled ID images to cross-fit a temperature (at least 4 are needed)")
        extra = len(self.labels[shifted]) if shifted else 0
        return np.concatenate([self.crossfit, np.full(extra, self.crossfit_all)])

    @property
    def fits(self) -> list[str]:
        """The temperature fits this report has (``crossfit`` needs 4 labelled ID images)."""
        return [f for f in TEMPERATURE_FITS if f != "crossfit" or self.crossfit is not None]

    @property
    def id_spec(self) -> str:
        return next(iter(self.logits), "")


def set_logits(model: GradvizModel, data: ImageSet, batch_size: int | None = None,
               store: ResultStore | None = None) -> np.ndarray:
    """(N, K) float32 logits of ``data``, one no-grad forward per batch (sized by the memory planner,
    ``batch_size`` an upper bound), cached in ``store``. A set already scored with that store, or just fitted on
    (the fitting forward is remembered), is not run again."""
    from gradviz.methods._fitting import remembered_outputs
    from gradviz.runtime.budget import batch_size_for
    from gradviz.scoring import images_digest, logits_key

    key = logits_key(model, images_digest(data.images))
    hit = store.get(key) if store is not None else None
    if hit is not None:
        return hit[0]["logits"]
    fitted = remembered_outputs(model, data.images)
    if fitted is not None:
        return fitted[0].numpy()
    parts = []
    batch_size = batch_size_for(model, "forward", f"logits of {data.spec}", upper=batch_size, n=max(len(data), 1))
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            parts.append(model(data.images[start:start + batch_size].to(model.device)).float().cpu().numpy())
    logits = np.concatenate(parts) if parts else np.zeros((0, model.card.num_classes), dtype=np.float32)
    if store is not None:
        store.put(key, {"logits": logits}, {"dataset": data.spec, "kind": "logits"})
    return logits


def _labelled(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows whose label is one of the model's classes."""
    y = np.asarray(labels, dtype=np.int64)
    ok = (y >= 0) & (y < logits.shape[1])
    return logits[ok], y[ok]


def _temperature(fit_logits, fit_labels, id_logits, id_labels, fit_spec: str) -> tuple[float, str]:
    if fit_logits is not None and len(fit_labels) >= 2:
        return fit_temperature(fit_logits, fit_labels), (f"fitted on {len(fit_labels):,} labelled images of the fit "
                                                         f"split {short_spec(fit_spec, 80)}")
    if len(id_labels) < 2:
        raise GradvizError("calibration needs labelled ID images: the ID set has fewer than 2 with a known class")
    return fit_temperature(id_logits, id_labels), (f"fitted on the ID test set itself ({len(id_labels):,} images; "
                                                   "no labelled fit split), so the 'after' numbers are optimistic")


def trust_report(scores: pd.DataFrame, methods: list[str], model: GradvizModel, datasets: dict[str, ImageSet],
                 fit_data: ImageSet | None = None, *, batch_size: int | None = None, store: ResultStore | None = None,
                 n_bins: int = N_BINS, strategy: str = "uniform", seed: int = 0) -> TrustReport:
    """Misclassification metrics of every method and calibration (before/after temperature scaling) of the model.

    ``scores``: a run's scores table; ``datasets``: its sets by spec (only the ID set and labelled shifted sets
    are read); ``fit_data``: the labelled split the temperature is fitted on (else the ID test set, stated in
    ``temperature_source``). Besides, a temperature cross-fitted on the ID set's two halves (``seed``): the fit
    split of the bundled models is their training set, on which T comes out too small.
    """
    if not scores.loc[scores["role"] == "id", "correct"].notna().any():
        raise GradvizError("the ID set has no labels, so no prediction can be called right or wrong: misclassification "
                           "and calibration need the true class of each ID image (choose mnist, or a folder with one "
                           "sub-folder per class)")
    misc = misclassification_table(scores, methods)
    id_spec = str(scores.loc[scores["role"] == "id", "dataset"].iloc[0])
    specs = [id_spec, *labelled_sets(scores)]
    logits, labels = {}, {}
    for spec in specs:
        z = set_logits(model, datasets[spec], batch_size, store)
        logits[spec], labels[spec] = _labelled(z, datasets[spec].labels)
    fit_z = fit_y = None
    if fit_data is not None:
        fit_z, fit_y = _labelled(set_logits(model, fit_data, batch_size, store), fit_data.labels)
    t, source = _temperature(fit_z, fit_y, logits[id_spec], labels[id_spec], fit_data.spec if fit_data else "")
    report = TrustReport(misc, pd.DataFrame(), t, source, logits, labels)
    if len(labels[id_spec]) >= 4:
        report.crossfit = crossfit_temperatures(logits[id_spec], labels[id_spec], seed)
        report.crossfit_all = fit_temperature(logits[id_spec], labels[id_spec])
    rows = []
    for shifted in ["", *specs[1:]]:
        z, y = report.evaluation(shifted)
        for fit in report.fits:
            temp = report.temperatures(shifted, fit)
            rows.append({"task": "calibration", "id_dataset": id_spec, "shifted": shifted, "temperature_fit": fit,
                         "temperature": float(np.mean(temp)), **calibration_summary(z, y, temp, n_bins, strategy),
                         "bins": f"{n_bins} {'equal-width' if strategy == 'uniform' else 'equal-mass'}"})
    report.calibration = pd.DataFrame(rows, columns=["task", "id_dataset", "shifted", "temperature_fit", "temperature",
                                                     *CALIBRATION_KEYS, "accuracy", "n", "bins"])
    return report


def metrics_with_task(ood_metrics: pd.DataFrame, misclassification: pd.DataFrame) -> pd.DataFrame:
    """One table for ``metrics.csv``: the OOD rows (``task = ood``) then the misclassification rows, a ``task``
    column first; columns one task lacks are blank."""
    ood = ood_metrics.copy()
    ood.insert(0, "task", "ood")
    return pd.concat([ood, misclassification], ignore_index=True) if len(ood) else misclassification.copy()


def fit_split(fit_spec: str, model: GradvizModel, seed: int = 0, allowed_roots=None, loader=None) -> ImageSet | None:
    """The labelled fit split for the temperature (at most :data:`TEMPERATURE_FIT_LIMIT` images), or None when it
    cannot be loaded or has no label the model knows (the ID test set is used then, and the report says so)."""
    from gradviz.data import load_dataset

    try:
        data = loader(fit_spec) if loader else load_dataset(fit_spec, model.card, limit=TEMPERATURE_FIT_LIMIT,
                                                            seed=seed, allowed_roots=allowed_roots)
    except GradvizError:  # e.g. a folder outside the allowed roots: the ID set is used, and the report says so
        return None
    labels = np.asarray(data.labels)
    return data if ((labels >= 0) & (labels < model.card.num_classes)).sum() >= 2 else None


def evaluation_rows(scores: pd.DataFrame, shifted: str = "", id_role: str = "id") -> pd.DataFrame:
    """The labelled rows of the ID set, plus those of ``shifted`` when given (an evaluation set of the report)."""
    keep = (scores["role"] == id_role) | (scores["dataset"] == shifted)
    return scores[keep & scores["correct"].notna()]


def risk_coverage_frame(rows: pd.DataFrame, method: str) -> pd.DataFrame:
    """The risk–coverage curve of ``method`` on ``rows`` beside the oracle's and a random score's (the error
    rate at every coverage): columns coverage, risk, threshold, oracle, random."""
    score = rows[method].to_numpy(dtype=np.float64)
    correct = rows["correct"].astype(bool).to_numpy()[np.isfinite(score)]
    coverage, risk, threshold = risk_coverage_curve(correct, score[np.isfinite(score)])
    _, oracle, _ = risk_coverage_curve(correct, (~correct).astype(np.float64))
    return pd.DataFrame({"coverage": coverage, "risk": risk, "threshold": threshold, "oracle": oracle,
                         "random": np.full(len(coverage), float((~correct).mean()) if len(correct) else np.nan)})


@dataclass
class Selection:
    """What accepting about ``coverage`` of the predictions does: the outcome
    (gradviz.trust.selective.selective_at_coverage), the rejected rows (most uncertain first) and the accepted rows
    that are wrong (most confident first)."""

    outcome: dict
    rejected: pd.DataFrame
    accepted_wrong: pd.DataFrame

    def sentence(self) -> str:
        """'Accept predictions whose score is at most t: 87 % of images kept, 0.4 % of them wrong'."""
        o = self.outcome
        wrong = "none kept" if not o["n_kept"] else f"{100 * o['risk']:.1f} % of them wrong ({o['n_wrong_kept']:,})"
        return (f"Accept predictions whose score is at most t = {o['threshold']:.4g}: "
                f"{100 * o['kept_share']:.1f} % of images kept ({o['n_kept']:,} of {o['n']:,}), {wrong}")


def select_at_coverage(rows: pd.DataFrame, method: str, coverage: float) -> Selection:
    """Split ``rows`` at the threshold that keeps about ``coverage`` of them (ties at it kept whole)."""
    finite = rows[np.isfinite(rows[method].to_numpy(dtype=np.float64))]
    outcome = selective_at_coverage(finite["correct"].astype(bool), finite[method], coverage)
    kept = finite[method] <= outcome["threshold"]
    rejected = finite[~kept].sort_values(method, ascending=False, kind="stable")
    wrong = finite[kept & ~finite["correct"].astype(bool)].sort_values(method, kind="stable")
    return Selection(outcome, rejected, wrong)


def reliability_frames(report: TrustReport, shifted: str = "", fit: str = "fit", n_bins: int = N_BINS,
                       strategy: str = "uniform") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reliability-diagram bins (gradviz.trust.calibration.reliability_diagram) before and after temperature scaling."""
    z, y = report.evaluation(shifted)
    out = []
    for t in (1.0, report.temperatures(shifted, fit)):
        p = softmax(z, t)
        out.append(reliability_diagram(p, p.argmax(axis=1) == y, n_bins, strategy))
    return out[0], out[1]


def calibration_by_severity(scores: pd.DataFrame, n_bins: int = N_BINS, strategy: str = "uniform") -> pd.DataFrame:
    """Per corruption severity (a sweep of gradviz.analysis.sweeps.severity_scores, 0 = clean): accuracy, mean
    confidence, ECE and MCE of the model's max-softmax confidence (before temperature scaling), and n. Unlabelled
    rows are left out."""
    from gradviz.trust.calibration import ece, mce

    rows = []
    for severity, part in scores[scores["correct"].notna()].groupby("severity", sort=True):
        conf, correct = part["confidence"].to_numpy(dtype=np.float64), part["correct"].astype(bool).to_numpy()
        rows.append({"severity": int(severity), "accuracy": float(correct.mean()), "confidence": float(conf.mean()),
                     "ece": ece(conf, correct, n_bins, strategy), "mce": mce(conf, correct, n_bins, strategy),
                     "n": len(part)})
    return pd.DataFrame(rows, columns=["severity", "accuracy", "confidence", "ece", "mce", "n"])
