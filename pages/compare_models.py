"""Compare models: two or more models scored on the sidebar's ID / OOD sets, side by side."""

import streamlit as st

from gradviz.plots import figures as plots
from gradviz.analysis.model_compare import HIGHER_BETTER
from gradviz.reporting.plaintext import md_text
from gradviz.reporting.tables import to_csv
from gradviz.ui.compare_models import get_model_comparison
from gradviz.ui.model_panel import describe, model_options
from gradviz.ui.errors import user_errors
from gradviz.ui.sidebar import current_config, ensure_frame
from gradviz.ui.widgets import download_figure

ensure_frame()

st.title("Compare models")
st.caption("The same ID and OOD sets, methods, samples and seed (sidebar) for every model: does a CNN's or a "
           "transformer's uncertainty tell OOD apart better? Higher score = more uncertain.")
cfg = current_config()
options = list(dict.fromkeys([cfg.model, *model_options()]))
default = [cfg.model] + [m for m in ("mnist-cnn", "mnist-vit") if m != cfg.model][:1]
models = st.multiselect("Models", options, default=[m for m in default if m in options], key="cm_models",
                        format_func=describe,
                        help="Add your own upload, a plugin or a server model in the sidebar first.")
if len(models) < 2:
    st.info("Choose at least two models to compare.")
    st.stop()
if not cfg.ood:
    st.info("Choose at least one OOD set in the sidebar to compare detection metrics.")
    st.stop()

with user_errors("Pick other models or datasets."):
    comparison = get_model_comparison(cfg, models)
for name, reason in comparison.errors.items():
    st.error(f"**{md_text(name)}** could not be scored: {md_text(reason)}")
for name, refused in comparison.unsupported.items():
    first = next(iter(refused.values()))
    st.warning(f"**{md_text(name)}**: {len(refused)} method(s) cannot run on this model and are left out "
               f"({', '.join(refused)}) — e.g. {md_text(first if len(first) < 160 else first[:159] + '…')}")
if len(comparison.results) < 1:
    st.stop()
scored = comparison.models

st.subheader("Detection metrics per model")
metric = st.segmented_control("Metric", ["auroc", "fpr95", "aupr_in", "aupr_out"], default="auroc",
                              key="cm_metric") or "auroc"
st.caption(f"{metric.upper()} {'↑ higher is better' if metric in HIGHER_BETTER else '↓ lower is better'}; "
           "the best model per OOD set and method is highlighted.")
fig = plots.model_metric_bars(comparison.metrics, metric, scored)
st.plotly_chart(fig, width="stretch", key="cm_bars")
wide = comparison.table(metric)
model_cols = [m for m in scored if m in wide.columns]
highlight = (lambda row: ["background-color: #c7e9c0; font-weight: bold" if c in model_cols and  # noqa: E731
                          row[c] == (row[model_cols].max() if metric in HIGHER_BETTER else row[model_cols].min())
                          else "" for c in row.index])
st.dataframe(wide.style.apply(highlight, axis=1).format({m: "{:.3f}" for m in model_cols}, na_rep="—"),
             hide_index=True, width="stretch", key="cm_table")

st.subheader("Score distributions per model")
common = [m for m in cfg.method_names() if all(m in comparison.results[n].scores for n in scored)]
any_method = [m for m in cfg.method_names() if any(m in comparison.results[n].scores for n in scored)]
method = st.selectbox("Method", common or any_method, key="cm_method",
                      help="Scores are on each model's own scale, so each model has its own histogram.")
columns = st.columns(len(scored))
histograms = {}
for col, name in zip(columns, scored):
    scores = comparison.results[name].scores
    if method not in scores:
        col.info(f"{method} does not run on {md_text(name)}.")
        continue
    histograms[name] = plots.score_histogram(scores, method, title=f"{describe(name)}: {method}")
    col.plotly_chart(histograms[name], width="stretch", key=f"cm_hist_{name}")
    acc = scores.loc[scores["role"] == "id", "correct"].astype("float").mean()
    col.caption(f"ID accuracy {acc:.1%}" if acc == acc else "ID labels unknown: no accuracy")

st.subheader("Exports")
c1, c2, c3 = st.columns(3)
c1.download_button("⬇ metrics.csv (all models)", lambda: to_csv(comparison.metrics), "model_metrics.csv",
                   "text/csv", key="cm_dl_metrics", on_click="ignore")
c2.download_button("⬇ scores.csv (all models)", lambda: to_csv(comparison.scores), "model_scores.csv",
                   "text/csv", key="cm_dl_scores", on_click="ignore")
c3.download_button("⬇ metrics.json", lambda: comparison.metrics.to_json(orient="records", indent=2),
                   "model_metrics.json", "application/json", key="cm_dl_json", on_click="ignore")
download_figure(fig, f"models_{metric}", key="cm_dl_bars")
