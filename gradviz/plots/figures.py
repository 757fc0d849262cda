"""Plotly figure builders shared by the pages and the exports: data in, ``go.Figure`` out.

Colours are fixed per dataset everywhere (ID blue; each OOD set its own colour), and
per method, so a set or a method looks the same on every page and in every export.

Every name drawn (dataset, class, file, layer, model names and titles built from them) goes
through :func:`gradviz.reporting.plaintext.html_text`: Plotly renders HTML in its text, and a class named
``<a href=...>`` must read as written, not become a link.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gradviz.plots.palette import method_styles
from gradviz.reporting.plaintext import html_text as _h

ID_COLOR = "#1f77b4"
OOD_PALETTE = ["#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
_KNOWN = {"letters": "#ff7f0e", "noise-uniform": "#d62728", "noise-gaussian": "#9467bd"}
# Colours of things that are not methods (models, meta feature sets): methods take theirs from gradviz.plots.palette.
SERIES_PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d", "#1b9e77"]
WEBGL_THRESHOLD = 1000
# Curves are drawn with at most this many points (evenly spaced along the curve): at dashboard
# size the difference is under a pixel, and 15 methods × 2,000 raw ROC points made the browser
# parse and draw ~0.8 MB per figure.
CURVE_POINTS = 300
LAYOUT: dict[str, Any] = dict(template="plotly_white", margin=dict(l=50, r=20, t=50, b=45),
                              legend=dict(orientation="h", y=-0.2), hoverlabel=dict(namelength=-1))
# Line charts of methods: the legend in its own column right of the plot (never over the title or the
# axis titles), the hovered line named in its own colour; a click on a legend entry hides that line,
# a double-click shows it alone.
LINES_LAYOUT = {**LAYOUT, "legend": dict(orientation="v", x=1.02, xanchor="left", y=1.0, yanchor="top",
                                         itemdoubleclick="toggleothers", font=dict(size=11)),
                "hovermode": "closest", "margin": dict(l=55, r=10, t=50, b=45)}


def legend_below(names: list[str], width: int = 700, bottom: int = 50) -> dict:
    """Layout keys putting a horizontal legend of ``names`` below the x-axis title (container bottom), with
    a bottom margin holding the tick labels and title (``bottom`` px) and as many legend rows as needed."""
    rows = max(1, -(-sum(len(n) * 7 + 45 for n in names) // width))
    return dict(legend=dict(orientation="h", yref="container", y=0.0, yanchor="bottom", x=0.0),
                margin=dict(l=55, r=20, t=50, b=bottom + 22 * rows))


def dataset_color(spec: str, role: str = "ood") -> str:
    """The colour of a dataset on every page: ID blue, known OOD sets fixed, others hashed."""
    if role == "id":
        return ID_COLOR
    if spec in _KNOWN:
        return _KNOWN[spec]
    free = [c for c in OOD_PALETTE if c not in _KNOWN.values()]  # never look like a known set
    h = int(hashlib.md5(spec.encode()).hexdigest(), 16)
    return free[h % len(free)]


def method_color(name: str) -> str:
    """A method's colour on every chart (:func:`gradviz.plots.palette.method_styles`: its family's hue)."""
    return method_styles([name])[name][0]


def _finite(a) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    return a[np.isfinite(a)]


HEAVY_TAIL_RATIO = 50.0  # positive scores whose max exceeds this many lower quartiles get a log axis


def axis_type(values) -> str:
    """The x-axis for a score: ``"log"`` when every finite value is > 0 and max / lower quartile > HEAVY_TAIL_RATIO
    (gradient norms, Mahalanobis: on a linear axis ID and most OOD sets fall into one or two bins), else linear.
    The lower quartile, not the median: with several OOD sets half the samples may lie far out."""
    v = _finite(values)
    if len(v) == 0 or v.min() <= 0:
        return "linear"
    return "log" if v.max() / np.quantile(v, 0.25) > HEAVY_TAIL_RATIO else "linear"


def shown_score(method: str) -> tuple[str, float]:
    """(name, offset) a chart shows ``method``'s score with: the registry's display form (MSP as 1 − MSP)
    for registered methods, else the raw score. Display only: ranks, thresholds and AUROCs are unchanged."""
    from gradviz.methods.registry import REGISTRY, _ensure_registered

    _ensure_registered()
    info = REGISTRY.get(method)
    return (info.shown_name, info.shown_offset) if info is not None else (method, 0.0)


def _bin_edges(values, nbins: int, log: bool) -> np.ndarray | None:
    """``nbins + 1`` edges over the finite values (log-spaced on a log axis); None if there is none."""
    v = _finite(values)
    if log:
        v = v[v > 0]
    if len(v) == 0:
        return None
    lo, hi = float(v.min()), float(v.max())
    if log:
        return np.logspace(np.log10(lo), np.log10(hi) if hi > lo else np.log10(lo) + 1.0, nbins + 1)
    return np.linspace(lo, hi if hi > lo else lo + 1.0, nbins + 1)


def with_alpha(color: str, alpha: float) -> str:
    """``color`` (hex or rgb()) as an rgba() string with opacity ``alpha``."""
    import plotly.colors as pc

    r, g, b = pc.hex_to_rgb(color) if color.startswith("#") else pc.unlabel_rgb(color)
    return f"rgba({int(r)}, {int(g)}, {int(b)}, {alpha})"


def _step_density(values, edges: np.ndarray, log: bool, name: str, color: str, label: str, dash: str = "solid") -> dict:
    """One set's density as a step outline over a light fill: overlapping sets all stay visible (a set
    under another's spike still shows its outline). On a log axis the density is per decade."""
    v = _finite(values)
    if log:
        v = v[v > 0]
    counts, _ = np.histogram(v, bins=edges)
    widths = np.diff(np.log10(edges)) if log else np.diff(edges)
    density = counts / max(1, len(v)) / widths
    return dict(type="scatter", x=np.concatenate([edges[:1], edges]), y=np.concatenate([[0.0], density, [0.0]]),
                mode="lines", line=dict(shape="hv", color=color, width=2, dash=dash), fill="tozeroy",
                fillcolor=with_alpha(color, 0.12), name=name, legendgroup=name,
                hovertemplate=f"{name}<br>{_h(label)} from %{{x:.3g}}<br>density %{{y:.3g}}<extra></extra>")


