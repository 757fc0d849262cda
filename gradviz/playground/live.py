"""The playground's fast path: score a few images against ID reference distributions computed once.

:func:`build_reference` turns what the Compare and Inspect pages already compute (the run's
scores table, the ID set's layerwise gradient table) into the small things a live page needs per
method: the sorted ID scores (for percentiles), binned ID/OOD densities (for histograms with a
marker) and per-layer 5–95 % bands of the ID set. :func:`score_batch` then scores a batch — one
drawn image, or every step of a path — with every method on ONE hooked forward (gradient
methods share its graph) and reads each sample's per-layer gradient profile from the same pass.
On the bundled model this is ~15 ms for one image, ~0.1 s for a 40-step path (2 shared cores;
``benchmarks/bench_playground.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from gradviz.errors import GradvizError
from gradviz.analysis.samples import percentile_within
from gradviz.methods.registry import MethodInfo, MethodRunner, ModelOutputs, needs_graph
from gradviz.models import GradvizModel

__all__ = ["method_family", "Reference", "build_reference", "LiveReport", "score_batch", "HIST_BINS"]

HIST_BINS = 40
LOG_SPREAD = 100.0  # positive scores spanning more than this factor are binned on a log10 axis


def method_family(info: MethodInfo) -> str:
    """The method's family for colouring: the registry's ``family`` where it has one, else its ``kind``."""
    return str(getattr(info, "family", None) or getattr(info, "kind", None) or "other")


@dataclass
class Reference:
    """What a live sample is compared with, for one run configuration (compute once, read per stroke)."""

    id_spec: str
    methods: list[str]  # registry order
    titles: dict[str, str]
    families: dict[str, str]
    id_sorted: dict[str, np.ndarray]  # finite ID scores, sorted, per method
    histograms: pd.DataFrame  # method, dataset, role, left, right, density (shared bins per method, on hist_axis)
    bands: dict[str, pd.DataFrame] = field(default_factory=dict)  # stat -> ID layer bands (gradviz.analysis.layers)
    log_axis: set[str] = field(default_factory=set)  # methods whose histogram bins log10(score)
    figure_cache: dict = field(default_factory=dict, repr=False, compare=False)  # figure parts built once (figures.py)

    def percentiles(self, method: str, values) -> np.ndarray:
        """Percent of ID samples with a lower score ("more uncertain than p % of ID")."""
        return percentile_within(self.id_sorted.get(method, np.zeros(0)), values)

    def hist_axis(self, method: str, values) -> np.ndarray:
        """Scores as placed on ``method``'s histogram axis (log10 for the methods in ``log_axis``)."""
        v = np.asarray(values, dtype=np.float64)
        if method not in self.log_axis:
            return v
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)


def _histograms(scores: pd.DataFrame, methods: list[str], nbins: int) -> tuple[pd.DataFrame, set[str]]:
    """Binned densities of every set per method (shared bins), and the methods binned on log10 scores.

    Gradient norms of noise are 10³–10⁶ × those of digits: on a linear axis every digit falls in
    the first bin. Positive scores spanning more than LOG_SPREAD are therefore binned as log10."""
    rows, log_axis = [], set()
    for m in methods:
        values = scores[m].to_numpy(dtype=np.float64)
        finite = values[np.isfinite(values)]
        if len(finite) == 0:
            continue
        if finite.min() > 0 and finite.max() / finite.min() > LOG_SPREAD:
            log_axis.add(m)
            finite = np.log10(finite)
        lo, hi = float(finite.min()), float(finite.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, nbins + 1)
        for (spec, role), part in scores.groupby(["dataset", "role"], sort=False):
            v = part[m].to_numpy(dtype=np.float64)
            v = v[np.isfinite(v) & ((v > 0) if m in log_axis else True)]
            if len(v) == 0:
                continue
            density, _ = np.histogram(np.log10(v) if m in log_axis else v, bins=edges, density=True)
            rows += [(m, spec, role, edges[i], edges[i + 1], density[i]) for i in range(nbins)]
    return pd.DataFrame(rows, columns=["method", "dataset", "role", "left", "right", "density"]), log_axis


