"""Meta classifier (Oberdiek et al. 2018): learn to predict errors or OOD inputs from gradient metrics."""

from dataclasses import replace

import streamlit as st

from gradviz.analysis import sweeps as analysis

from gradviz.plots import figures as plots
from gradviz.errors import GradvizError
from gradviz.analysis.meta import FEATURE_SETS, MODELS
from gradviz.reporting.tables import join_layers
from gradviz.ui.cache import get_layer_table, get_meta_report, get_result
from gradviz.ui.errors import user_errors
from gradviz.ui.sidebar import current_config
from gradviz.ui.widgets import download_figure, download_table
from gradviz.ui.sidebar import ensure_frame

ensure_frame()

st.title("Meta classifier")
st.caption("Oberdiek, Rottmann & Gottschalk 2018 ([arXiv 1805.08440](https://arxiv.org/abs/1805.08440)): a small "
           "classifier trained on per-layer gradient statistics (+ entropy) predicts whether the network's prediction "
           "is wrong, or whether the input is out-of-distribution. Scores are cross-validated (held-out folds only).")

cfg = current_config()
c1, c2, c3 = st.columns(3)
tasks = {"correct": "correct vs incorrect (ID)", "ood": "ID vs OOD"}
task = c1.radio("Task", list(tasks), format_func=tasks.get, key="mc_task", horizontal=True)
model = c2.selectbox("Classifier", list(MODELS), key="mc_model",
                     help="logistic: |coefficients| as importances; boosting / mlp: permutation importance")
default_sets = [f for f in ("entropy", "gradient", "gradient+entropy") if f in FEATURE_SETS]
feature_sets = c3.multiselect("Feature sets", list(FEATURE_SETS), default=default_sets, key="mc_features",
                              help="entropy alone · gradient metrics (all layers × 6 statistics) · both · all (+ MSP)")
known = []
if task == "ood":
    if not cfg.ood:
        st.info("The ID-vs-OOD task needs OOD sets: choose at least one in the sidebar.")
        st.stop()
    known = st.multiselect("Known OOD sets (seen in training: 'known unknowns'; the rest stay unseen)", cfg.ood,
                           default=[], key="mc_known")
if not feature_sets:
    st.info("Choose at least one feature set.")
    st.stop()

with user_errors("Pick other datasets or a smaller sample count in the sidebar."):
    scores = get_result(replace(cfg, methods=["entropy", "msp"])).scores
    layers = get_layer_table(cfg, [cfg.id, *(cfg.ood if task == "ood" else [])], loss="nll_pred")
    table = join_layers(scores, layers)

try:
    report = get_meta_report(cfg, table, task=task, known_ood=known or None, feature_set=feature_sets, model=model,
                             cv=5, seed=cfg.seed)
except GradvizError as exc:
    n_wrong = int((scores["role"].eq("id") & scores["correct"].eq(False)).sum())
    st.info(f"**Cannot cross-validate yet.** {exc}.\n\nThe bundled model misclassifies only ~1–2 % of MNIST, so "
            f"{cfg.limit} ID samples hold just {n_wrong} error(s) — too few to learn 'incorrect' from. Raise "
            "*Samples per set* in the sidebar (e.g. 2000+), or pick a harder ID set.")
    st.stop()

for note in report.notes:
    st.caption(f"ℹ️ {note}")
settings = list(dict.fromkeys(report.results["setting"]))
setting = (st.radio("Setting", settings, key="mc_setting", horizontal=True,
                    help="unknown: no OOD seen in training · known: trained on the known OOD sets")
           if len(settings) > 1 else settings[0])
results = report.results[report.results["setting"] == setting]

st.subheader("Cross-validated results: entropy vs gradient metrics vs both")
st.dataframe(results.drop(columns=["curve"]), hide_index=True, width="stretch", key="mc_table",
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("auroc", "accuracy")})
st.caption("'threshold' rows: the single score itself (entropy, MSP) with the best-accuracy threshold from the "
           "training folds — the baseline a meta classifier must beat. 'gradient norms · density' rows (ID vs OOD): "
           "the unsupervised twin — a Gaussian on the per-layer log gradient norms of ID samples, no labels and no "
           "OOD data (the `gradient_density` method; see Learn).")
left, right = st.columns(2)
with left:
    fig_bars = plots.metric_bars(analysis.meta_bar_frame(report.results, setting), "auroc")
    fig_bars.update_layout(title="AUROC per feature set · classifier")
    st.plotly_chart(fig_bars, width="stretch", key="mc_bars")
with right:
    evaluations = list(dict.fromkeys(results["evaluation"]))
    evaluation = st.selectbox("ROC for evaluation", evaluations, key="mc_eval")
    fig_roc = plots.curves_figure(analysis.meta_curves(report, evaluation, setting),
                                  f"Meta-classifier ROC — {tasks[task]}, {evaluation}")
    st.plotly_chart(fig_roc, width="stretch", key="mc_roc")

st.subheader("Which features matter")
fig_imp = plots.importance_bars(report.feature_importances)
st.plotly_chart(fig_imp, width="stretch", key="mc_imp")
st.caption(f"Importances of {report.importance_for}.")

d1, d2, d3, d4 = st.columns(4)
with d1:
    download_table("⬇ meta_results.csv", report.results.drop(columns=["curve"]), f"meta_{task}.csv",
                   key="mc_dl_results")
with d2:
    download_table("⬇ importances.csv", report.feature_importances, "meta_importances.csv", key="mc_dl_imp")
with d3:
    download_figure(fig_bars, f"meta_auroc_{task}", key="mc_dl_bars")
with d4:
    download_figure(fig_roc, f"meta_roc_{task}", key="mc_dl_roc")
