"""Plotly figure builders shared by the pages and the exports: data in, ``go.Figure`` out.

Colours are fixed per dataset everywhere (ID blue; each OOD set its own colour), and
per method, so a set or a method looks the same on every page and in every export.

Every name drawn (dataset, class, file, layer, model names and titles built from them) goes
through :func:`gradviz.plaintext.html_text`: Plotly renders HTML in its text, and a class named
``<a href=...>`` must read as written, not become a link.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gradviz.plaintext import html_text as _h

ID_COLOR = "#1f77b4"
OOD_PALETTE = ["#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
_KNOWN = {"letters": "#ff7f0e", "noise-uniform": "#d62728", "noise-gaussian": "#9467bd"}
METHOD_PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6",
                  "#9d755d", "#bab0ac", "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#a6761d"]
WEBGL_THRESHOLD = 1000
# Curves are drawn with at most this many points (evenly spaced along the curve): at dashboard
# size the difference is under a pixel, and 15 methods × 2,000 raw ROC points made the browser
# parse and draw ~0.8 MB per figure.
CURVE_POINTS = 300
LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=50, b=45), legend=dict(orientation="h", y=-0.2))


def dataset_color(spec: str, role: str = "ood") -> str:
    """The colour of a dataset on every page: ID blue, known OOD sets fixed, others hashed."""
    if role == "id":
        return ID_COLOR
    if spec in _KNOWN:
        return _KNOWN[spec]
    free = [c for c in OOD_PALETTE if c not in _KNOWN.values()]  # never look like a known set
    h = int(hashlib.md5(spec.encode()).hexdigest(), 16)
    return free[h % len(free)]


def method_color(name: str, order: list[str] | None = None) -> str:
    """A method's colour (by its position in ``order`` — the registry order — else hashed)."""
    if order and name in order:
        return METHOD_PALETTE[order.index(name) % len(METHOD_PALETTE)]
    return METHOD_PALETTE[int(hashlib.md5(name.encode()).hexdigest(), 16) % len(METHOD_PALETTE)]


def _finite(a) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    return a[np.isfinite(a)]


def _shared_bins(values, nbins: int) -> tuple[float, float, float] | None:
    """(start, end, width) of ``nbins`` bins over the finite values, shared by every trace; None if none."""
    vals = _finite(values)
    if len(vals) == 0:
        return None
    lo, hi = float(vals.min()), float(vals.max())
    return lo, hi, (hi - lo) / nbins if hi > lo else 1.0


def score_histogram(scores: pd.DataFrame, method: str, title: str | None = None, nbins: int = 50) -> go.Figure:
    """Overlaid score densities of every dataset in ``scores`` (shared bins, density, opacity .55).

    Each bar's ``customdata`` is unused; use :func:`score_strip` for per-sample selection.
    """
    fig = go.Figure()
    bins = _shared_bins(scores[method], nbins)
    if bins is None:
        return fig.update_layout(title=f"{method}: no finite scores", **LAYOUT)
    lo, hi, size = bins
    for (spec, role), part in scores.groupby(["dataset", "role"], sort=False):
        fig.add_trace(go.Histogram(
            x=part[method], name=f"{_h(spec)} ({role.upper()})", histnorm="probability density", opacity=0.55,
            marker_color=dataset_color(spec, role), xbins=dict(start=lo, end=hi + size, size=size),
            hovertemplate=f"{_h(spec)}<br>{method}=%{{x}}<br>density=%{{y:.3g}}<extra></extra>",
        ))
    fig.update_layout(barmode="overlay", title=_h(title) if title else f"{method}: uncertainty by dataset",
                      xaxis_title=f"{method} uncertainty (higher = more uncertain)", yaxis_title="density", **LAYOUT)
    return fig