def _density_figure(parts: list[tuple[str, str, pd.Series]], method: str, title: str, nbins: int,
                    threshold: float | None = None) -> go.Figure:
    """Step-outline densities of ``parts`` [(name, colour, raw scores)] of one method on shared bins, on the
    axis :func:`axis_type` picks for the shown score, with an optional threshold line (raw units)."""
    label, offset = shown_score(method)
    shown = pd.concat([p[2] for p in parts]) + offset
    log = axis_type(shown) == "log"
    edges = _bin_edges(shown, nbins, log)
    fig = go.Figure()
    if edges is None:
        return fig.update_layout(title=f"{_h(label)}: no finite scores", **LAYOUT)
    top = 0.0
    for name, color, values in parts:
        trace = _step_density(np.asarray(values, dtype=float) + offset, edges, log, name, color, label)
        top = max(top, float(np.max(trace["y"])))
        fig.add_trace(trace)
    if threshold is not None and np.isfinite(threshold):
        t = float(threshold) + offset
        fig.add_trace(go.Scatter(x=[t, t], y=[0, top * 1.05 or 1.0], mode="lines", name="threshold",
                                 line=dict(color="black", dash="dash", width=2),
                                 hovertemplate=f"threshold {t:.4g}<extra></extra>"))
    x_title = f"{_h(label)} (higher = more uncertain)" + (", log scale" if log else "")
    fig.update_layout(title=title, xaxis=dict(title=x_title, type="log" if log else "linear", exponentformat="power"),
                      yaxis_title="density" + (" per decade" if log else ""), hovermode="closest",
                      **{**LAYOUT, **legend_below([p[0] for p in parts])})
    return fig


