"""Home: what gradviz shows, the embedded default's summary, and where to go next."""

import streamlit as st

from gradviz.plots import figures as plots
from gradviz.reporting.plaintext import md_text
from gradviz.ui.cache import get_result
from gradviz.ui.errors import user_errors
from gradviz.ui.pages import PAGES
from gradviz.ui.sidebar import current_config
from gradviz.ui.widgets import metrics_dataframe
from gradviz.ui.sidebar import ensure_frame

ensure_frame()

st.title("gradviz — how uncertain is the classifier?")
st.markdown(
    "gradviz backpropagates through an image classifier and turns the **gradients** into per-sample "
    "**uncertainty scores** (higher = more uncertain). It compares in-distribution images with "
    "out-of-distribution ones (letters, noise, corruptions, your own uploads) through histograms, ROC curves "
    "and per-layer gradient profiles, and explains single predictions with attribution maps. "
    "Everything runs locally on a bundled MNIST model, no network needed."
)
cfg = current_config()
with user_errors("Pick another dataset or model in the sidebar."):
    result = get_result(cfg)
for message in result.warnings:  # NaN/inf scores, sets too small for metrics: said, never a silent NaN
    st.warning(md_text(message))

st.subheader(md_text(f"{cfg.model}: {cfg.id} (ID) vs {', '.join(cfg.ood) or 'no OOD set'}"))
left, right = st.columns([3, 2])
with left:
    st.markdown("**Detection metrics** (AUROC ↑, FPR95 ↓) by method family — the best **output**, **feature** and "
                "**gradient** method per OOD set and column highlighted")
    metrics_dataframe(result.metrics, per_family=True,  # all columns: Compare distributions → metrics tab
                      columns=["ood_dataset", "method", "family", "auroc", "fpr95", "detection_error"])
with right:
    method = "gaia_z" if "gaia_z" in result.scores else cfg.method_names()[0]
    st.plotly_chart(plots.score_histogram(result.scores, method), width="stretch")

st.subheader("Where next")
links = [p for p in PAGES if not p.default]
for i, column in enumerate(st.columns(3)):
    for p in links[i::3]:
        column.page_link(p.path, label=p.title, icon=p.icon, help=p.description)
