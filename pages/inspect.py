"""Inspect a sample: prediction, every uncertainty score vs the ID distribution, attributions, GAIA, layer profile."""

import numpy as np
import streamlit as st

from gradviz.analysis import samples as gi
from gradviz.plots import figures as plots
from gradviz.explain.attributions import default_attributions, list_attributions, to_png_bytes
from gradviz.engine import STATS
from gradviz.analysis.layers import layer_bands
from gradviz.reporting.plaintext import md_text
from gradviz.scoring import images_digest
from gradviz.ui.datamap import where_it_lands
from gradviz.ui.explain import explain_picker, explained, map_checks
from gradviz.ui.cache import get_dataset, get_layer_table, get_model, get_result
from gradviz.ui.errors import user_errors
from gradviz.ui.samples import attribution, per_sample, sample_report
from gradviz.data import dataset_options
from gradviz.ui.sidebar import current_config
from gradviz.ui.sidebar import ensure_frame
from gradviz.ui.uploads import (UPLOAD_HELP, UPLOAD_LABEL, UPLOAD_TYPES, decode_uploads, offer_clean_up, set_reports,
                                show_file_reports, show_upload_errors, upload_max_mb)

ensure_frame()

SOURCES = ["Upload images", "A dataset sample"]


def random_index(n: int) -> None:
    st.session_state["ins_index"] = int(np.random.default_rng().integers(n))


st.title("Inspect a sample")
cfg = current_config()
uploads = st.session_state.get("gv_uploads") or {}
sel = st.session_state.get("gv_selected")
if sel and st.session_state.get("ins_applied") != sel:  # a sample sent from the Compare page
    st.session_state.update(ins_applied=sel, ins_source=SOURCES[1], ins_spec=sel[0], ins_index=int(sel[1]))
source = st.radio("Image source", SOURCES, horizontal=True, key="ins_source")
with user_errors("Try another image or dataset."):
    if source == SOURCES[0]:
        files = st.file_uploader(UPLOAD_LABEL, type=UPLOAD_TYPES, accept_multiple_files=True, key="ins_upload",
                                 max_upload_size=upload_max_mb(),
                                 help=UPLOAD_HELP)
        data, errors = decode_uploads(files, cfg)
        show_upload_errors(errors)
        if data is None:
            st.info("Upload one or more images, or switch to a dataset sample.")
            st.stop()
        data = offer_clean_up(files, data, cfg, key="ins_clean")  # a photo of dark ink on paper looks unlike MNIST
        i = st.selectbox("Image", range(len(data)), format_func=lambda k: data.paths[k], key="ins_which") \
            if len(data) > 1 else 0
        name = data.paths[i]
    else:
        options = list(dict.fromkeys([cfg.id, *cfg.ood, *uploads, *dataset_options(), *([sel[0]] if sel else [])]))
        c1, c2, c3 = st.columns([3, 2, 1])
        spec = c1.selectbox("Dataset", options, key="ins_spec")
        data = uploads[spec] if spec in uploads else get_dataset(cfg.model, cfg.weights, spec, cfg.limit, cfg.seed)
        st.session_state["ins_index"] = min(int(st.session_state.get("ins_index", 0)), len(data) - 1)
        i = int(c2.number_input(f"Index (0–{len(data) - 1})", 0, len(data) - 1, key="ins_index"))
        c3.button("Random", key="ins_random", on_click=random_index, args=(len(data),))
        label = int(data.labels[i])
        label_name = data.class_names[label] if data.class_names else label
        name = f"{spec} #{i}" + (f" (label {label_name})" if label >= 0 else "")
    show_file_reports(*set_reports([data]), key="ins_report")
    x = data.images[i:i + 1]  # (1, C, H, W) in [0, 1], as the model sees it
    digest = images_digest(x)
    result = get_result(cfg)  # the ID distribution: reused from the other pages' cache
    report = sample_report(digest, cfg.to_json(), x, result.scores)

model = get_model(cfg.model, cfg.weights)
classes = model.card.class_names
pred = int(report.prediction[0])
left, right = st.columns([1, 2])
with left:
    st.image(gi.display_image(x[0]),
             caption=f"{md_text(name)}: {tuple(x.shape[1:])} input as the model sees it (upscaled)")
with right:
    st.metric("Prediction", f"{md_text(classes[pred])}  (p = {report.probs[0, pred]:.3f})")
    st.plotly_chart(plots.probability_bars(report.probs[0], classes), width="stretch", key="ins_probs")

