"""Plotly figures of the playground (data in, ``go.Figure`` out, no Streamlit).

Methods are coloured by family everywhere (:mod:`gradviz.plots.palette`, shared with every page): one hue range
per family, and within a family each method its own colour and, past the family's ramp, its own dash.

These figures are drawn after every stroke, so each is built as one figure dict in one construction
(``make_subplots`` + ``add_trace`` per trace took ~0.4 s for the 15-method histogram grid); the
histograms' bars are built and validated once per reference, and a stroke only adds the sample's lines.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gradviz.plots.palette import family_color, method_styles
from gradviz.reporting.plaintext import html_text as _h
from gradviz.playground.live import Reference
from gradviz.plots.figures import LAYOUT, dataset_color, shown_score, with_alpha

__all__ = ["family_color", "method_shades", "method_dashes", "percentile_gauges", "histogram_base", "marker_histograms",
           "path_figure"]


def method_shades(methods: list[str], families: dict[str, str]) -> dict[str, str]:
    """A colour per method: its family's hue (:func:`gradviz.plots.palette.method_styles`, shared by every page)."""
    return {m: c for m, (c, _) in method_styles(methods, families).items()}


def method_dashes(methods: list[str], families: dict[str, str]) -> dict[str, str]:
    """A line dash per method (:func:`gradviz.plots.palette.method_styles`): with the colour, a pair no other method has."""
    return {m: d for m, (_, d) in method_styles(methods, families).items()}


def _layout(**kw) -> dict:
    return {**LAYOUT, **kw}


def percentile_gauges(scores: pd.DataFrame, id_spec: str, height_per_row: int = 24) -> go.Figure:
    """One bar per method: its ID percentile (0–100) for one sample, coloured by family.

    ``scores``: rows of :class:`gradviz.playground.live.LiveReport.scores` for one sample.
    """
    part = scores.iloc[::-1]  # first method on top
    data = [dict(type="bar", y=list(part["method"]), x=[100] * len(part), orientation="h", marker_color="#eeeeee",
                 hoverinfo="skip", showlegend=False)]
    for fam in dict.fromkeys(scores["family"]):
        sub = part[part["family"] == fam]
        pct = sub["percentile"].to_numpy(dtype=float)
        data.append(dict(
            type="bar", y=list(sub["method"]), x=np.nan_to_num(pct), orientation="h", name=fam,
            marker_color=family_color(fam), text=[f"{p:.0f} %" if np.isfinite(p) else "n/a" for p in pct],
            textposition="outside", cliponaxis=False, customdata=np.stack([sub["title"], sub["score"]], axis=1),
            hovertemplate="%{customdata[0]}<br>score %{customdata[1]:.4g}<br>more uncertain than %{x:.0f} % of "
                          + _h(id_spec) + "<extra></extra>"))
    layout = _layout(
        barmode="overlay", title=f"Uncertainty as ID percentile (vs {_h(id_spec)})", bargap=0.25,
        xaxis=dict(range=[0, 112], title=f"% of {_h(id_spec)} samples less uncertain", tickvals=[0, 25, 50, 75, 95]),
        height=height_per_row * len(part) + 130, legend=dict(orientation="h", y=-0.25, title_text="family"),
        shapes=[dict(type="line", x0=95, x1=95, y0=0, y1=1, yref="paper", line=dict(dash="dot", color="#444"))],
        annotations=[dict(x=95, y=1, yref="paper", text="95 %", showarrow=False, yanchor="bottom")])
    return go.Figure(dict(data=data, layout=layout))


def _axis_id(k: int) -> str:
    return "" if k == 0 else str(k + 1)


def _offset(reference: Reference, method: str) -> float:
    """The display shift of a method's histogram axis (MSP as 1 − MSP); none on log10-binned axes."""
    return 0.0 if method in reference.log_axis else shown_score(method)[1]