def score_histogram(scores: pd.DataFrame, method: str, title: str | None = None, nbins: int = 50,
                    threshold: float | None = None) -> go.Figure:
    """Every dataset's score density of ``method`` on shared bins, as step outlines (each set stays visible),
    on a log axis for heavy-tailed positive scores (:func:`axis_type`); ``threshold`` (raw) as a dashed line."""
    parts = [(f"{_h(spec)} ({role.upper()})", dataset_color(spec, role), part[method])
             for (spec, role), part in scores.groupby(["dataset", "role"], sort=False)]
    return _density_figure(parts, method, _h(title) if title else f"{method}: uncertainty by dataset", nbins, threshold)


def score_strip(scores: pd.DataFrame, method: str, threshold: float | None = None) -> go.Figure:
    """One point per sample (x = score, y = dataset, jittered); selectable, ``customdata`` = row id.

    ``customdata`` holds [row, index, label, prediction] (numbers only: the dataset is the trace
    name), so a selection maps back to rows and the figure stays light for thousands of points.
    """
    fig = go.Figure()
    label, offset = shown_score(method)
    log = axis_type(scores[method] + offset) == "log"
    rng = np.random.default_rng(0)
    order = list(dict.fromkeys(scores["dataset"]))
    big = len(scores) > WEBGL_THRESHOLD
    Scatter = go.Scattergl if big else go.Scatter
    for (spec, role), part in scores.groupby(["dataset", "role"], sort=False):
        y = order.index(spec) + rng.uniform(-0.3, 0.3, len(part))
        custom = np.stack([part.index.to_numpy(), part["index"], part["label"], part["prediction"]],
                          axis=1).astype(np.int64)
        fig.add_trace(Scatter(
            x=(part[method] + offset).to_numpy(dtype=np.float32), y=y.astype(np.float32), mode="markers",
            name=f"{_h(spec)} ({role.upper()})", customdata=custom,
            marker=dict(color=dataset_color(spec, role), size=5, opacity=0.6),
            hovertemplate=f"{_h(spec)} #%{{customdata[1]}}<br>label %{{customdata[2]}}, predicted %{{customdata[3]}}"
                          f"<br>{_h(label)}=%{{x:.4g}}<extra></extra>",
        ))
    if threshold is not None and np.isfinite(threshold):  # a trace, not a shape: right on a log axis too
        t = float(threshold) + offset
        fig.add_trace(go.Scatter(x=[t, t], y=[-0.5, len(order) - 0.5], mode="lines", name="threshold",
                                 line=dict(color="black", dash="dash", width=2),
                                 hovertemplate=f"threshold {t:.4g}<extra></extra>"))
    fig.update_layout(title=f"{method}: every sample (select points to inspect them)",
                      xaxis=dict(title=f"{_h(label)} (higher = more uncertain)" + (", log scale" if log else ""),
                                 type="log" if log else "linear", exponentformat="power"),
                      yaxis=dict(tickvals=list(range(len(order))), ticktext=[_h(o) for o in order]), dragmode="select",
                      **{**LAYOUT, **legend_below([t.name for t in fig.data])})
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
    from gradviz.analysis.metrics import summary

    if metrics is not None and {"ood_dataset", "method"} <= set(metrics.columns):
        rows = metrics[metrics["ood_dataset"] == ood].set_index("method")
        if set(methods) <= set(rows.index):
            return {m: rows.loc[m].to_dict() for m in methods}
    id_part, ood_part = scores[scores["role"] == "id"], scores[scores["dataset"] == ood]
    return {m: summary(id_part[m], ood_part[m]) for m in methods}


def _line_style(m: str, styles: dict[str, tuple[str, str]], width: float = 2) -> dict:
    color, dash = styles[m]
    return dict(color=color, dash=dash, width=width)


