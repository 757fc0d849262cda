"""Compare distributions: tabs (distributions, threshold, galleries; ROC/PR; metrics, exports; map of the data)."""

from dataclasses import replace

import streamlit as st

from gradviz.analysis import samples as gi
from gradviz.plots import figures as plots
from gradviz.methods.registry import methods_by_family
from gradviz.reporting.plaintext import md_code, md_text
from gradviz.ui.cache import get_result, images_of_rows
from gradviz.ui.errors import user_errors
from gradviz.ui.datamap import data_map_tab
from gradviz.ui.sidebar import current_config, ensure_frame
from gradviz.ui.uploads import (UPLOAD_HELP, UPLOAD_LABEL, UPLOAD_TYPES, decode_uploads, show_file_reports,
                                show_upload_errors, upload_max_mb)
from gradviz.ui.widgets import decomposition, download_figure, download_results, image_tiles, metrics_dataframe
from gradviz.ui.widgets import line_picker, method_caption, method_label, send_to_inspect, threshold_picker

ensure_frame()

st.title("Compare distributions")
st.caption("How each method's uncertainty separates the ID set from every OOD set (higher = more uncertain).")
cfg = current_config()

with st.expander("Add your own images as an extra OOD set", expanded=False):
    files = st.file_uploader(UPLOAD_LABEL, type=UPLOAD_TYPES, accept_multiple_files=True, key="cmp_upload",
                             max_upload_size=upload_max_mb(), help=UPLOAD_HELP)
    if files:
        data, errors = decode_uploads(files, cfg)
        show_upload_errors(errors)
        st.session_state["gv_uploads"] = {data.spec: data} if data is not None else {}
    uploads = st.session_state.get("gv_uploads") or {}
    if uploads and st.button("Forget the uploaded set", key="cmp_forget"):
        st.session_state["gv_uploads"] = uploads = {}
    for spec, data in uploads.items():
        st.caption(f"{md_code(spec)} joins the OOD sets: {md_text(', '.join(data.paths or []))}")

run_cfg = replace(cfg, ood=[*cfg.ood, *[s for s in uploads if s not in cfg.ood]])
with user_errors("Pick other datasets in the sidebar or remove the failing one."):
    result = get_result(run_cfg, uploads)
for message in result.warnings:
    st.warning(md_text(message))
show_file_reports(result.skipped, result.notes, key="cmp_report")  # folder files skipped, uploads altered
scores, methods = result.scores, [m.name for ms in methods_by_family(run_cfg.method_names()).values() for m in ms]
ood_sets = list(dict.fromkeys(scores.loc[scores["role"] == "ood", "dataset"]))
if not ood_sets:
    st.info("Choose at least one OOD set in the sidebar (or upload images above) to compare distributions.")
    st.stop()


TABS = ("Score distributions", "ROC & precision-recall", "Detection metrics & exports", "Map of the data")
VIEWS = ("Histogram", "Every sample")


