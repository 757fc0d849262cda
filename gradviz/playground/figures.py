"""Plotly figures of the playground (data in, ``go.Figure`` out, no Streamlit).

Methods are coloured by family everywhere on the page: one hue per family (output scores blue,
feature-space green, gradient red, input-gradient orange, any other family from a spare hue),
and within a family each method its own shade, so the gauges, the histograms' titles and the
path lines agree.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import plotly.colors as pc
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gradviz.playground.live import Reference
from gradviz.plots import LAYOUT, dataset_color

__all__ = ["family_color", "method_shades", "percentile_gauges", "marker_histograms", "path_figure"]

FAMILY_SCALES = {"output": "Blues", "feature": "Greens", "gradient": "Reds", "input-gradient": "Oranges"}
SPARE_SCALES = ["Purples", "Greys", "BuPu", "YlOrBr"]


def _scale(family: str) -> str:
    if family in FAMILY_SCALES:
        return FAMILY_SCALES[family]
    return SPARE_SCALES[int(hashlib.md5(family.encode()).hexdigest(), 16) % len(SPARE_SCALES)]


def family_color(family: str) -> str:
    """The family's main colour (the gauges' bars)."""
    return pc.sample_colorscale(_scale(family), [0.7])[0]


def method_shades(methods: list[str], families: dict[str, str]) -> dict[str, str]:
    """A colour per method: its family's hue, a different shade for each method of the family."""
    out = {}
    for fam in dict.fromkeys(families.get(m, "other") for m in methods):
        members = [m for m in methods if families.get(m, "other") == fam]
        points = [0.7] if len(members) == 1 else list(np.linspace(0.45, 0.95, len(members)))
        for m, c in zip(members, pc.sample_colorscale(_scale(fam), points)):
            out[m] = c
    return out


def percentile_gauges(scores: pd.DataFrame, id_spec: str, height_per_row: int = 24) -> go.Figure:
    """One bar per method: its ID percentile (0–100) for one sample, coloured by family.

    ``scores``: rows of :class:`gradviz.playground.live.LiveReport.scores` for one sample.
    """
    part = scores.iloc[::-1]  # first method on top
    fig = go.Figure()
    fig.add_trace(go.Bar(y=part["method"], x=[100] * len(part), orientation="h", marker_color="#eeeeee",
                         hoverinfo="skip", showlegend=False))
    for fam in dict.fromkeys(scores["family"]):
        sub = part[part["family"] == fam]
        pct = sub["percentile"].to_numpy(dtype=float)
        fig.add_trace(go.Bar(
            y=sub["method"], x=np.nan_to_num(pct), orientation="h", name=fam, marker_color=family_color(fam),
            text=[f"{p:.0f} %" if np.isfinite(p) else "n/a" for p in pct], textposition="outside", cliponaxis=False,
            customdata=np.stack([sub["title"], sub["score"]], axis=1),
            hovertemplate="%{customdata[0]}<br>score %{customdata[1]:.4g}<br>more uncertain than %{x:.0f} % of "
                          + id_spec + "<extra></extra>"))
    fig.add_vline(x=95, line_dash="dot", line_color="#444", annotation_text="95 %", annotation_position="top")
    fig.update_layout(barmode="overlay", title=f"Uncertainty as ID percentile (vs {id_spec})",
                      xaxis=dict(range=[0, 112], title=f"% of {id_spec} samples less uncertain", tickvals=[0, 25, 50, 75, 95]),
                      height=height_per_row * len(part) + 130, bargap=0.25,
                      **{**LAYOUT, "legend": dict(orientation="h", y=-0.25, title_text="family")})
    return fig