def roc_figure(scores: pd.DataFrame, methods: list[str], ood: str, metrics: pd.DataFrame | None = None) -> go.Figure:
    """ROC curves of ID (positive, accepted) vs one OOD set for each method; AUROC in the legend,
    a marker where 95 % of ID is accepted (its x is FPR95). ``metrics`` (the run's metrics table)
    saves recomputing the legend values. Each method keeps its (colour, dash) of :mod:`gradviz.plots.palette`."""
    from gradviz.analysis.metrics import roc_curve_points

    id_part = scores[scores["role"] == "id"]
    ood_part = scores[scores["dataset"] == ood]
    values = _summaries(scores, methods, ood, metrics)
    styles = method_styles(methods)
    fig = go.Figure()
    for m in methods:
        pts = roc_curve_points(id_part[m], ood_part[m])
        s = values[m]
        fpr, tpr = thin_curve(pts["fpr"], pts["tpr"])
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{m} (AUROC {s['auroc']:.3f})", legendgroup=m,
                                 line=_line_style(m, styles),
                                 hovertemplate=f"{m}<br>FPR %{{x:.3f}}<br>TPR %{{y:.3f}}<extra></extra>"))
        fig.add_trace(go.Scatter(x=[s["fpr95"]], y=[0.95], mode="markers",
                                 marker=dict(color=styles[m][0], size=9, symbol="x"), showlegend=False,
                                 legendgroup=m, hovertemplate=f"{m}: FPR95 %{{x:.3f}}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), showlegend=False,
                             hoverinfo="skip"))
    id_name = _h(id_part["dataset"].iloc[0]) if len(id_part) else "ID"
    fig.update_layout(title=f"ROC: {id_name} vs {_h(ood)}", xaxis_title=f"FPR (fraction of {_h(ood)} accepted)",
                      yaxis_title="TPR (fraction of ID accepted)", **LINES_LAYOUT)
    return fig


def pr_figure(scores: pd.DataFrame, methods: list[str], ood: str, positive: str = "id",
              metrics: pd.DataFrame | None = None) -> go.Figure:
    """Precision-recall curves with ID (``positive="id"``) or OOD (``"ood"``) as the positive class."""
    from gradviz.analysis.metrics import pr_curve_points

    id_part = scores[scores["role"] == "id"]
    ood_part = scores[scores["dataset"] == ood]
    values = _summaries(scores, methods, ood, metrics)
    styles = method_styles(methods)
    fig = go.Figure()
    for m in methods:
        pts = pr_curve_points(id_part[m], ood_part[m], positive=positive)
        s = values[m]
        key = "aupr_in" if positive == "id" else "aupr_out"
        recall, precision = thin_curve(pts["recall"], pts["precision"])
        fig.add_trace(go.Scatter(x=recall, y=precision, mode="lines", name=f"{m} ({key.upper()} {s[key]:.3f})",
                                 line=_line_style(m, styles),
                                 hovertemplate=f"{m}<br>recall %{{x:.3f}}<br>precision %{{y:.3f}}<extra></extra>"))
    fig.update_layout(title=f"Precision-recall ({'ID' if positive == 'id' else 'OOD'} positive): vs {_h(ood)}",
                      xaxis_title="recall", yaxis_title="precision", yaxis_range=[0, 1.02], **LINES_LAYOUT)
    return fig


def _bar_labels(values) -> dict:
    """Every bar labelled with its value, outside the bar (a 0.000 bar draws nothing and would read as missing data)."""
    v = np.asarray(values, dtype=float)
    return dict(text=[f"{x:.3f}" if np.isfinite(x) else "n/a" for x in v], textposition="outside", cliponaxis=False,
                textangle=-90 if len(v) > 6 else 0, textfont=dict(size=10))


def _bar_range(values) -> list[float] | None:
    """A y range with room above the tallest bar for its label (metrics in [0, 1]); None (auto) otherwise."""
    v = _finite(values)
    top = float(v.max()) if len(v) else 1.0
    return [0.0, 1.25] if 0.0 <= top <= 1.0 and (v >= 0).all() else None


