"""Figure builders of the Trust page (selective prediction and calibration): data in, ``go.Figure`` out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gradviz.plots.figures import LAYOUT, method_color, thin_curve

__all__ = ["risk_coverage_figure", "reliability_figure", "calibration_severity_figure"]

ORACLE_COLOR, RANDOM_COLOR = "#2ca02c", "#7f7f7f"


def risk_coverage_figure(curve: pd.DataFrame, method: str, aurc: float | None = None, e_aurc: float | None = None,
                         coverage: float | None = None) -> go.Figure:
    """Selective risk against coverage for ``method`` (``curve`` from gradviz.trust.report.risk_coverage_frame), the
    oracle's and a random score's; a dashed line at the chosen ``coverage``. AURC / E-AURC in the legend."""
    fig = go.Figure()
    if not len(curve):
        return fig.update_layout(title=f"{method}: no finite scores on labelled images", **LAYOUT)
    x, y = thin_curve(curve["coverage"], curve["risk"])
    label = method + (f" (AURC {aurc:.4f}, E-AURC {e_aurc:.4f})" if aurc is not None and e_aurc is not None else "")
    fig.add_trace(go.Scatter(x=x, y=y, name=label, mode="lines", line=dict(color=method_color(method), width=2.5),
                             hovertemplate="coverage %{x:.3f}<br>risk %{y:.4f}<extra></extra>"))
    ox, oy = thin_curve(curve["coverage"], curve["oracle"])
    fig.add_trace(go.Scatter(x=ox, y=oy, name="oracle (every correct one first)", mode="lines",
                             line=dict(color=ORACLE_COLOR, dash="dot")))
    fig.add_trace(go.Scatter(x=[0, 1], y=[curve["random"].iloc[0]] * 2, name="random score (= error rate)",
                             mode="lines", line=dict(color=RANDOM_COLOR, dash="dash")))
    if coverage is not None:
        fig.add_vline(x=coverage, line_dash="dash", line_color="black")
    fig.update_layout(title=f"Risk–coverage: {method} (lower = better)", xaxis_title="coverage (share of predictions "
                      "accepted, least uncertain first)", yaxis_title="selective risk (error rate among accepted)",
                      xaxis_range=[0, 1.01], **LAYOUT)
    return fig


def _bars(fig: go.Figure, bins: pd.DataFrame, col: int, color: str) -> None:
    centre, width = (bins["lower"] + bins["upper"]) / 2, bins["upper"] - bins["lower"]
    text = [f"n={c}" for c in bins["count"]]
    custom = np.column_stack([bins["count"], bins["confidence"]])
    fig.add_trace(go.Bar(x=centre, y=bins["accuracy"], width=width, marker_color=color, name="accuracy",
                         customdata=custom, showlegend=col == 1, marker_line=dict(color="white", width=1),
                         hovertemplate="bin %{x:.3f}<br>accuracy %{y:.3f}<br>mean confidence %{customdata[1]:.3f}"
                                       "<br>%{customdata[0]} images<extra></extra>"), row=1, col=col)
    fig.add_trace(go.Scatter(x=bins["confidence"], y=bins["accuracy"], mode="markers",
                             name="(mean confidence, accuracy)", marker=dict(color="black", size=6),
                             showlegend=col == 1), row=1, col=col)
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration", showlegend=col == 1,
                             line=dict(color=RANDOM_COLOR, dash="dash")), row=1, col=col)
    fig.add_trace(go.Bar(x=centre, y=bins["count"], width=width, marker_color=color, opacity=0.6, name="images per bin",
                         text=text, textposition="outside", showlegend=False,
                         hovertemplate="bin %{x:.3f}<br>%{y} images<extra></extra>"), row=2, col=col)


def reliability_figure(before: pd.DataFrame, after: pd.DataFrame, summary_before: dict, summary_after: dict,
                       temperature: float) -> go.Figure:
    """Reliability diagrams before and after temperature scaling (bins from
    gradviz.trust.calibration.reliability_diagram), accuracy bars over the diagonal, the count of images per bin
    below; ECE/MCE/Brier/NLL in the titles."""

    def title(name: str, s: dict) -> str:
        return (f"{name}<br><sub>ECE {s['ece']:.4f} · MCE {s['mce']:.4f} · Brier {s['brier']:.4f} · "
                f"NLL {s['nll']:.4f}</sub>")

    fig = make_subplots(rows=2, cols=2, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.08,
                        subplot_titles=(title("before (T = 1)", summary_before),
                                        title(f"after temperature scaling (T = {temperature:.3f})", summary_after),
                                        "", ""))
    _bars(fig, before, 1, "#4c78a8")
    _bars(fig, after, 2, "#f58518")
    fig.update_yaxes(range=[0, 1.02], title_text="accuracy", row=1, col=1)
    fig.update_yaxes(type="log", title_text="images", row=2, col=1)
    fig.update_yaxes(type="log", row=2, col=2)
    fig.update_xaxes(range=[0, 1], title_text="confidence (max softmax probability)", row=2)
    fig.update_layout(title="Reliability diagram", barmode="overlay", height=560,
                      **{**LAYOUT, "margin": dict(l=50, r=20, t=90, b=45)})
    return fig


def calibration_severity_figure(table: pd.DataFrame, corruption: str) -> go.Figure:
    """Accuracy, mean confidence and ECE against corruption severity (gradviz.trust.report.calibration_by_severity): the
    gap between the first two is the over-confidence a growing corruption brings."""
    fig = go.Figure()
    for col, name, color, dash in (("accuracy", "accuracy", "#2ca02c", None), ("confidence", "mean confidence",
                                   "#4c78a8", None), ("ece", "ECE", "#d62728", "dash")):
        fig.add_trace(go.Scatter(x=table["severity"], y=table[col], name=name, mode="lines+markers",
                                 line=dict(color=color, dash=dash), customdata=table["n"],
                                 hovertemplate=f"severity %{{x}}<br>{name} %{{y:.3f}}<br>%{{customdata}} images"
                                               "<extra></extra>"))
    fig.update_layout(title=f"Calibration vs severity: {corruption}", xaxis_title="severity (0 = clean)",
                      yaxis_title="share", yaxis_range=[0, 1.02], xaxis=dict(tickmode="linear", dtick=1), **LAYOUT)
    return fig