def score_strip(scores: pd.DataFrame, method: str, threshold: float | None = None) -> go.Figure:
    """One point per sample (x = score, y = dataset, jittered); selectable, ``customdata`` = row id.

    ``customdata`` holds [row, index, label, prediction] (numbers only: the dataset is the trace
    name), so a selection maps back to rows and the figure stays light for thousands of points.
    """
    fig = go.Figure()
    rng = np.random.default_rng(0)
    order = list(dict.fromkeys(scores["dataset"]))
    big = len(scores) > WEBGL_THRESHOLD
    Scatter = go.Scattergl if big else go.Scatter
    for (spec, role), part in scores.groupby(["dataset", "role"], sort=False):
        y = order.index(spec) + rng.uniform(-0.3, 0.3, len(part))
        custom = np.stack([part.index.to_numpy(), part["index"], part["label"], part["prediction"]], axis=1).astype(np.int64)
        fig.add_trace(Scatter(
            x=part[method].to_numpy(dtype=np.float32), y=y.astype(np.float32), mode="markers",
            name=f"{_h(spec)} ({role.upper()})", customdata=custom,
            marker=dict(color=dataset_color(spec, role), size=5, opacity=0.6),
            hovertemplate=f"{_h(spec)} #%{{customdata[1]}}<br>label %{{customdata[2]}}, predicted %{{customdata[3]}}"
                          f"<br>{method}=%{{x:.4g}}<extra></extra>",
        ))
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", line_color="black", annotation_text="threshold")
    fig.update_layout(title=f"{method}: every sample (select points to inspect them)", xaxis_title=f"{method} uncertainty",
                      yaxis=dict(tickvals=list(range(len(order))), ticktext=[_h(o) for o in order]), dragmode="select", **LAYOUT)
    return fig


