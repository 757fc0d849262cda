"""Trust: when can a prediction be trusted (selective prediction with every score), and are the probabilities
calibrated (reliability diagram before and after temperature scaling)?"""

import numpy as np
import pandas as pd
import streamlit as st

from gradviz.plots import trust as plots_trust
from gradviz.analysis import samples as gi
from gradviz.trust.calibration import STRATEGIES, calibration_summary
from gradviz.methods.registry import methods_by_family
from gradviz.trust.report import (TEMPERATURE_FITS, evaluation_rows, reliability_frames, risk_coverage_frame,
                                  select_at_coverage)
from gradviz.ui.cache import get_result, images_of_rows
from gradviz.ui.errors import user_errors
from gradviz.ui.sidebar import current_config, ensure_frame
from gradviz.ui.trust import get_trust
from gradviz.ui.widgets import download_figure, download_table, image_tiles, method_label, send_to_inspect

ensure_frame()

st.title("Trust")
st.caption("Selective prediction: reject the most uncertain predictions and see how the error rate among the rest "
           "falls (risk–coverage, AURC; Geifman et al. 2019). Calibration: does a confidence of 0.9 mean right 90 % "
           "of the time (reliability diagram, ECE; Guo et al. 2017)? Only labelled images count: the ID set and the "
           "corruptions, never letters or noise.")
st.page_link("pages/learn.py", label="What each curve and number means (Learn)", icon=":material/school:")
cfg = current_config()
with user_errors("Pick a labelled ID set (mnist) in the sidebar."):
    result = get_result(cfg)
    report = get_trust(cfg)
scores = result.scores
methods = [m.name for ms in methods_by_family(cfg.method_names()).values() for m in ms]
shifted_sets = [s for s in report.misclassification["shifted"].unique() if s]
c1, c2 = st.columns(2)
method = c1.selectbox("Score (by family)", methods, key="trust_method", format_func=method_label)
shifted = c2.selectbox("Evaluated on", ["", *shifted_sets], key="trust_set",
                       format_func=lambda s: f"{cfg.id} (ID test set)" if not s else f"{cfg.id} + {s}")
rows = evaluation_rows(scores, shifted)
table = report.misclassification[report.misclassification["shifted"] == shifted]
this = table[table["method"] == method].iloc[0]

st.header("Selective prediction")
GALLERY = 16


@st.fragment
def selective() -> None:
    """Coverage slider, outcome, curve and galleries: moving the slider reruns only this part."""
    coverage = st.slider("Coverage: share of predictions accepted (the least uncertain first)", 0.05, 1.0, 0.9, 0.01,
                         format="%.2f", key="trust_coverage")
    selection = select_at_coverage(rows, method, coverage)
    st.markdown(f"**{selection.sentence()}.** Without rejecting anything, {100 * this['error_rate']:.1f} % are wrong.")
    curve = risk_coverage_frame(rows, method)
    fig = plots_trust.risk_coverage_figure(curve, method, this["aurc"], this["e_aurc"], coverage)
    st.plotly_chart(fig, width="stretch", key="trust_rc")
    d1, d2 = st.columns(2)
    with d1:
        download_figure(fig, f"risk_coverage_{method}", key="trust_dl_rc")
    with d2:
        download_table("⬇ risk_coverage.csv", curve, f"risk_coverage_{method}.csv", key="trust_dl_rc_csv")

    for title, part, empty in (
            ("Rejected (most uncertain first)", selection.rejected, "Nothing is rejected at this coverage."),
            ("Accepted but wrong (least uncertain first)", selection.accepted_wrong,
             "No accepted prediction is wrong.")):
        st.subheader(f"{title}: {len(part):,}")
        if len(part):
            shown = part.head(GALLERY)
            captions = [f"{c} · pred {p}/{lab}"
                        for c, p, lab in zip(gi.sample_captions(shown, method), shown["prediction"], shown["label"])]
            image_tiles(images_of_rows(shown, cfg), captions, columns=8)
        else:
            st.caption(empty)
    send_to_inspect([*zip(selection.accepted_wrong["dataset"], selection.accepted_wrong["index"]),
                  *zip(selection.rejected["dataset"], selection.rejected["index"])][:2 * GALLERY], key="trust")


selective()

st.subheader("Every score at detecting errors")
st.caption("AURC ↓ (mean error among accepted over all coverages), E-AURC ↓ (AURC minus the oracle's), AUROC ↑ "
           "(errors as positives), FPR95 ↓ (errors accepted when 95 % of correct predictions are). Best first.")
shown = table.sort_values("aurc", kind="stable")[["method", "aurc", "e_aurc", "auroc", "fpr95", "n", "n_errors"]]
st.dataframe(shown, hide_index=True, width="stretch", key="trust_table",
             column_config={c: st.column_config.NumberColumn(format="%.4f")
                            for c in ("aurc", "e_aurc", "auroc", "fpr95")})
m1, m2 = st.columns(2)
with m1:
    download_table("⬇ misclassification.csv", report.misclassification, "misclassification.csv", key="trust_dl_misc")
m2.download_button("⬇ config.json", result.config.replayable()[0].to_json(), "config.json", "application/json",
                   key="trust_cfg", on_click="ignore", help="Replay with: python -m gradviz score --config config.json "
                   "--out results/ (metrics.csv rows with task = misclassification, and calibration.csv)")

st.header("Calibration")
b1, b2, b3 = st.columns(3)
strategy = b1.segmented_control("Bins", STRATEGIES, default="uniform", key="trust_strategy",
                                format_func={"uniform": "equal width", "quantile": "equal mass"}.get) or "uniform"
n_bins = b2.slider("Number of bins", 5, 30, 15, key="trust_bins")
fit = b3.radio("Temperature fitted on", report.fits[1:], format_func=TEMPERATURE_FITS.get, key="trust_fit",
               help="The fit split (e.g. mnist:train), or the ID test set cross-fitted: each half scaled by the "
                    "temperature fitted on the other half (shifted sets by the one fitted on all of it).")
before, after = reliability_frames(report, shifted, fit, n_bins, strategy)
z, y = report.evaluation(shifted)
temps = (1.0, report.temperatures(shifted, fit))
summaries = [calibration_summary(z, y, t, n_bins, strategy) for t in temps]
t_after = float(np.mean(temps[1]))
fig = plots_trust.reliability_figure(before, after, *summaries, t_after)
st.plotly_chart(fig, width="stretch", key="trust_reliability")
source = report.temperature_source if fit == "fit" else "mean of the two halves' temperatures of the ID test set"
st.caption(f"Temperature T = {t_after:.3f}, {source}. Scaling the logits by 1/T never changes a prediction, "
           "only how confident it is. Fitted on images the model was trained on (the bundled models' mnist:train), T "
           "tends to come out too small (sharper than the model deserves): compare with the cross-fitted one.")
st.dataframe(pd.DataFrame([{"temperature": float(np.mean(t)), **sm} for t, sm in zip(temps, summaries)]),
             hide_index=True, width="stretch", key="trust_calibration",
             column_config={c: st.column_config.NumberColumn(format="%.4f") for c in ("ece", "mce", "brier", "nll")})
e1, e2 = st.columns(2)
with e1:
    download_figure(fig, "reliability", key="trust_dl_rel")
with e2:
    download_table("⬇ calibration.csv", report.calibration, "calibration.csv", key="trust_dl_cal")
