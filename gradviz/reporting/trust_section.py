"""The report's section on selective prediction and calibration (``python -m gradviz report`` -> docs/RESULTS.md):
which scores spot misclassified digits best, on both bundled models, and how calibrated the models are."""

from __future__ import annotations

from typing import Callable

import pandas as pd

from gradviz.data import load_dataset
from gradviz.methods import list_methods
from gradviz.models import load_model
from gradviz.scoring import RunConfig, run
from gradviz.trust.selective import labelled_sets
from gradviz.runtime.store import ResultStore
from gradviz.trust.report import fit_split, trust_report

SHIFTED = ["corrupt:rotate:3", "corrupt:gaussian_noise:3"]  # covariate shift that keeps the labels
MODELS = ("mnist-cnn", "mnist-vit")
ENTROPY_LIKE = ("msp", "entropy")  # Oberdiek et al.'s baseline: does a gradient score add to these?


def _report(model_name: str, limit: int, seed: int, store: ResultStore | None, progress: Callable | None):
    model = load_model(model_name)
    cfg = RunConfig(model=model_name, id="mnist", ood=SHIFTED, methods="all", limit=limit, seed=seed)
    result = run(cfg, progress=progress, store=store, model=model)
    specs = [cfg.id, *labelled_sets(result.scores)]
    datasets = {s: load_dataset(s, model.card, limit=limit, seed=seed) for s in specs}
    return trust_report(result.scores, cfg.method_names(), model, datasets, fit_split(cfg.fit_set, model, seed),
                        store=store, seed=seed)


def _fmt(frame: pd.DataFrame) -> str:
    cols = [str(c) for c in frame.columns]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        out.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(out)


def _wide(misc: pd.DataFrame) -> pd.DataFrame:
    """Rows every method by family; per evaluation set its E-AURC and AUROC."""
    family = {m.name: m.family for m in list_methods()}
    parts = []
    for shifted, part in misc.groupby("shifted", sort=False):
        name = "ID" if not shifted else f"ID+{shifted.removeprefix('corrupt:')}"
        parts.append(part.set_index("method")[["e_aurc", "auroc"]].rename(
            columns={"e_aurc": f"{name} E-AURC↓", "auroc": f"{name} AUROC↑"}))
    wide = pd.concat(parts, axis=1)
    wide.insert(0, "family", [family.get(m, "") for m in wide.index])
    return wide.reset_index()


def _findings(misc: pd.DataFrame) -> list[str]:
    lines = []
    family = {m.name: m.family for m in list_methods()}
    for shifted, part in misc.groupby("shifted", sort=False):
        name = "the ID digits" if not shifted else f"ID + `{shifted}`"
        ranked = part.sort_values("e_aurc")
        best = ranked.iloc[0]
        base = part[part["method"].isin(ENTROPY_LIKE)].sort_values("e_aurc").iloc[0]
        grads = part[part["method"].map(family).eq("gradient")].sort_values("e_aurc")
        g = grads.iloc[0]
        ratio = g["e_aurc"] / base["e_aurc"] if base["e_aurc"] > 0 else float("nan")
        verdict = ("beats" if ratio < 0.9 else "trails" if ratio > 1.1 else "is level with (within 10 %)")
        few = " — with so few errors these differences are noise" if best["n_errors"] < 30 else ""
        lines.append(f"- On {name} ({int(best['n_errors'])} errors in {int(best['n'])}): best `{best['method']}` "
                     f"(E-AURC {best['e_aurc']:.4f}, AUROC {best['auroc']:.3f}); the best gradient score `{g['method']}` "
                     f"({g['e_aurc']:.4f}, {g['auroc']:.3f}) {verdict} the best of MSP/entropy, `{base['method']}` "
                     f"({base['e_aurc']:.4f}, {base['auroc']:.3f}){few}.")
    auroc = misc.pivot_table(index="shifted", columns="method", values="auroc", sort=False)
    if {"grad_l2", "entropy"} <= set(auroc.columns):
        pairs = "; ".join(f"{'ID' if not k else 'ID+' + k.removeprefix('corrupt:')} {r['grad_l2']:.3f} vs {r['entropy']:.3f}"
                          for k, r in auroc.iterrows())
        lines.append(f"- Oberdiek et al.'s layerwise gradient norm (`grad_l2`) against entropy, AUROC for errors: {pairs}.")
    return lines


def _pair(cal: pd.DataFrame, fit: str) -> str:
    return f"{cal.loc[fit, 'ece']:.4f} / {cal.loc[fit, 'nll']:.4f}"


def _verdict(cal: pd.DataFrame, fit: str) -> str:
    """Whether scaling helped both ECE and NLL, hurt both, or moved them apart."""
    better = [cal.loc[fit, k] < cal.loc["none", k] for k in ("ece", "nll")]
    return "better on both" if all(better) else "worse on both" if not any(better) else "mixed"


def section(limit: int, seed: int = 0, store: ResultStore | None = None, progress: Callable | None = None,
            models: tuple[str, ...] = MODELS) -> list[str]:
    """Markdown lines of the section, every number computed here."""
    lines = ["## 6. Can a prediction be trusted? Misclassification detection and calibration", "",
             f"The held-out digits ({limit} per set) alone and with each covariate-shifted copy that keeps its labels "
             f"({', '.join(f'`{s}`' for s in SHIFTED)}); each score as a detector of the model's *errors* "
             "(selective prediction: reject the most uncertain, Geifman et al. 2019). E-AURC = area under the "
             "risk–coverage curve minus the oracle's (lower is better); AUROC with errors as positives. The Trust "
             "page draws the curves; `python -m gradviz score` writes these rows into metrics.csv (`task` = "
             "`misclassification`) and calibration.csv.", ""]
    for name in models:
        report = _report(name, limit, seed, store, progress)
        cal = report.calibration
        lines += [f"### `{name}`", "", _fmt(_wide(report.misclassification)), "", *_findings(report.misclassification), "",
                  "Calibration (15 equal-width bins). `fit`: temperature fitted on the fit split `mnist:train`, which is "
                  "the model's own training set; `crossfit`: each half of the ID digits scaled by the temperature "
                  "fitted on the other half (shifted sets by the one fitted on all ID digits).", "",
                  _fmt(cal[["shifted", "temperature_fit", "temperature", "ece", "mce", "brier", "nll", "accuracy"]]
                       .assign(shifted=cal["shifted"].replace("", "ID"))), ""]
        id_cal = cal[cal["shifted"] == ""].set_index("temperature_fit")
        lines.append(f"On the ID digits ECE / NLL are {_pair(id_cal, 'none')} before scaling, {_pair(id_cal, 'fit')} with "
                     f"T = {report.temperature:.3f} from the training split ({_verdict(id_cal, 'fit')}) and "
                     f"{_pair(id_cal, 'crossfit')} cross-fitted, T ≈ {report.crossfit_all:.3f} ({_verdict(id_cal, 'crossfit')}).")
        lines.append("")
    return lines