@st.fragment
def distributions() -> None:
    """Method, threshold, one chart (histogram or every sample), galleries: their widgets rerun only this part."""
    method = st.selectbox("Method (by family)", methods, key="cmp_method", format_func=method_label)
    if len(result.metrics):
        st.caption(method_caption(result.metrics, method))
    picked = threshold_picker(scores, method, key=f"cmp_accept_{method}")
    if picked is None:  # every ID score NaN/inf: said by the picker
        return
    threshold, default_thr, label, offset = picked
    view = st.segmented_control("Chart", VIEWS, default=VIEWS[0], key="cmp_view",
                                help="Every sample: one point per image; select points (click, box or lasso) to see "
                                     "those images and send one to the Inspect page.") or VIEWS[0]
    selected = scores.iloc[:0]
    if view == VIEWS[0]:
        fig = plots.score_histogram(scores, method, threshold=threshold)
        st.plotly_chart(fig, width="stretch", key="cmp_hist")
    else:
        fig = plots.score_strip(scores, method, threshold)
        event = st.plotly_chart(fig, width="stretch", key="cmp_strip", on_select="rerun",
                                selection_mode=("points", "box", "lasso"))
        selected = gi.rows_from_selection(scores, event.selection.points if event else [])
        if len(selected):
            st.markdown(f"**{len(selected)} selected sample(s)** (box/lasso on the plot; double-click to clear)")
            image_tiles(images_of_rows(selected, cfg, uploads), gi.sample_captions(selected, method), columns=8)
        else:
            st.caption("Select points (click, box or lasso) to see those images here.")
    summary = gi.threshold_summary(scores, method, threshold, default=default_thr)
    c1, c2 = st.columns([3, 2])
    c1.markdown(f"**Accepted / rejected at {label} ≤ {threshold + offset:.4g}** (default {default_thr + offset:.4g} "
                "accepts 95 % of ID)")
    c1.dataframe(summary.counts, hide_index=True, width="stretch", key="cmp_counts",
                 column_config={"accepted_pct": st.column_config.NumberColumn("acc. %", format="%.1f %%",
                                                                             help="Accepted, %"),
                                "accepted_pct_default": st.column_config.NumberColumn(
                                    "at default", format="%.1f %%", help="Accepted at the default threshold, %")})
    c2.markdown(f"**{len(summary.flips)} sample(s) change decision** vs the default threshold")
    c2.dataframe(summary.flips[["dataset", "index", "label", "prediction", method, "change"]], hide_index=True,
                 width="stretch", height=240, key="cmp_flips")

    st.subheader("Most and least uncertain samples per set")
    gallery = gi.extremes(scores, method, k=6)
    sets = list(dict.fromkeys(gallery["dataset"]))
    spec = st.segmented_control("Set", sets, default=sets[0], key="cmp_gallery_set", format_func=md_text) or sets[0]
    for which, label in (("most", "Most uncertain"), ("least", "Least uncertain")):
        rows = gallery[(gallery["dataset"] == spec) & (gallery["which"] == which)]
        st.markdown(f"**{md_text(label)}** in {md_code(spec)}")
        image_tiles(images_of_rows(rows, cfg, uploads), gi.sample_captions(rows, method), columns=6)
    send_to_inspect([*zip(selected["dataset"], selected["index"]), *zip(gallery["dataset"], gallery["index"])],
                    key="cmp")
    download_figure(fig, f"{'histogram' if view == VIEWS[0] else 'strip'}_{method}", key="cmp_dl_dist")


@st.fragment
def curves() -> None:
    """ROC and precision-recall of one OOD set (its picker reruns only this part)."""
    ood_col, kind_col = st.columns([2, 3])
    ood = ood_col.selectbox("OOD set", ood_sets, key="cmp_ood")
    kinds = {"ROC": "roc", "Precision-recall (ID positive)": "pr_in", "Precision-recall (OOD positive)": "pr_out"}
    kind = kinds[kind_col.segmented_control("Curve", list(kinds), default="ROC", key="cmp_curve") or "ROC"]
    rows = result.metrics[result.metrics["ood_dataset"] == ood] if len(result.metrics) else result.metrics
    lines = line_picker(methods, dict(zip(rows.get("method", []), rows.get("auroc", []))), key="cmp_lines")
    if kind == "roc":
        fig = plots.roc_figure(scores, lines, ood, metrics=result.metrics)
    else:
        fig = plots.pr_figure(scores, lines, ood, positive={"pr_in": "id", "pr_out": "ood"}[kind],
                              metrics=result.metrics)
    st.plotly_chart(fig, width="stretch", key=f"cmp_{kind}")
    download_figure(fig, f"{kind}_{ood.replace(':', '_')}", key=f"cmp_dl_{kind}")


# Only the open tab runs and is drawn (a page of every chart at once took the browser ~1 s to redraw).
dist_tab, curve_tab, metric_tab, map_tab = st.tabs(TABS, key="cmp_tab", on_change="rerun")
if dist_tab.open:
    with dist_tab:
        distributions()
if curve_tab.open:
    with curve_tab:
        curves()
if metric_tab.open:
    with metric_tab:
        st.caption("AUROC ↑, FPR95 ↓ (OOD accepted at 95 % ID), AUPR-In/Out ↑; by family, best per OOD set "
                   "highlighted.")
        metrics_dataframe(result.metrics, key="cmp_metrics")
        decomposition(run_cfg, uploads, key="cmp_decomp")
        st.markdown("**Exports**")
        download_results(result, key="cmp_res")
data_map_tab(map_tab, run_cfg, scores, uploads, methods)
