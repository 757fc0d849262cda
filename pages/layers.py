"""Layer profiles (Oberdiek et al. 2018): which layer's gradient statistic separates ID from OOD."""

from dataclasses import replace

import streamlit as st

from gradviz.analysis import sweeps as analysis

from gradviz.plots import figures as plots
from gradviz.engine import LOSSES
from gradviz.analysis.layers import entropy_correlation, layer_bands
from gradviz.reporting.plaintext import md_text
from gradviz.scoring import too_few_samples
from gradviz.reporting.tables import aligned_column, flat_layer_table
from gradviz.ui.cache import get_coverage, get_layer_auroc, get_layer_table, get_result
from gradviz.ui.errors import user_errors
from gradviz.ui.sidebar import current_config
from gradviz.ui.widgets import download_figure, download_table
from gradviz.ui.sidebar import ensure_frame

ensure_frame()

st.title("Layer profiles")
st.caption("Oberdiek, Rottmann & Gottschalk 2018 ([arXiv 1805.08440](https://arxiv.org/abs/1805.08440)): per "
           "sample, the gradient of a loss w.r.t. every layer's weights, summarised by six statistics (L1, L2, max, "
           "min, mean, std).")

cfg = current_config()
if not cfg.ood:
    st.info("Choose at least one OOD set in the sidebar to compare layer profiles.")
    st.stop()

c1, c2, c3 = st.columns(3)
losses = list(LOSSES)
loss = c1.selectbox("Loss backpropagated", losses, index=losses.index("nll_pred") if "nll_pred" in losses else 0,
                    key="ly_loss",
                    help="nll_pred: −log p of the predicted class (Oberdiek). confounding_*: BCE against the all-ones "
                         "label (Lee & AlRegib 2020), sigmoid or softmax reading.")
ood = c2.selectbox("OOD set", cfg.ood, key="ly_ood")

with user_errors("Pick other datasets or a smaller sample count in the sidebar."):
    table = get_layer_table(cfg, [cfg.id, *cfg.ood], loss=loss)
    entropy_scores = get_result(replace(cfg, methods=["entropy"])).scores

stats = list(dict.fromkeys(table.columns.get_level_values("stat")))
stat = c3.selectbox("Statistic", stats, index=stats.index("l2") if "l2" in stats else 0, key="ly_stat")

st.subheader(md_text(f"Which layer separates {cfg.id} (ID) from {ood}?"))
counts = table.groupby(level="dataset").size()
problem = too_few_samples({s: int(counts.get(s, 0)) for s in (cfg.id, ood)})
if problem:
    st.warning(f"No layer AUROC: {problem}.")
    st.stop()
auroc = get_layer_auroc(cfg, loss, ood, table)
with user_errors("Pick another loss or OOD set."):
    best = analysis.best_layer_stat(auroc)
st.success(f"Best single metric: **{best['stat']} of layer `{best['layer']}`** — AUROC {best['auroc']:.3f} "
           f"(OOD has {best['direction']} values; separation {best['separation']:.3f}). "
           "AUROC < 0.5 means the statistic is *smaller* for OOD: it still separates, with the sign flipped.")
fig_auroc = plots.heatmap(auroc, f"AUROC per layer × statistic: {cfg.id} vs {ood} (0.5 = chance)")
fig_auroc.update_yaxes(autorange="reversed", title="layer (input at top)")
st.plotly_chart(fig_auroc, width="stretch", key="ly_auroc")

st.subheader("Per-layer profile with ID/OOD bands")
roles = {cfg.id: "id", **{s: "ood" for s in cfg.ood}}
bands = layer_bands(table, stat, roles)
log_ok = analysis.log_scale_ok(bands)
log = st.toggle("Log scale", value=log_ok, disabled=not log_ok, key="ly_log",
                help=None if log_ok else f"'{stat}' takes values ≤ 0: linear axis only")
fig_profile = plots.layer_profile(bands, stat, log=log and log_ok)
st.plotly_chart(fig_profile, width="stretch", key="ly_profile")
st.caption("Lines: median per dataset; shaded: 5–95 % of samples. Where the bands stop overlapping, that layer's "
           "gradient alone tells ID from OOD.")

st.subheader("How much of each metric is just entropy?")
entropy = aligned_column(entropy_scores, table.index, "entropy")
corr = entropy_correlation(table, entropy)
fig_corr = plots.heatmap(corr, "Spearman correlation with softmax entropy (all samples)", zmid=0.0, zlabel="ρ")
fig_corr.update_yaxes(autorange="reversed", title="layer (input at top)")
st.plotly_chart(fig_corr, width="stretch", key="ly_corr")
st.caption("|ρ| near 1: the metric ranks samples like entropy does (little new information). Metrics with low |ρ| "
           "but high AUROC above are the interesting ones — they feed the meta classifier.")

with st.expander("How the gradient engine covers this model's parameters"):
    cov = get_coverage(cfg)
    covered = cov.loc[cov.status != "NOT COVERED", "entries"].sum()
    st.caption(f"{covered:,} of {cov.entries.sum():,} parameters ({100 * covered / max(1, cov.entries.sum()):.1f} %) "
               "in forward order: each group's plan — closed form, materialised in chunks, or the exact generic "
               "fallback — and `unused` for parameters the forward never reaches (gradient 0).")
    st.dataframe(cov, hide_index=True, width="stretch")

st.subheader("Downloads")
d1, d2, d3, d4 = st.columns(4)
with d1:
    download_table("⬇ layers.csv", flat_layer_table(table), f"layers_{loss}.csv", key="ly_dl_csv")
with d2:
    download_figure(fig_auroc, "layer_auroc", key="ly_dl_auroc")
with d3:
    download_figure(fig_profile, f"layer_profile_{stat}", key="ly_dl_profile")
with d4:
    download_figure(fig_corr, "entropy_correlation", key="ly_dl_corr")