def thin_curve(x, y, n: int = CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``n`` points of the polyline (x, y), evenly spaced by arc length, ends kept."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) <= n:
        return x, y
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    idx = np.unique(np.searchsorted(arc, np.linspace(0.0, arc[-1], n)).clip(0, len(x) - 1))
    idx = np.unique(np.concatenate([[0], idx, [len(x) - 1]]))
    return x[idx], y[idx]


def _summaries(scores: pd.DataFrame, methods: list[str], ood: str, metrics: pd.DataFrame | None) -> dict[str, dict]:
    """Per method the metric values of ID vs ``ood`` (from ``metrics`` when given, else computed)."""
    from gradviz.metrics import summary

    if metrics is not None and {"ood_dataset", "method"} <= set(metrics.columns):
        rows = metrics[metrics["ood_dataset"] == ood].set_index("method")
        if set(methods) <= set(rows.index):
            return {m: rows.loc[m].to_dict() for m in methods}
    id_part, ood_part = scores[scores["role"] == "id"], scores[scores["dataset"] == ood]
    return {m: summary(id_part[m], ood_part[m]) for m in methods}


def roc_figure(scores: pd.DataFrame, methods: list[str], ood: str, order: list[str] | None = None,
               metrics: pd.DataFrame | None = None) -> go.Figure:
    """ROC curves of ID (positive, accepted) vs one OOD set for each method; AUROC in the legend,
    a marker where 95 % of ID is accepted (its x is FPR95). ``metrics`` (the run's metrics table)
    saves recomputing the legend values."""
    from gradviz.metrics import roc_curve_points

    id_part = scores[scores["role"] == "id"]
    ood_part = scores[scores["dataset"] == ood]
    values = _summaries(scores, methods, ood, metrics)
    fig = go.Figure()
    for m in methods:
        pts = roc_curve_points(id_part[m], ood_part[m])
        s = values[m]
        color = method_color(m, order or methods)
        fpr, tpr = thin_curve(pts["fpr"], pts["tpr"])
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{m} (AUROC {s['auroc']:.3f})",
                                 line=dict(color=color), hovertemplate=f"{m}<br>FPR %{{x:.3f}}<br>TPR %{{y:.3f}}<extra></extra>"))
        fig.add_trace(go.Scatter(x=[s["fpr95"]], y=[0.95], mode="markers", marker=dict(color=color, size=9, symbol="x"),
                                 showlegend=False, hovertemplate=f"{m}: FPR95 %{{x:.3f}}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), showlegend=False, hoverinfo="skip"))
    id_name = _h(id_part["dataset"].iloc[0]) if len(id_part) else "ID"
    fig.update_layout(title=f"ROC: {id_name} vs {_h(ood)}", xaxis_title=f"FPR (fraction of {_h(ood)} accepted)", yaxis_title="TPR (fraction of ID accepted)", **LAYOUT)
    return fig


def pr_figure(scores: pd.DataFrame, methods: list[str], ood: str, positive: str = "id", order: list[str] | None = None,
              metrics: pd.DataFrame | None = None) -> go.Figure:
    """Precision-recall curves with ID (``positive="id"``) or OOD (``"ood"``) as the positive class."""
    from gradviz.metrics import pr_curve_points

    id_part = scores[scores["role"] == "id"]
    ood_part = scores[scores["dataset"] == ood]
    values = _summaries(scores, methods, ood, metrics)
    fig = go.Figure()
    for m in methods:
        pts = pr_curve_points(id_part[m], ood_part[m], positive=positive)
        s = values[m]
        key = "aupr_in" if positive == "id" else "aupr_out"
        recall, precision = thin_curve(pts["recall"], pts["precision"])
        fig.add_trace(go.Scatter(x=recall, y=precision, mode="lines", name=f"{m} ({key.upper()} {s[key]:.3f})",
                                 line=dict(color=method_color(m, order or methods))))
    fig.update_layout(title=f"Precision-recall ({'ID' if positive == 'id' else 'OOD'} positive): vs {_h(ood)}",
                      xaxis_title="recall", yaxis_title="precision", yaxis_range=[0, 1.02], **LAYOUT)
    return fig


def metric_bars(metrics: pd.DataFrame, metric: str = "auroc") -> go.Figure:
    """Grouped bars: ``metric`` per method, one group colour per OOD set."""
    fig = go.Figure()
    for ood, part in metrics.groupby("ood_dataset", sort=False):
        fig.add_trace(go.Bar(x=part["method"], y=part[metric], name=_h(ood), marker_color=dataset_color(ood)))
    fig.update_layout(barmode="group", title=f"{metric.upper()} per method and OOD set", yaxis_title=metric, **LAYOUT)
    return fig


def probability_bars(probs: np.ndarray, class_names: list[str], top: int = 10) -> go.Figure:
    """Class probabilities of one sample, largest first (at most ``top`` bars)."""
    probs = np.asarray(probs, dtype=float)
    order = np.argsort(-probs)[:top]
    fig = go.Figure(go.Bar(x=[_h(class_names[i]) for i in order], y=probs[order], marker_color=ID_COLOR,
                           hovertemplate="class %{x}: p=%{y:.4f}<extra></extra>"))
    fig.update_layout(title="Class probabilities", yaxis_range=[0, 1], yaxis_title="softmax probability",
                      xaxis_type="category", height=300, **LAYOUT)
    return fig


def layer_profile(bands: pd.DataFrame, stat: str, sample: pd.Series | None = None, log: bool = True) -> go.Figure:
    """Per-layer gradient statistic: a median line and a 5–95 % band per dataset, plus one sample.

    ``bands``: rows (dataset, role, layer, q05, q50, q95) in layer order (see :func:`gradviz.layers.layer_bands`).
    """
    fig = go.Figure()
    layers = list(dict.fromkeys(bands["layer"]))
    for (spec, role), part in bands.groupby(["dataset", "role"], sort=False):
        color = dataset_color(spec, role)
        names = [_h(l) for l in part["layer"]]
        fig.add_trace(go.Scatter(x=names + names[::-1], y=list(part["q95"]) + list(part["q05"])[::-1],
                                 fill="toself", fillcolor=color, opacity=0.18, line=dict(width=0), hoverinfo="skip",
                                 showlegend=False, legendgroup=spec))
        fig.add_trace(go.Scatter(x=names, y=part["q50"], mode="lines+markers", name=f"{_h(spec)} median (5–95 %)",
                                 line=dict(color=color), legendgroup=spec))
    if sample is not None:
        fig.add_trace(go.Scatter(x=[_h(l) for l in layers], y=[sample.get(l, np.nan) for l in layers], mode="lines+markers", name="this sample",
                                 line=dict(color="black", width=3)))
    # the legend sits between the title and the plot: room for as many rows as its names need (~700 px wide)
    names = [t.name for t in fig.data if t.showlegend is not False]
    rows = max(1, -(-sum(len(n) * 7 + 60 for n in names) // 700))
    fig.update_layout(title=dict(text=f"Per-layer gradient {stat}", y=1.0, yanchor="top", pad=dict(t=12)),
                      yaxis_title=stat, yaxis_type="log" if log else "linear",
                      **{**LAYOUT, "legend": dict(orientation="h", y=1.02, yanchor="bottom", x=0),
                         "margin": dict(l=50, r=20, t=50 + 24 * rows, b=110)})
    fig.update_xaxes(title_text="layer (input → output)", tickangle=-45, automargin=True)
    return fig


def heatmap(values: pd.DataFrame, title: str, colorscale: str = "RdBu_r", zmid: float | None = 0.5,
            zlabel: str = "AUROC", fmt: str = ".2f") -> go.Figure:
    """Annotated heat map of a (rows × columns) table, e.g. layer × statistic AUROC."""
    fig = go.Figure(go.Heatmap(z=values.to_numpy(dtype=float), x=[_h(c) for c in values.columns], y=[_h(i) for i in values.index],
                               colorscale=colorscale, zmid=zmid, colorbar=dict(title=zlabel),
                               texttemplate=f"%{{z:{fmt}}}" if values.size <= 400 else None,
                               hovertemplate="%{y} / %{x}: %{z:.3f}<extra></extra>"))
    # tall maps: column labels on top, readable without scrolling to the bottom of the map
    top = len(values) > 12
    fig.update_layout(title=_h(title), **{**LAYOUT, "legend": {}, "margin": {**LAYOUT["margin"], "t": 95 if top else 50}},
                      height=max(300, 28 * len(values) + 120), xaxis_side="top" if top else "bottom")
    return fig


def severity_curve(table: pd.DataFrame, corruption: str, metric: str = "auroc", order: list[str] | None = None) -> go.Figure:
    """``metric`` vs corruption severity, one line per method. ``table``: rows (method, severity, metric)."""
    fig = go.Figure()
    methods = list(dict.fromkeys(table["method"]))
    for m in methods:
        part = table[table["method"] == m].sort_values("severity")
        fig.add_trace(go.Scatter(x=part["severity"], y=part[metric], mode="lines+markers", name=m,
                                 line=dict(color=method_color(m, order or methods))))
    fig.update_layout(title=f"{metric.upper()} vs severity: {_h(corruption)}",
                      xaxis=dict(title="severity", dtick=1), yaxis_title=f"{metric} (clean ID vs corrupted)", **LAYOUT)
    return fig


def importance_bars(importances: pd.DataFrame, top: int = 20) -> go.Figure:
    """Horizontal bars of the ``top`` feature importances (columns feature, importance)."""
    part = importances.sort_values("importance", ascending=False).head(top)[::-1]
    fig = go.Figure(go.Bar(x=part["importance"], y=[_h(f) for f in part["feature"]], orientation="h", marker_color=ID_COLOR))
    fig.update_layout(title="Feature importance", height=max(300, 22 * len(part) + 100), **LAYOUT)
    return fig


def curves_figure(curves: dict[str, pd.DataFrame], title: str, x: str = "fpr", y: str = "tpr") -> go.Figure:
    """Several named curves (e.g. meta-classifier ROC per feature set) on one chart."""
    fig = go.Figure()
    for i, (name, pts) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=pts[x], y=pts[y], mode="lines", name=_h(name), line=dict(color=METHOD_PALETTE[i % len(METHOD_PALETTE)])))
    if x == "fpr":
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), showlegend=False))
    fig.update_layout(title=_h(title), xaxis_title=x.upper(), yaxis_title=y.upper(), **LAYOUT)
    return fig