def metric_bars(metrics: pd.DataFrame, metric: str = "auroc") -> go.Figure:
    """Grouped bars: ``metric`` per method, one group colour per OOD set."""
    fig = go.Figure()
    for ood, part in metrics.groupby("ood_dataset", sort=False):
        fig.add_trace(go.Bar(x=part["method"], y=part[metric], name=_h(ood), marker_color=dataset_color(ood),
                             **_bar_labels(part[metric])))
    fig.update_layout(barmode="group", title=f"{metric.upper()} per method and OOD set",
                      uniformtext=dict(minsize=8, mode="show"),
                      yaxis=dict(title=metric, range=_bar_range(metrics[metric])), **LAYOUT)
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


# What each per-layer statistic of a layer's weight gradient is, for axis titles (gradviz.engine.reduce.STATS).
STAT_TITLES = {"l1": "L1 norm", "l2": "L2 norm", "max": "maximum entry", "min": "minimum entry", "mean": "mean entry",
               "std": "standard deviation of the entries"}


def stat_title(stat: str) -> str:
    """Axis title of a per-layer gradient statistic, e.g. ``l2`` -> "gradient L2 norm (l2)"."""
    return f"gradient {STAT_TITLES[stat]} ({stat})" if stat in STAT_TITLES else f"gradient {stat}"


