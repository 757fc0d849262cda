"""Single samples of a scores table and of the model: what the "Compare" and "Inspect" pages show per sample.

Everything here is plain data in, plain data out (tensors, NumPy, DataFrames), no Streamlit
(:mod:`gradviz.ui.samples` caches these calls for the pages):

- :func:`threshold_summary` — accept/reject counts at a threshold and the samples whose decision
  flips against the default threshold (:func:`gradviz.analysis.metrics.threshold_at_tpr`, the FPR95 point);
- :func:`score_range`, :func:`sample_captions` — a threshold slider's range, gallery captions;
- :func:`extremes`, :func:`rows_from_selection` — which samples to show in a gallery;
- :func:`inspect_images`, :func:`percentile_within` — a sample's scores, probabilities and its
  percentile within the ID distribution ("more uncertain than 97 % of mnist");
- :func:`compute_attributions`, :func:`attribution_panels` — original | heat map | overlay;
- :func:`gaia_channel_table`, :func:`sample_layer_profile` — GAIA's channel × layer map and one
  sample's per-layer gradient statistic for :func:`gradviz.plots.figures.layer_profile`.

Convention (as everywhere in gradviz): scores are uncertainties, higher = more uncertain; a
sample is *accepted* as in-distribution when its score is ≤ the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from gradviz.errors import GradvizError
from gradviz.methods.registry import MethodRunner, ModelOutputs, get_method, needs_graph
from gradviz.analysis.metrics import threshold_at_tpr
from gradviz.models import GradvizModel

__all__ = [
    "ThresholdSummary", "threshold_summary", "id_quantile_threshold", "score_range", "sample_captions", "extremes",
    "rows_from_selection", "percentile_within", "SampleReport", "inspect_images", "compute_attributions", "Panel",
    "attribution_panels", "gaia_channel_table", "sample_layer_profile", "display_image",
]


# --------------------------------------------------------------------------- thresholds and galleries


def _finite(values) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    return a[np.isfinite(a)]


@dataclass
class ThresholdSummary:
    """Accept/reject counts per dataset at ``threshold`` and the rows that flip vs ``default``."""

    threshold: float
    default: float
    counts: pd.DataFrame  # dataset, role, n, accepted, rejected, invalid, accepted_pct, accepted_pct_default
    flips: pd.DataFrame  # rows of the scores table whose decision differs, plus a ``change`` column


def threshold_summary(scores: pd.DataFrame, method: str, threshold: float, default: float | None = None,
                      tpr: float = 0.95) -> ThresholdSummary:
    """Counts of accepted (score ≤ threshold) and rejected samples per dataset, and the flipped rows.

    ``default`` is the reference threshold (None: :func:`gradviz.analysis.metrics.threshold_at_tpr` of the ID rows
    at ``tpr``).
    Non-finite scores are counted as ``invalid`` and never accepted or flipped.
    """
    if method not in scores.columns:
        raise GradvizError(f"no scores for method {method!r}; available: {', '.join(map(str, scores.columns))}")
    if default is None:
        default = threshold_at_tpr(scores.loc[scores["role"] == "id", method], tpr)
    s = scores[method].to_numpy(dtype=np.float64)
    valid = np.isfinite(s)
    now = valid & (s <= threshold)
    before = valid & (s <= default)
    frame = pd.DataFrame({"dataset": scores["dataset"].to_numpy(), "role": scores["role"].to_numpy(),
                          "valid": valid, "accepted": now, "before": before})
    g = frame.groupby(["dataset", "role"], sort=False)
    counts = pd.DataFrame({"n": g.size(), "accepted": g["accepted"].sum(), "valid": g["valid"].sum(),
                           "before": g["before"].sum()}).reset_index()
    counts["rejected"] = counts["valid"] - counts["accepted"]
    counts["invalid"] = counts["n"] - counts["valid"]
    denom = counts["valid"].where(counts["valid"] > 0)
    counts["accepted_pct"] = 100.0 * counts["accepted"] / denom
    counts["accepted_pct_default"] = 100.0 * counts["before"] / denom
    counts = counts[["dataset", "role", "n", "accepted", "rejected", "invalid", "accepted_pct", "accepted_pct_default"]]
    changed = now != before
    flips = scores[changed].copy()
    flips["change"] = np.where(now[changed], "now accepted", "now rejected")
    return ThresholdSummary(float(threshold), float(default), counts, flips)


def id_quantile_threshold(scores: pd.DataFrame, method: str, accept_pct: float) -> float:
    """The raw threshold that accepts (score ≤ t) at least ``accept_pct`` % of the finite ID scores: their
    ``accept_pct`` % quantile, ``numpy.quantile(..., method="inverted_cdf")`` (a score the ID set has; at 95 %
    the ROC's FPR95 operating point, :func:`gradviz.analysis.metrics.threshold_at_tpr`)."""
    if not 0.0 < float(accept_pct) <= 100.0:
        raise GradvizError(f"the share of ID to accept must be in (0, 100] %, got {accept_pct}")
    ids = _finite(scores.loc[scores["role"] == "id", method])
    if len(ids) == 0:
        raise GradvizError(f"{method} gave no finite score on the ID set: no threshold to set from it")
    return float(np.quantile(ids, float(accept_pct) / 100.0, method="inverted_cdf"))


def score_range(scores: pd.DataFrame, method: str) -> tuple[float, float]:
    """(low, high) of the finite scores of ``method`` for a threshold slider (high > low always)."""
    finite = scores[method].to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    if len(finite) == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return lo, (hi if hi > lo else lo + 1.0)


def sample_captions(rows: pd.DataFrame, method: str) -> list[str]:
    """'dataset #index · score' for each row (image galleries)."""
    return [f"{d} #{i} · {s:.3g}" for d, i, s in zip(rows["dataset"], rows["index"], rows[method])]


def extremes(scores: pd.DataFrame, method: str, k: int = 6) -> pd.DataFrame:
    """The ``k`` most and ``k`` least uncertain finite-scored rows of every dataset.

    Returns the rows of ``scores`` plus ``which`` ("most"/"least") and ``rank`` (1 = most extreme),
    grouped by dataset in table order, most uncertain first.
    """
    if k < 1:
        raise GradvizError(f"k must be at least 1, got {k}")
    parts = []
    for _, part in scores.groupby("dataset", sort=False):
        part = part[np.isfinite(part[method].to_numpy(dtype=np.float64))]
        ranked = part.sort_values(method, ascending=False, kind="stable")
        for which, sel in (("most", ranked.head(k)), ("least", ranked.iloc[::-1].head(k))):
            sel = sel.copy()
            sel["which"] = which
            sel["rank"] = np.arange(1, len(sel) + 1)
            parts.append(sel)
    return pd.concat(parts) if parts else scores.head(0).assign(which=[], rank=[])


def rows_from_selection(scores: pd.DataFrame, points: list[dict], limit: int = 48) -> pd.DataFrame:
    """Rows of ``scores`` picked on :func:`gradviz.plots.figures.score_strip` (``customdata[0]`` = row label)."""
    labels = []
    for p in points or []:
        custom = p.get("customdata") if isinstance(p, dict) else None
        if custom is None or len(custom) == 0:
            continue
        label = int(custom[0])
        if label in scores.index and label not in labels:
            labels.append(label)
    return scores.loc[labels[:limit]]


# --------------------------------------------------------------------------- one sample


def percentile_within(id_scores, values) -> np.ndarray:
    """Percent of finite ID scores strictly below each value ("more uncertain than p % of ID"); NaN for NaN."""
    ref = np.sort(_finite(id_scores))
    v = np.asarray(values, dtype=np.float64)
    if len(ref) == 0:
        return np.full(v.shape, np.nan)
    out = 100.0 * np.searchsorted(ref, v, side="left") / len(ref)
    return np.where(np.isnan(v), np.nan, out)


@dataclass
class SampleReport:
    """Prediction, probabilities and uncertainty scores of a few images (see :func:`inspect_images`)."""

    probs: np.ndarray  # (B, K) softmax probabilities
    prediction: np.ndarray  # (B,) predicted class index
    scores: pd.DataFrame  # one row per (sample, method): sample, method, score, percentile, id_median


def inspect_images(model: GradvizModel, x: torch.Tensor, runners: list[MethodRunner],
                   id_scores: pd.DataFrame | None = None, blank: dict[str, str] | None = None) -> SampleReport:
    """Score images ``x`` (B, C, H, W) in [0, 1] with every runner, in one batch.

    With ``id_scores`` (a scores table or its ID rows: one column per method) each score gets its
    percentile within the ID distribution (:func:`percentile_within`) and the ID median. ``blank``:
    methods that could not be fitted (name -> why), each given NaN rows, as in the scores table.
    """
    from gradviz.runtime.budget import batch_size_for, scoring_kind

    step = batch_size_for(model, scoring_kind(runners), "inspecting images", n=int(x.shape[0]))
    probs_parts: list[np.ndarray] = []
    raw_parts: dict[str, list[np.ndarray]] = {r.info.name: [] for r in runners}
    with model.lock:  # the shared model: no other session's hooks during these passes
        for start in range(0, int(x.shape[0]), step):  # one batch unless the memory budget says otherwise
            batch = ModelOutputs.from_model(model, x[start:start + step], keep_graph=needs_graph(runners))
            probs_parts.append(batch.probs.detach().cpu().numpy())
            for r in runners:
                raw_parts[r.info.name].append(r.score(batch).numpy().astype(np.float64))  # (b,) each
            del batch  # its graph goes before the next batch's forward
    probs = np.concatenate(probs_parts)
    raw = {name: np.concatenate(v) for name, v in raw_parts.items()}
    rows = []
    for r in runners:
        name = r.info.name
        vals = raw[name]
        ref = None
        if id_scores is not None and name in id_scores.columns:
            part = id_scores[id_scores["role"] == "id"] if "role" in id_scores.columns else id_scores
            ref = part[name].to_numpy(dtype=np.float64)
        pct = percentile_within(ref, vals) if ref is not None else np.full(len(vals), np.nan)
        med = float(np.median(_finite(ref))) if ref is not None and len(_finite(ref)) else np.nan
        for b, (v, p) in enumerate(zip(vals, pct)):
            rows.append({"sample": b, "method": name, "title": r.info.title, "score": v, "percentile": p,
                         "id_median": med})
    for name in blank or {}:
        title = get_method(name).title
        rows += [{"sample": b, "method": name, "title": title, "score": np.nan, "percentile": np.nan,
                  "id_median": np.nan} for b in range(len(probs))]
    frame = pd.DataFrame(rows, columns=["sample", "method", "title", "score", "percentile", "id_median"])
    return SampleReport(probs, probs.argmax(-1), frame)


def compute_attributions(model: GradvizModel, x: torch.Tensor, methods: list[str], target: int | None = None) -> dict:
    """{method: :class:`gradviz.explain.attributions.Attribution`} for one image ``x`` (1, C, H, W)."""
    from gradviz.explain.attributions import attribute

    return {m: attribute(model, x, m, target=target) for m in methods}


@dataclass
class Panel:
    """One attribution row for display: original | heat map | overlay, all (H', W', 3) uint8."""

    method: str
    original: np.ndarray
    heat: np.ndarray
    overlay: np.ndarray
    caption: str
    scale: np.ndarray | None = None  # the heat map's colour bar, (h, W', 3) uint8
    scale_caption: str = ""  # what its ends mean


def display_image(image: torch.Tensor, size: int = 224) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (size, ·, 3) uint8, upscaled nearest (pixels stay visible)."""
    img = image.detach().float().cpu().clamp(0, 1)
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise GradvizError(f"an image must be (C, H, W) with 1 or 3 channels; got {tuple(img.shape)}")
    h, w = img.shape[-2:]
    img = F.interpolate(img[None], size=(size, max(1, round(w * size / h))), mode="nearest")[0]
    return (img.expand(3, -1, -1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def attribution_panels(image: torch.Tensor, attributions: dict, mode: str = "absolute", cmap: str | None = None,
                       alpha: float = 0.5, size: int = 224) -> list[Panel]:
    """Render each attribution of ``image`` (C, H, W) as original | heat map | overlay."""
    from gradviz.explain.attributions import ATTRIBUTIONS, colorbar_caption, colorbar_rgb, heatmap_rgb, render_overlay

    original = display_image(image, size)
    scale, scale_caption = colorbar_rgb(mode, cmap, original.shape[1], max(8, size // 14)), colorbar_caption(mode)
    panels = []
    for name, att in attributions.items():
        m = att.maps[0]
        layer = f" (layer {att.layer})" if att.layer and att.layer not in (att.note or "") else ""
        caption = ATTRIBUTIONS[name].title + layer + (f" — {att.note}" if att.note else "")
        panels.append(Panel(name, original, heatmap_rgb(m, mode, cmap, size),
                            render_overlay(image, m, mode, cmap, alpha, size), caption, scale, scale_caption))
    return panels


def gaia_channel_table(model: GradvizModel, x: torch.Tensor, variant: str = "z") -> pd.DataFrame:
    """GAIA's abnormality of one image as a table: rows = channel, columns = hooked layer (NaN past a layer's width)."""
    from gradviz.methods.gaia import gaia_abnormality_map

    maps = gaia_abnormality_map(model, x[:1], variant=variant)
    cols = {name: pd.Series(v[0].float().cpu().numpy()) for name, v in maps.items()}
    table = pd.DataFrame(cols)
    table.index.name = "channel"
    return table


def sample_layer_profile(model: GradvizModel, x: torch.Tensor, stat: str, loss: str = "nll_pred") -> pd.Series:
    """One image's per-layer gradient statistic ``stat`` (index = layer names as in the layer table)."""
    from gradviz.engine import layer_gradient_stats

    ls = layer_gradient_stats(model, x[:1], loss=loss)
    return pd.Series(ls.get(stat)[0].double().cpu().numpy(), index=list(ls.layers), name="this sample")