def image_row(images: list[np.ndarray], titles: list[str]) -> go.Figure:
    """Images side by side (uint8 (H, W, 3) arrays), e.g. one corruption at severities 1–5."""
    fig = make_subplots(rows=1, cols=len(images), subplot_titles=[_h(t) for t in titles], horizontal_spacing=0.02)
    for i, img in enumerate(images):
        fig.add_trace(go.Image(z=img), row=1, col=i + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(margin=dict(l=10, r=10, t=40, b=10), height=220)
    return fig


def to_html(fig: go.Figure) -> str:
    """Self-contained HTML of a figure (plotly.js inlined: opens offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def severity_color(severity: int, max_severity: int = 5) -> str:
    """Sequential colour of a corruption severity: clean (0) = ID blue, then light to dark red."""
    if severity <= 0:
        return ID_COLOR
    import plotly.colors as pc

    scale = pc.sample_colorscale("OrRd", [0.3 + 0.7 * (severity - 1) / max(1, max_severity - 1)])
    return scale[0]


def severity_histogram(scores: pd.DataFrame, method: str, nbins: int = 50) -> go.Figure:
    """Overlaid score densities of one method per corruption severity (column ``severity``; 0 = clean)."""
    fig = go.Figure()
    bins = _shared_bins(scores[method], nbins)
    if bins is None:
        return fig.update_layout(title=f"{method}: no finite scores", **LAYOUT)
    lo, hi, size = bins
    top = int(scores["severity"].max())
    for severity, part in scores.groupby("severity", sort=True):
        name = "clean (ID)" if severity == 0 else f"severity {severity}"
        fig.add_trace(go.Histogram(
            x=part[method], name=name, histnorm="probability density", opacity=0.55,
            marker_color=severity_color(int(severity), top), xbins=dict(start=lo, end=hi + size, size=size),
            hovertemplate=f"{name}<br>{method}=%{{x}}<br>density=%{{y:.3g}}<extra></extra>",
        ))
    fig.update_layout(barmode="overlay", title=f"{method}: uncertainty as severity grows",
                      xaxis_title=f"{method} uncertainty (higher = more uncertain)", yaxis_title="density", **LAYOUT)
    return fig


def model_metric_bars(metrics: pd.DataFrame, metric: str = "auroc", models: list[str] | None = None) -> go.Figure:
    """Grouped bars for several models: ``metric`` per method, one bar colour per model, one panel per OOD set
    (``metrics`` has a ``model`` column, as :attr:`gradviz.model_compare.ModelComparison.metrics`)."""
    oods = list(dict.fromkeys(metrics["ood_dataset"])) if len(metrics) else []
    models = models or (list(dict.fromkeys(metrics["model"])) if len(metrics) else [])
    fig = make_subplots(rows=max(1, len(oods)), cols=1, shared_xaxes=True, subplot_titles=[_h(o) for o in oods] or None,
                        vertical_spacing=0.12 if len(oods) > 1 else 0.02)
    for m, model in enumerate(models):
        for row, ood in enumerate(oods, 1):
            part = metrics[(metrics["model"] == model) & (metrics["ood_dataset"] == ood)]
            fig.add_trace(go.Bar(x=part["method"], y=part[metric], name=_h(model), legendgroup=model, showlegend=row == 1,
                                 marker_color=METHOD_PALETTE[m % len(METHOD_PALETTE)],
                                 hovertemplate=f"{_h(model)}<br>%{{x}}<br>{metric}=%{{y:.3f}}<extra>{_h(ood)}</extra>"),
                          row=row, col=1)
    fig.update_layout(barmode="group", title=f"{metric.upper()} per method, model and OOD set",
                      height=max(320, 230 * max(1, len(oods))), **LAYOUT)
    fig.update_yaxes(title_text=metric)
    return fig