def layer_profile(bands: pd.DataFrame, stat: str, sample: pd.Series | None = None, log: bool = True) -> go.Figure:
    """Per-layer gradient statistic: a median line and a 5–95 % band per dataset, plus one sample.

    ``bands``: rows (dataset, role, layer, q05, q50, q95) in layer order (see
    :func:`gradviz.analysis.layers.layer_bands`).
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
        fig.add_trace(go.Scatter(x=[_h(l) for l in layers], y=[sample.get(l, np.nan) for l in layers],
                                 mode="lines+markers", name="this sample", line=dict(color="black", width=3)))
    # the legend sits between the title and the plot: room for as many rows as its names need (~700 px wide)
    names = [t.name for t in fig.data if t.showlegend is not False]
    rows = max(1, -(-sum(len(n) * 7 + 60 for n in names) // 700))
    fig.update_layout(title=dict(text=f"Per-layer {stat_title(stat)}", y=1.0, yanchor="top", pad=dict(t=12)),
                      yaxis=dict(title=stat_title(stat), type="log" if log else "linear",
                                 exponentformat="power", showexponent="all"),
                      **{**LAYOUT, "legend": dict(orientation="h", y=1.02, yanchor="bottom", x=0),
                         "margin": dict(l=50, r=20, t=50 + 24 * rows, b=110)})
    fig.update_xaxes(title_text="layer (input → output)", tickangle=-45, automargin=True)
    return fig


def heatmap(values: pd.DataFrame, title: str, colorscale: str = "RdBu_r", zmid: float | None = 0.5,
            zlabel: str = "AUROC", fmt: str = ".2f") -> go.Figure:
    """Annotated heat map of a (rows × columns) table, e.g. layer × statistic AUROC."""
    fig = go.Figure(go.Heatmap(z=values.to_numpy(dtype=float), x=[_h(c) for c in values.columns],
                               y=[_h(i) for i in values.index], colorscale=colorscale, zmid=zmid,
                               colorbar=dict(title=zlabel),
                               texttemplate=f"%{{z:{fmt}}}" if values.size <= 400 else None,
                               hovertemplate="%{y} / %{x}: %{z:.3f}<extra></extra>"))
    # tall maps: column labels on top, readable without scrolling to the bottom of the map
    top = len(values) > 12
    fig.update_layout(title=_h(title),
                      **{**LAYOUT, "legend": {}, "margin": {**LAYOUT["margin"], "t": 95 if top else 50}},
                      height=max(300, 28 * len(values) + 120), xaxis_side="top" if top else "bottom")
    return fig


def severity_curve(table: pd.DataFrame, corruption: str, metric: str = "auroc",
                   methods: list[str] | None = None) -> go.Figure:
    """``metric`` vs corruption severity, one line per method (``methods``: which, default all).
    ``table``: rows (method, severity, metric)."""
    fig = go.Figure()
    methods = methods if methods is not None else list(dict.fromkeys(table["method"]))
    styles = method_styles(methods)
    for m in methods:
        part = table[table["method"] == m].sort_values("severity")
        fig.add_trace(go.Scatter(x=part["severity"], y=part[metric], mode="lines+markers", name=m,
                                 line=_line_style(m, styles),
                                 hovertemplate=f"{m}<br>severity %{{x}}: {metric} %{{y:.3f}}<extra></extra>"))
    fig.update_layout(title=f"{metric.upper()} vs severity: {_h(corruption)}",
                      xaxis=dict(title="severity", dtick=1), yaxis_title=f"{metric} (clean ID vs corrupted)",
                      **LINES_LAYOUT)
    return fig


def importance_bars(importances: pd.DataFrame, top: int = 20) -> go.Figure:
    """Horizontal bars of the ``top`` feature importances (columns feature, importance)."""
    part = importances.sort_values("importance", ascending=False).head(top)[::-1]
    fig = go.Figure(go.Bar(x=part["importance"], y=[_h(f) for f in part["feature"]], orientation="h",
                           marker_color=ID_COLOR))
    fig.update_layout(title="Feature importance", height=max(300, 22 * len(part) + 100), **LAYOUT)
    return fig


def curves_figure(curves: dict[str, pd.DataFrame], title: str, x: str = "fpr", y: str = "tpr") -> go.Figure:
    """Several named curves (e.g. meta-classifier ROC per feature set) on one chart."""
    fig = go.Figure()
    for i, (name, pts) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=pts[x], y=pts[y], mode="lines", name=_h(name),
                                 line=dict(color=SERIES_PALETTE[i % len(SERIES_PALETTE)])))
    if x == "fpr":
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"),
                                 showlegend=False))
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
    """Score densities of one method per corruption severity (column ``severity``; 0 = clean), step outlines."""
    top = int(scores["severity"].max()) if len(scores) else 0
    parts = [("clean (ID)" if k == 0 else f"severity {k}", severity_color(int(k), top), part[method])
             for k, part in scores.groupby("severity", sort=True)]
    return _density_figure(parts, method, f"{method}: uncertainty as severity grows", nbins)


def model_metric_bars(metrics: pd.DataFrame, metric: str = "auroc", models: list[str] | None = None) -> go.Figure:
    """Grouped bars for several models: ``metric`` per method, one bar colour per model, one panel per OOD set
    (``metrics`` has a ``model`` column, as :attr:`gradviz.analysis.model_compare.ModelComparison.metrics`)."""
    oods = list(dict.fromkeys(metrics["ood_dataset"])) if len(metrics) else []
    models = models or (list(dict.fromkeys(metrics["model"])) if len(metrics) else [])
    fig = make_subplots(rows=max(1, len(oods)), cols=1, shared_xaxes=True, subplot_titles=[_h(o) for o in oods] or None,
                        vertical_spacing=0.12 if len(oods) > 1 else 0.02)
    for m, model in enumerate(models):
        for row, ood in enumerate(oods, 1):
            part = metrics[(metrics["model"] == model) & (metrics["ood_dataset"] == ood)]
            fig.add_trace(go.Bar(x=part["method"], y=part[metric], name=_h(model), legendgroup=model,
                                 showlegend=row == 1, marker_color=SERIES_PALETTE[m % len(SERIES_PALETTE)],
                                 **_bar_labels(part[metric]),
                                 hovertemplate=f"{_h(model)}<br>%{{x}}<br>{metric}=%{{y:.3f}}<extra>{_h(ood)}</extra>"),
                          row=row, col=1)
    fig.update_layout(barmode="group", title=f"{metric.upper()} per method, model and OOD set",
                      height=max(320, 260 * max(1, len(oods))), uniformtext=dict(minsize=8, mode="show"), **LAYOUT)
    fig.update_yaxes(title_text=metric, range=_bar_range(metrics[metric]) if len(metrics) else None)
    return fig
