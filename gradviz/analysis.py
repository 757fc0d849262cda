"""Analyses behind the dashboard's study pages: the corruption severity sweep (Lee & AlRegib 2020)
that the Corruption lab and ``python -m gradviz report`` share, best-layer call-outs, meta-classifier
result views (Oberdiek et al. 2018), and teaching text.

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
from gradviz.store import ResultStore

__all__ = [
    "SEVERITIES", "corruption_spec", "severity_scores", "severity_metrics", "severity_sweep", "severity_examples",
    "log_scale_ok", "best_layer_stat", "meta_curves", "meta_bar_frame", "LEARN", "learn_text", "PAPERS",
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
                    params: dict[str, dict] | None = None, fit_set: str = "mnist:train", batch_size: int = 256,
                    store: ResultStore | None = None, progress: Progress | None = None,
                    loader: Callable[[str], ImageSet] | None = None, clean: pd.DataFrame | None = None) -> pd.DataFrame:
    """Scores of the clean ID set (severity 0) and its corrupted copies at ``severities`` (default 1–5).

    One row per sample, the columns of :func:`gradviz.scoring.score_dataset` plus ``severity``.
    Each set goes through the results ``store`` per method, so repeated sweeps only load data.
    ``loader(spec)`` may supply already-loaded sets (the dashboard's shared dataset cache);
    ``clean`` the clean set's scores already computed (a sweep over several corruptions scores it once).
    """
    from gradviz.scoring import score_dataset

    infos: list[MethodInfo] = resolve_methods(methods)
    if not infos:
        raise GradvizError("choose at least one method for the severity sweep")
    load = loader or (lambda spec: load_dataset(spec, model.card, limit=limit, seed=seed))

    def scores(spec: str, role: str) -> pd.DataFrame:
        return score_dataset(model, load(spec), role, infos, params=params, fit_set=fit_set, seed=seed,
                             batch_size=batch_size, store=store, progress=progress)

    frames = [(scores(id_spec, "id") if clean is None else clean).assign(severity=0)]
    frames += [scores(corruption_spec(corruption, s), "ood").assign(severity=int(s)) for s in severities]
    return pd.concat(frames, ignore_index=True)


def severity_metrics(scores: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """Clean-vs-corrupted detection metrics per method and severity -> rows (method, severity, auroc, fpr95, ...)."""
    from gradviz.metrics import summary

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
    scores = severity_scores(model, corruption, methods, limit=limit, seed=seed, store=store, progress=progress, **kwargs)
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
    """ROC points of a :class:`gradviz.meta.MetaReport` for one evaluation, keyed by a short legend label."""
    rows = report.results[report.results["evaluation"] == evaluation]
    if setting is not None:
        rows = rows[rows["setting"] == setting]
    out = {}
    for _, r in rows.iterrows():
        if r["curve"] in report.roc:
            out[f"{r['feature_set']} · {r['model']} (AUROC {r['auroc']:.3f})"] = report.roc[r["curve"]]
    return out


def meta_bar_frame(results: pd.DataFrame, setting: str | None = None) -> pd.DataFrame:
    """Meta results reshaped for :func:`gradviz.plots.metric_bars`: one bar per (feature set · model), grouped by evaluation."""
    rows = results if setting is None else results[results["setting"] == setting]
    return pd.DataFrame({"method": rows["feature_set"] + " · " + rows["model"], "ood_dataset": rows["evaluation"],
                         "auroc": rows["auroc"], "accuracy": rows["accuracy"]})


PAPERS: dict[str, tuple[str, str]] = {
    "oberdiek": ("Oberdiek, Rottmann & Gottschalk 2018 — Classification uncertainty of DNNs based on gradient information",
                 "https://arxiv.org/abs/1805.08440"),
    "lee": ("Lee & AlRegib 2020 — Gradients as a measure of uncertainty in neural networks", "https://arxiv.org/abs/2008.08030"),
    "gaia": ("Chen et al. 2023 — GAIA: gradient-based attribution abnormality for OOD detection (NeurIPS)",
             "https://arxiv.org/abs/2311.09620"),
    "gradnorm": ("Huang, Geng & Li 2021 — On the importance of gradients for detecting distributional shifts (GradNorm)",
                 "https://arxiv.org/abs/2110.00218"),
    "odin": ("Liang, Li & Srikant 2018 — ODIN: enhancing the reliability of OOD detection", "https://arxiv.org/abs/1706.02690"),
    "mahalanobis": ("Lee et al. 2018 — A simple unified framework for detecting OOD samples and adversarial attacks",
                    "https://arxiv.org/abs/1807.03888"),
    "energy": ("Liu et al. 2020 — Energy-based out-of-distribution detection", "https://arxiv.org/abs/2010.03759"),
    "msp": ("Hendrycks & Gimpel 2017 — A baseline for detecting misclassified and OOD examples",
            "https://arxiv.org/abs/1610.02136"),
}

# Teaching text per registered method: intuition, how to read its plots, and the paper key.
# Methods without an entry fall back to the registry summary (see learn_text).
LEARN: dict[str, dict[str, str]] = {
    "msp": {
        "intuition": "A confident network puts almost all probability on one class. The less it puts on its "
                     "favourite class, the more uncertain it is. No gradients, one forward pass.",
        "plots": "ID digits pile up near −1 (p_max ≈ 1). OOD sets that the model still classifies confidently "
                 "(over-confidence) overlap with them — the classic failure this baseline exposes.",
        "paper": "msp",
    },
    "maxlogit": {
        "intuition": "The largest logit before the softmax: the softmax throws away the overall scale of the "
                     "logits, the max logit keeps it. Unfamiliar inputs tend to excite no class strongly.",
        "plots": "Like MSP but on an unbounded scale; long tails are normal.",
        "paper": "msp",
    },
    "energy": {
        "intuition": "The free energy −T·logsumexp(z/T) sums the evidence of all classes. Low energy = the input "
                     "resembles training data. A smooth, scale-aware cousin of the max logit.",
        "plots": "Histograms shift right (higher energy) for OOD. Compare with MSP: energy often separates "
                 "better when the softmax saturates.",
        "paper": "energy",
    },
    "entropy": {
        "intuition": "Entropy of the whole softmax distribution: high when probability is spread over many "
                     "classes. The reference every gradient metric is compared with (Oberdiek et al.).",
        "plots": "Most ID digits sit near 0. On the Layer profiles page the correlation map shows how much of "
                 "each gradient metric is 'just entropy'.",
        "paper": "oberdiek",
    },
    "odin": {
        "intuition": "Sharpen the softmax with a large temperature and nudge the input a tiny step in the "
                     "direction that raises the prediction's confidence. ID inputs respond more than OOD ones. "
                     "Uses an input gradient (one batched backward pass).",
        "plots": "Scores crowd into a narrow band at T = 1000; what matters is the ordering, read the ROC.",
        "paper": "odin",
    },
    "mahalanobis": {
        "intuition": "Fit one Gaussian per class on penultimate features of training images (shared covariance). "
                     "An input far from every class mean, in Mahalanobis distance, is unfamiliar.",
        "plots": "Needs fitting on ID training data (done once, cached). Strong on far-OOD such as noise.",
        "paper": "mahalanobis",
    },
    "gradnorm": {
        "intuition": "Backpropagate the KL divergence between the uniform distribution and the softmax to the last "
                     "layer's weights. ID inputs give a LARGE gradient norm (the model has a lot to 'unlearn' to "
                     "become uniform); the uncertainty is its negative. Exact closed form, no backward pass.",
        "plots": "This is Huang et al. 2021's GradNorm — not the Lee & AlRegib gradients (pytorch-ood uses the "
                 "name for the latter). Strong on ImageNet-scale models, weak on CIFAR-scale benchmarks.",
        "paper": "gradnorm",
    },
    "gaia_z": {
        "intuition": "Backpropagate the max logit to every feature map and count, per channel, the non-zero "
                     "gradient entries. OOD inputs activate unusual ReLU patterns, so fewer zeros survive.",
        "plots": "No hyperparameters except which layers are hooked. Look at the Inspect page's per-layer "
                 "abnormality to see where the zeros deflate.",
        "paper": "gaia",
    },
    "gaia_a": {
        "intuition": "Channel-wise averages of feature-map gradients of the pooled features, scaled by the output "
                     "gradient. OOD inputs give abnormally large average attributions.",
        "plots": "Right-skewed for OOD; compare with GAIA-Z — they look at the same gradients differently.",
        "paper": "gaia",
    },
    "confounding": {
        "intuition": "Ask the network to predict a label it never saw — all classes at once — and measure how hard "
                     "it pushes back: the squared gradient norm of every layer, summed. No label needed.",
        "plots": "The Corruption lab reproduces the paper's corrupted-input experiment: this score should "
                 "climb with severity.",
        "paper": "lee",
    },
}
_PREFIX_PAPERS = {"grad_": "oberdiek", "oberdiek": "oberdiek", "confounding": "lee", "gaia": "gaia"}


def learn_text(info: MethodInfo) -> dict[str, str]:
    """Teaching text for a registered method: {intuition, plots, paper_title, paper_url}; falls back to the registry."""
    entry = LEARN.get(info.name)
    if entry is None:
        base = next((v for k, v in LEARN.items() if info.name.startswith(k)), None)
        entry = dict(base) if base else {}
    key = entry.get("paper") or next((p for pre, p in _PREFIX_PAPERS.items() if info.name.startswith(pre)), "")
    title, url = PAPERS.get(key, (f"{info.paper} ({info.year})", ""))
    return {
        "intuition": entry.get("intuition") or info.summary or info.title,
        "plots": entry.get("plots") or "Higher = more uncertain. Compare its histogram and ROC with the baselines.",
        "paper_title": title,
        "paper_url": url,
    }
