"""Corruption lab (Lee & AlRegib 2020): how uncertainty scores react as a corruption grows stronger."""

import streamlit as st

from gradviz.analysis import sweeps as analysis

from gradviz.plots import figures as plots

from gradviz.plots import trust as plots_trust
from gradviz.data.corruptions import list_corruptions
from gradviz.trust.report import calibration_by_severity
from gradviz.ui.cache import get_dataset, get_severity_scores, get_severity_table
from gradviz.ui.errors import user_errors
from gradviz.reporting.plaintext import md_text
from gradviz.ui.sidebar import current_config
from gradviz.ui.widgets import column_config, download_figure, download_table, image_tiles, line_picker, to_uint8
from gradviz.ui.sidebar import ensure_frame

ensure_frame()

st.title("Corruption lab")
st.caption("Corrupted-input detection as in Lee & AlRegib 2020 ([arXiv 2008.08030](https://arxiv.org/abs/2008.08030)): "
           "the clean ID test images against the *same* images corrupted at severity 1–5 (CIFAR-10-C style). "
           "A good detector's AUROC climbs with severity.")

cfg = current_config()
corruptions = list_corruptions()
names = [getattr(c, "name", c) for c in corruptions]
c1, c2, c3 = st.columns([2, 2, 2])
default = names.index("gaussian_noise") if "gaussian_noise" in names else 0
corruption = c1.selectbox("Corruption", names, index=default, key="cl_corruption")
severity = c2.slider("Severity shown in the gallery", 1, 5, 3, key="cl_severity")
methods = cfg.method_names()
method = c3.selectbox("Method for the histogram", methods, key="cl_method",
                      index=methods.index("msp") if "msp" in methods else 0)

with user_errors("Pick another corruption, or the built-in MNIST model and ID set in the sidebar."):
    sets = {s: get_dataset(cfg.model, cfg.weights, cfg.id if s == 0 else analysis.corruption_spec(corruption, s),
                           cfg.limit, cfg.seed) for s in (0, *analysis.SEVERITIES)}
    scores, blank = get_severity_scores(cfg, corruption)
for message in blank:  # a method that cannot be fitted on the fit set (e.g. a small own ID set)
    st.warning(md_text(message))

st.subheader("What the corruption does")
images, titles = analysis.severity_examples(sets, index=0)
st.plotly_chart(plots.image_row([to_uint8(i) for i in images], titles), width="stretch", key="cl_row")
st.markdown(f"**Severity {severity}**: the first samples of the set")
image_tiles(list(sets[severity].images[:8]), [f"#{i}" for i in range(min(8, len(sets[severity])))], columns=8, width=72)

table = get_severity_table(cfg, corruption, scores, methods)
lines = line_picker(methods, table.groupby("method")["auroc"].mean().to_dict(), key="cl_lines", what="mean AUROC")
left, right = st.columns(2)
with left:
    fig_hist = plots.severity_histogram(scores, method)
    st.plotly_chart(fig_hist, width="stretch", key="cl_hist")
with right:
    fig_curve = plots.severity_curve(table, corruption, "auroc", lines)
    st.plotly_chart(fig_curve, width="stretch", key="cl_curve")
st.caption("Left: one method's scores, clean (blue) then severity 1 → 5 (light → dark). Right: AUROC of clean vs "
           "corrupted for the methods picked above; 0.5 = the corrupted images look as certain as clean ones, below "
           "0.5 = *more* certain (over-confidence: e.g. MSP on heavy noise for the bundled model).")

st.subheader("Calibration vs severity")
calibration = calibration_by_severity(scores)
fig_cal = plots_trust.calibration_severity_figure(calibration, corruption)
st.plotly_chart(fig_cal, width="stretch", key="cl_calibration")
st.caption("The model's max-softmax confidence (before temperature scaling) against its accuracy on the same images; "
           "ECE with 15 equal-width bins. A confidence that stays high while accuracy falls is over-confidence. "
           "Temperature scaling and the reliability diagram: the Trust page.")

st.subheader("Metrics per method and severity")
st.dataframe(table, hide_index=True, width="stretch", key="cl_table",
             column_config=column_config(table.columns, "%.3f"))
d1, d2, d3, d4, d5 = st.columns(5)
with d1:
    download_table("⬇ severity_metrics.csv", table, f"severity_{corruption}.csv", key="cl_dl_metrics")
with d2:
    download_table("⬇ severity_scores.csv", scores, f"severity_scores_{corruption}.csv", key="cl_dl_scores")
with d3:
    download_figure(fig_curve, f"severity_auroc_{corruption}", key="cl_dl_curve")
with d4:
    download_figure(fig_hist, f"severity_hist_{corruption}_{method}", key="cl_dl_hist")
with d5:
    download_table("⬇ severity_calibration.csv", calibration, f"severity_calibration_{corruption}.csv",
                   key="cl_dl_calibration")