def marker_histograms(reference: Reference, sample: dict[str, float], methods: list[str] | None = None,
                      cols: int = 4, row_height: int = 150) -> go.Figure:
    """Each method's ID/OOD score densities (bins from ``reference``) with this sample's score as a black line.

    Methods whose scores span orders of magnitude are drawn on a log10 axis (their title says so)."""
    methods = [m for m in (methods or reference.methods) if m in set(reference.histograms["method"])]
    rows = max(1, -(-len(methods) // cols))
    titles = [f"{m} (log₁₀)" if m in reference.log_axis else m for m in methods]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.05, vertical_spacing=0.5 / rows)
    shown = set()
    for k, m in enumerate(methods):
        r, c = k // cols + 1, k % cols + 1
        part = reference.histograms[reference.histograms["method"] == m]
        top = 0.0
        for (spec, role), sets in part.groupby(["dataset", "role"], sort=False):
            name = f"{spec} ({role.upper()})"
            top = max(top, float(sets["density"].max()))
            fig.add_trace(go.Bar(x=(sets["left"] + sets["right"]) / 2, y=sets["density"], width=sets["right"] - sets["left"],
                                 marker_color=dataset_color(spec, role), opacity=0.55, name=name, legendgroup=name,
                                 showlegend=name not in shown, hovertemplate=f"{name}<br>{m}=%{{x:.3g}}<extra></extra>"),
                          row=r, col=c)
            shown.add(name)
        v = float(reference.hist_axis(m, [sample.get(m, np.nan)])[0])
        if np.isfinite(v):
            fig.add_trace(go.Scatter(x=[v, v], y=[0, top * 1.05], mode="lines", line=dict(color="black", width=3),
                                     name="this image", legendgroup="this image", showlegend="this image" not in shown,
                                     hovertemplate=f"this image<br>{m}={sample.get(m):.4g}<extra></extra>"), row=r, col=c)
            shown.add("this image")
    fig.update_layout(barmode="overlay", height=rows * row_height + 130,
                      title="Where this image falls in each method's score distributions (black line)",
                      **{**LAYOUT, "margin": dict(l=30, r=10, t=70, b=60),
                         "legend": dict(orientation="h", y=-0.04 * 4 / rows, yanchor="top", x=0)})
    fig.update_yaxes(showticklabels=False)
    fig.update_xaxes(nticks=4, tickfont=dict(size=10))
    fig.update_annotations(font_size=12)
    return fig


def path_figure(percentiles: pd.DataFrame, values: np.ndarray, labels: list[str], predictions: list[str],
                confidence: np.ndarray, colors: dict[str, str], axis_title: str, id_spec: str,
                selected: int | None = None) -> go.Figure:
    """Every method's ID percentile along a path (top) and the prediction per step (bottom).

    ``percentiles``: one row per step, one column per method. Every point's ``customdata[0]`` is
    its step index, so a click (``on_select``) tells which step to load.
    """
    steps = np.arange(len(values))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.06)
    hover_pred = [f"{p} (p={c:.2f})" for p, c in zip(predictions, confidence)]
    for m in percentiles.columns:
        fig.add_trace(go.Scatter(
            x=values, y=percentiles[m], mode="lines+markers", name=m, line=dict(color=colors.get(m), width=2),
            marker=dict(size=5), customdata=np.stack([steps, labels, hover_pred], axis=1),
            hovertemplate=f"{m}: %{{y:.0f}} %<br>step %{{customdata[0]}} · %{{customdata[1]}}"
                          "<br>predicted %{customdata[2]}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(
        x=values, y=predictions, mode="markers", showlegend=False,
        marker=dict(size=11, color=confidence, colorscale="Greys", cmin=0, cmax=1, line=dict(color="black", width=1),
                    colorbar=dict(title="p", len=0.3, y=0.12, thickness=10)),
        customdata=np.stack([steps, labels, hover_pred], axis=1),
        hovertemplate="step %{customdata[0]} · %{customdata[1]}<br>predicted %{customdata[2]}<extra></extra>"), row=2, col=1)
    if selected is not None and 0 <= selected < len(values):
        fig.add_vline(x=float(values[selected]), line_color="black", line_dash="dash")
    fig.add_hline(y=95, line_dash="dot", line_color="#888", row=1, col=1)
    fig.update_yaxes(title_text=f"ID percentile (vs {id_spec})", range=[-3, 103], row=1, col=1)
    fig.update_yaxes(title_text="prediction", type="category", row=2, col=1)
    fig.update_xaxes(title_text=axis_title, row=2, col=1)
    fig.update_layout(height=560, title="Along the path: every score (as ID percentile) and the prediction — click a step to load it",
                      clickmode="event+select", dragmode=False,
                      **{**LAYOUT, "legend": dict(orientation="v", x=1.02, y=1.0), "margin": dict(l=60, r=20, t=60, b=50)})
    return fig
