"""A map of the data: the head's input features (penultimate features h) of ID and OOD samples projected to 2D.

    m = build_data_map(model, scores, {"mnist": id_images, "noise-uniform": noise_images})
    m.points            # the scores rows that were mapped, plus columns "x", "y"
    m.place(model, x)   # where new images land on the same axes ("where does my image land?")
    fig = data_map_figure(m, colour="set")     # or colour="<method>": coloured by that score

PCA (scikit-learn) by default: linear, deterministic, and its axes can place any new sample exactly.
UMAP when the ``umap-learn`` package happens to be installed (gradviz does not depend on it). The
projection is fitted on the mapped samples (ID and OOD together) and kept, so a new image is
placed with the same transform. At most ``max_points`` rows are mapped (a seeded sample per
set, in proportion); above a thousand points the figure uses WebGL.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from gradviz.errors import GradvizError
from gradviz.reporting.plaintext import html_text as _plain
from gradviz.models import GradvizModel

__all__ = ["PROJECTIONS", "available_projections", "penultimate_features", "project", "DataMap", "build_data_map",
           "data_map_figure"]

PROJECTIONS = {"pca": "PCA (linear, exact placement of new samples)", "umap": "UMAP (non-linear; umap-learn)"}
MAX_POINTS = 5000
_WEBGL = 1000


def available_projections() -> list[str]:
    """The projections that can run here: PCA always, UMAP only when ``umap`` is importable."""
    return ["pca"] + (["umap"] if importlib.util.find_spec("umap") is not None else [])


def penultimate_features(model: GradvizModel, images: torch.Tensor, chunk: int = 256) -> np.ndarray:
    """The head's input h (N, D) of ``images`` (N, C, H, W), float64, in no-grad chunks."""
    out = []
    with torch.no_grad():
        for start in range(0, int(images.shape[0]), chunk):
            _, h = model.logits_and_features(images[start:start + chunk].to(model.device))
            out.append(h.detach().double().reshape(h.shape[0], -1).cpu().numpy())
    if not out:
        raise GradvizError("no images to map")
    return np.concatenate(out)


def project(features: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, Any, np.ndarray | None]:
    """(coordinates (N, 2), the fitted projector, explained-variance ratio of the two axes or None) of
    ``features`` (N, D)."""
    if method not in PROJECTIONS:
        raise GradvizError(f"unknown projection {method!r}; use one of {', '.join(PROJECTIONS)}")
    if method not in available_projections():
        raise GradvizError("UMAP needs the umap-learn package, which is not installed — use PCA "
                           "(or pip install umap-learn)")
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 3 or not np.isfinite(f).all():
        raise GradvizError(f"a map needs at least 3 samples with finite features; got shape {f.shape}")
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed).fit(f) if f.shape[1] >= 2 else None
        if pca is None:
            raise GradvizError("the features have a single dimension: nothing to project")
        return pca.transform(f), pca, pca.explained_variance_ratio_
    import umap  # optional: only when installed

    reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, f.shape[0] - 1)).fit(f)
    return np.asarray(reducer.embedding_), reducer, None


@dataclass
class DataMap:
    """Mapped samples (the score rows plus ``x``, ``y``) and the projection that placed them."""

    points: pd.DataFrame
    method: str
    projector: Any
    explained: np.ndarray | None  # PCA: fraction of the feature variance on each axis

    def place(self, model: GradvizModel, images: torch.Tensor) -> np.ndarray:
        """Coordinates (N, 2) of new ``images`` on this map (the same projection, not refitted)."""
        return np.asarray(self.projector.transform(penultimate_features(model, images)))

    def axis_titles(self) -> tuple[str, str]:
        if self.explained is None:
            return f"{self.method.upper()} 1", f"{self.method.upper()} 2"
        first, second = (f"PC {k + 1} ({100 * v:.1f} % of variance)" for k, v in enumerate(self.explained))
        return first, second