st.subheader(f"Uncertainty scores vs the ID set ({md_text(cfg.id)})")
shift = [plots.shown_score(m)[1] for m in report.scores["method"]]  # MSP shown as 1 − MSP: display only
table = report.scores.assign(verdict=[f"more uncertain than {p:.0f} % of {cfg.id}" if np.isfinite(p) else "n/a"
                                      for p in report.scores["percentile"]], score=report.scores["score"] + shift,
                             id_median=report.scores["id_median"] + shift)
st.dataframe(table[["method", "title", "score", "id_median", "percentile", "verdict"]], hide_index=True,
             width="stretch", height=35 * (len(table) + 1) + 3, key="ins_scores",
             # the verdict repeats the percentile in words: in the data (CSV, tests), not on screen, where it is
             # cut off
             column_order=["method", "title", "score", "id_median", "percentile"], column_config={
                 "method": st.column_config.TextColumn("method", width=130),  # "gradient_density" was cut at auto width
                 "percentile": st.column_config.ProgressColumn(
                     "ID percentile", min_value=0, max_value=100, format="%.0f %%",
                     help=f"More uncertain than this share of {cfg.id}; empty: the method gave no score"),
                 "score": st.column_config.NumberColumn(format="%.4g",
                                                        help="Higher = more uncertain (msp shown as 1 − MSP)"),
                 "id_median": st.column_config.NumberColumn(format="%.4g")})

st.subheader("Attributions (why this prediction, or why this score)")
score = explain_picker(cfg, "ins")
names = [a.name for a in list_attributions()]
a1, a2, a3, a4 = st.columns([3, 1, 1, 1])
chosen = a1.multiselect("Methods", names, default=default_attributions(model), key="ins_attr")
alpha = a2.slider("Heat-map opacity", 0.0, 1.0, 0.5, 0.05, key="ins_alpha")
mode = a3.radio("Sign", ["absolute", "signed", "positive"], key="ins_mode")
cmap = a4.selectbox("Colour map", ["default", "inferno", "viridis", "magma", "RdBu_r", "coolwarm", "seismic"],
                    key="ins_cmap")
with user_errors("Deselect the failing attribution method or pick another colour map."):
    atts, failed = explained(digest, cfg, chosen, x, score, lambda m: attribution(digest, cfg.model, cfg.weights, m, x))
    for line in failed:
        st.warning(md_text(line))
    panels = gi.attribution_panels(x[0], atts, mode=mode, cmap=None if cmap == "default" else cmap, alpha=alpha)
for p in panels:
    st.markdown(f"**{p.caption}** — original | heat map | overlay")
    c = st.columns([1, 1, 1, 1])
    for col, img in zip(c, (p.original, p.heat, p.overlay)):
        col.image(img, width="stretch")
    c[1].image(p.scale, caption=p.scale_caption, width="stretch")  # the heat map's colour bar
    c[3].download_button("⬇ overlay.png", to_png_bytes(p.overlay), f"{p.method}_overlay.png", "image/png",
                         key=f"ins_png_{p.method}", on_click="ignore")
map_checks(digest, cfg, x, list(atts), score)
where_it_lands(cfg, result.scores, x, name, cfg.method_names())
st.subheader("Gradients inside the network")
stat = st.selectbox("Layer statistic", list(STATS), index=list(STATS).index("l2"), key="ins_stat")
gaia, profile = per_sample(digest, cfg.model, cfg.weights, stat, x)
st.plotly_chart(plots.heatmap(gaia.T,
                              "GAIA-Z abnormality: fraction of non-zero gradients per channel (layer × channel)",
                              colorscale="Viridis", zmid=None, zlabel="r_k"), width="stretch", key="ins_gaia")
if not st.toggle("Compare with every set's per-layer profile (computes the layer table once)", True, key="ins_layers"):
    st.stop()
with user_errors("Remove the failing OOD set in the sidebar."):
    layer_tab = get_layer_table(cfg, [cfg.id, *cfg.ood], uploads)
bands = layer_bands(layer_tab, stat, roles={cfg.id: "id"})
fig = plots.layer_profile(bands, stat, profile, log=stat in ("l1", "l2", "std"))
st.plotly_chart(fig, width="stretch", key="ins_profile")
st.caption("Black: this image (loss −log p of its prediction). Bands: 5–95 % of each set, line: median.")