def histogram_base(reference: Reference, cols: int = 4, row_height: int = 150) -> dict:
    """The ID/OOD densities of every method as a grid of small histograms (a figure dict): the part of
    :func:`marker_histograms` that does not change from stroke to stroke. Memoised on ``reference``."""
    key = (cols, row_height)
    cached = reference.figure_cache.get(("histogram_base", key))
    if cached is not None:
        return cached
    methods = [m for m in reference.methods if m in set(reference.histograms["method"])]
    rows = max(1, -(-len(methods) // cols))
    # MSP reads as 1 − MSP (display only, as on every page); log-binned scores say so
    titles = [f"{m} (log₁₀)" if m in reference.log_axis else shown_score(m)[0] for m in methods]
    grid = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.07, vertical_spacing=0.5 / rows)
    data, shown, panels = [], set(), {}
    for k, m in enumerate(methods):
        ax = _axis_id(k)
        part = reference.histograms[reference.histograms["method"] == m]
        panels[m] = (ax, float(part["density"].max()) * 1.05 if len(part) else 1.0)
        for (spec, role), sets in part.groupby(["dataset", "role"], sort=False):
            name = f"{_h(spec)} ({role.upper()})"
            color = dataset_color(spec, role)
            edges = np.append(sets["left"].to_numpy(), sets["right"].to_numpy()[-1:]) + _offset(reference, m)
            density = sets["density"].to_numpy()
            # a step outline over a light fill: a set under another's spike still shows its outline
            data.append(dict(type="scatter", x=np.concatenate([edges[:1], edges]), y=np.concatenate([[0.0], density, [0.0]]),
                             mode="lines", line=dict(shape="hv", color=color, width=1.5), fill="tozeroy",
                             fillcolor=with_alpha(color, 0.12), name=name, legendgroup=name, showlegend=name not in shown,
                             xaxis=f"x{ax}", yaxis=f"y{ax}", hovertemplate=f"{name}<br>{m} from %{{x:.3g}}<extra></extra>"))
            shown.add(name)
    layout = grid.layout.to_plotly_json()
    for name in list(layout):
        if name.startswith("yaxis"):  # density ticks: how tall a spike is, compared across panels
            layout[name].update(nticks=3, tickfont=dict(size=9), exponentformat="power")
        elif name.startswith("xaxis"):
            layout[name].update(nticks=4, tickfont=dict(size=10))
    for note in layout.get("annotations", []):
        note["font"] = dict(size=12)
    layout.update(_layout(barmode="overlay", height=rows * row_height + 130,
                          title="Where this image falls in each method's score distributions (black line)",
                          margin=dict(l=40, r=10, t=70, b=60), legend=dict(orientation="h", y=-0.16 / rows, yanchor="top", x=0)))
    figure = go.Figure(dict(data=data, layout=layout)).to_dict()  # validated once, here
    base = dict(data=figure["data"], layout=figure["layout"], panels=panels)
    reference.figure_cache[("histogram_base", key)] = base
    return base


def marker_histograms(reference: Reference, sample: dict[str, float], cols: int = 4, row_height: int = 150) -> go.Figure:
    """Each method's ID/OOD score densities (bins from ``reference``) with this sample's score as a black line.

    Methods whose scores span orders of magnitude are drawn on a log10 axis (their title says so). The
    densities are built once per reference (:func:`histogram_base`); a stroke only adds the lines.
    """
    base = histogram_base(reference, cols, row_height)
    data, first = list(base["data"]), True
    for m, (ax, top) in base["panels"].items():
        v = float(reference.hist_axis(m, [sample.get(m, np.nan)])[0]) + _offset(reference, m)
        if not np.isfinite(v):
            continue
        data.append(dict(type="scatter", x=[v, v], y=[0, top], mode="lines", line=dict(color="black", width=3),
                         name="this image", legendgroup="this image", showlegend=first, xaxis=f"x{ax}", yaxis=f"y{ax}",
                         hovertemplate=f"this image<br>{m}={sample.get(m):.4g}<extra></extra>"))
        first = False
    # the bars were validated when the base was built; re-validating 60 bar traces cost ~0.1 s a stroke
    return go.Figure(dict(data=data, layout=base["layout"]), _validate=False)


def path_figure(percentiles: pd.DataFrame, values: np.ndarray, labels: list[str], predictions: list[str],
                confidence: np.ndarray, colors: dict[str, str] | None, axis_title: str, id_spec: str,
                selected: int | None = None, dashes: dict[str, str] | None = None,
                families: dict[str, str] | None = None) -> go.Figure:
    """Every method's ID percentile along a path (top) and the prediction per step (bottom).

    ``percentiles``: one row per step, one column per method (the lines drawn: pick a few, see
    :func:`gradviz.plots.palette.default_lines`). Colours and dashes come from :mod:`gradviz.plots.palette` unless
    ``colors`` / ``dashes`` override them. Every point's ``customdata[0]`` is its step index, so a click
    (``on_select``) tells which step to load.
    """
    styles = method_styles(list(percentiles.columns), families)
    colors = {m: c for m, (c, _) in styles.items()} | (colors or {})
    dashes = {m: d for m, (_, d) in styles.items()} | (dashes or {})
    labels, predictions = [_h(t) for t in labels], [_h(t) for t in predictions]  # class names: plain text
    steps = np.arange(len(values))
    custom = np.stack([steps, labels, [f"{p} (p={c:.2f})" for p, c in zip(predictions, confidence)]], axis=1)
    data = [dict(type="scatter", x=values, y=percentiles[m].to_numpy(), mode="lines+markers", name=m,
                 line=dict(color=colors.get(m), width=2, dash=dashes.get(m, "solid")), marker=dict(size=5),
                 customdata=custom, hovertemplate=f"{m}: %{{y:.0f}} %<br>step %{{customdata[0]}} · %{{customdata[1]}}"
                                                  "<br>predicted %{customdata[2]}<extra></extra>")
            for m in percentiles.columns]
    data.append(dict(type="scatter", x=values, y=list(predictions), mode="markers", showlegend=False, xaxis="x2", yaxis="y2",
                     marker=dict(size=11, color=confidence, colorscale="Greys", cmin=0, cmax=1, line=dict(color="black", width=1)),
                     customdata=custom, hovertemplate="step %{customdata[0]} · %{customdata[1]}<br>predicted %{customdata[2]}"
                                                      "<extra></extra>"))
    shapes = [dict(type="line", x0=0, x1=1, xref="paper", y0=95, y1=95, yref="y", line=dict(dash="dot", color="#888"))]
    if selected is not None and 0 <= selected < len(values):
        shapes.append(dict(type="line", x0=float(values[selected]), x1=float(values[selected]), xref="x", y0=0, y1=1,
                           yref="paper", line=dict(color="black", dash="dash")))
    layout = _layout(
        height=max(560, 22 * len(percentiles.columns) + 160), title="Along the path: each score (as ID percentile) and the prediction — click a step to load it",
        clickmode="event+select", dragmode=False, shapes=shapes, hovermode="closest",
        legend=dict(orientation="v", x=1.02, xanchor="left", y=1.0, yanchor="top", itemdoubleclick="toggleothers"),
        margin=dict(l=60, r=20, t=60, b=50),
        xaxis=dict(anchor="y", matches="x2", showticklabels=False),
        xaxis2=dict(anchor="y2", title=axis_title),
        yaxis=dict(domain=[0.3, 1.0], range=[-3, 103], title=f"ID percentile (vs {_h(id_spec)})"),
        yaxis2=dict(domain=[0.0, 0.24], type="category", title="prediction<br>(dark = confident)"))
    return go.Figure(dict(data=data, layout=layout))