def _subsample(scores: pd.DataFrame, max_points: int, seed: int) -> pd.DataFrame:
    if len(scores) <= max_points:
        return scores
    rng = np.random.default_rng(seed)
    keep = rng.choice(len(scores), size=max_points, replace=False)
    return scores.iloc[np.sort(keep)]


def build_data_map(model: GradvizModel, scores: pd.DataFrame, images: dict[str, torch.Tensor], method: str = "pca",
                   seed: int = 0, max_points: int = MAX_POINTS) -> DataMap:
    """Project the penultimate features of the samples in ``scores`` (rows with ``dataset`` and ``index``)
    to 2D; ``images``: {dataset spec: its images}, indexed by the rows' ``index``."""
    rows = _subsample(scores, int(max_points), seed)
    missing = sorted(set(rows["dataset"]) - set(images))
    if missing:
        raise GradvizError(f"no images for the set(s) {', '.join(map(str, missing))}")
    feats, parts = [], []
    for spec, part in rows.groupby("dataset", sort=False):
        idx = torch.tensor(part["index"].to_numpy(dtype=np.int64))
        feats.append(penultimate_features(model, images[spec][idx]))
        parts.append(part)
    points = pd.concat(parts)
    coords, projector, explained = project(np.concatenate(feats), method, seed)
    points = points.assign(x=coords[:, 0], y=coords[:, 1])
    return DataMap(points, method, projector, explained)


def data_map_figure(m: DataMap, colour: str = "set", current: tuple[float, float] | None = None,
                    current_name: str = "this image") -> go.Figure:
    """The map: one point per sample, coloured by set (fixed set colours) or by a score column ``colour``;
    hover = set, index, label, prediction, score; ``customdata[0]`` = the row label (selection → rows,
    :func:`gradviz.analysis.samples.rows_from_selection`). ``current``: a star where a new image lands."""
    from gradviz.plots.figures import LAYOUT, dataset_color

    pts = m.points
    by_set = colour == "set"
    if not by_set and colour not in pts.columns:
        raise GradvizError(f"no score column {colour!r} to colour the map by")
    Scatter = go.Scattergl if len(pts) > _WEBGL else go.Scatter
    fig = go.Figure()
    score_txt = "" if by_set else f"<br>{colour}=%{{customdata[4]:.4g}}"
    for (spec, role), part in pts.groupby(["dataset", "role"], sort=False):
        value = np.zeros(len(part)) if by_set else part[colour].to_numpy(dtype=np.float64)
        custom = np.column_stack([part.index.to_numpy(), part["index"], part["label"], part["prediction"], value])
        marker = dict(size=6, opacity=0.7, color=dataset_color(spec, role)) if by_set else dict(
            size=6, opacity=0.8, color=value, coloraxis="coloraxis", symbol="circle" if role == "id" else "diamond")
        name = f"{_plain(spec)} ({str(role).upper()})"
        fig.add_trace(Scatter(x=part["x"], y=part["y"], mode="markers", name=name, customdata=custom, marker=marker,
                              hovertemplate=f"{name} #%{{customdata[1]:.0f}}<br>label %{{customdata[2]:.0f}}, "
                                            f"predicted %{{customdata[3]:.0f}}{score_txt}<extra></extra>"))
    if current is not None:
        fig.add_trace(go.Scatter(x=[current[0]], y=[current[1]], mode="markers", name=_plain(current_name),
                                 marker=dict(symbol="star", size=20, color="black",
                                             line=dict(color="white", width=1.5)),
                                 hovertemplate=f"{_plain(current_name)}<extra></extra>"))
    xt, yt = m.axis_titles()
    fig.update_layout(title=f"Penultimate features, {m.method.upper()} ({len(pts)} samples)", xaxis_title=xt,
                      yaxis_title=yt, dragmode="lasso", **LAYOUT)
    if not by_set:
        fig.update_layout(coloraxis=dict(colorscale="Viridis", colorbar=dict(title=f"{colour}<br>(uncertainty)")))
    return fig