def build_reference(scores: pd.DataFrame, infos: list[MethodInfo], id_spec: str,
                    layer_table: pd.DataFrame | None = None, nbins: int = HIST_BINS) -> Reference:
    """The reference of a run: ``scores`` = its scores table (gradviz.scoring.run), ``layer_table`` =
    the ID set's layerwise gradient table (gradviz.scoring.layer_table), or None for no bands."""
    from gradviz.analysis.layers import layer_bands

    methods = [i.name for i in infos if i.name in scores.columns]
    if not methods:
        raise GradvizError("none of the chosen methods is in the scores table")
    id_rows = scores[scores["role"] == "id"]
    id_sorted = {}
    for m in methods:
        v = id_rows[m].to_numpy(dtype=np.float64)
        id_sorted[m] = np.sort(v[np.isfinite(v)])
    bands = {}
    if layer_table is not None and len(layer_table):
        for stat in dict.fromkeys(layer_table.columns.get_level_values("stat")):
            bands[stat] = layer_bands(layer_table, stat, roles={id_spec: "id"})
    histograms, log_axis = _histograms(scores, methods, nbins)
    return Reference(id_spec, methods, {i.name: i.title for i in infos}, {i.name: method_family(i) for i in infos},
                     id_sorted, histograms, bands, log_axis)


@dataclass
class LiveReport:
    """Prediction, probabilities, every method's score and ID percentile, and per-layer gradients of a batch."""

    probs: np.ndarray  # (B, K)
    prediction: np.ndarray  # (B,)
    scores: pd.DataFrame  # one row per (sample, method): sample, method, title, family, score, percentile
    layers: pd.DataFrame | None  # one row per sample, columns (layer, stat); None when not asked or not available
    seconds: float  # server-side time of the scoring
    note: str = ""  # why ``layers`` is missing, if it is

    def wide(self, column: str = "percentile") -> pd.DataFrame:
        """``column`` as a table: one row per sample, one column per method (registry order)."""
        order = list(dict.fromkeys(self.scores["method"]))
        return self.scores.pivot(index="sample", columns="method", values=column)[order]

    def profile(self, stat: str, sample: int = 0) -> pd.Series | None:
        """One sample's per-layer gradient statistic ``stat`` (index = layer), or None."""
        if self.layers is None or stat not in self.layers.columns.get_level_values("stat"):
            return None
        return self.layers.xs(stat, axis=1, level="stat").iloc[sample].rename("this image")


def score_batch(model: GradvizModel, x: torch.Tensor, runners: list[MethodRunner], reference: Reference | None = None,
                layer_profile: bool = True) -> LiveReport:
    """Score images ``x`` (B, C, H, W) in [0, 1] with every runner on one shared forward.

    With ``reference`` each score gets its ID percentile; with ``layer_profile`` the per-sample
    layerwise gradient statistics of −log p_ŷ come from the same hooked pass (the ``grad_*``
    methods' memo, so they cost nothing more when one of them is selected).
    """
    from gradviz.methods.oberdiek import gradient_metrics

    if x.ndim != 4:
        raise GradvizError(f"images must be (B, C, H, W); got {tuple(x.shape)}")
    t0 = time.perf_counter()
    layers, note = None, ""
    from gradviz.runtime.budget import batch_size_for

    graph = layer_profile or needs_graph(runners)
    step = batch_size_for(model, "gradients" if graph else "forward", "playground", n=int(x.shape[0]))
    parts: dict[str, list] = {"probs": [], "layers": [], **{r.info.name: [] for r in runners}}
    with model.lock:  # the shared model: no other session's hooks during these passes
        for start in range(0, int(x.shape[0]), step):  # one batch unless the memory budget says otherwise
            batch = ModelOutputs.from_model(model, x[start:start + step], keep_graph=graph)
            parts["probs"].append(batch.probs.detach().cpu().numpy())
            for r in runners:
                parts[r.info.name].append(r.score(batch).numpy().astype(np.float64))  # (b,) each
            if layer_profile and not note:
                try:
                    parts["layers"].append(gradient_metrics(batch).to_frame())
                except GradvizError as exc:  # e.g. a layer kind the engine cannot read: the rest still works
                    note = f"no per-layer gradients for this model: {exc}"
            del batch
    probs = np.concatenate(parts["probs"])
    raw = {r.info.name: np.concatenate(parts[r.info.name]) for r in runners}
    if parts["layers"] and not note:
        layers = parts["layers"][0] if len(parts["layers"]) == 1 else pd.concat(parts["layers"], ignore_index=True)
    rows = []
    for r in runners:
        name = r.info.name
        pct = reference.percentiles(name, raw[name]) if reference is not None else np.full(len(raw[name]), np.nan)
        rows += [(b, name, r.info.title, method_family(r.info), v, p) for b, (v, p) in enumerate(zip(raw[name], pct))]
    frame = pd.DataFrame(rows, columns=["sample", "method", "title", "family", "score", "percentile"])
    return LiveReport(probs, probs.argmax(-1), frame, layers, time.perf_counter() - t0, note)
