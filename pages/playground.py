"""Playground: draw a digit, take a picture or pick a sample, watch every score live, walk it out of distribution."""

import numpy as np
import streamlit as st

from gradviz.analysis import samples as gi
from gradviz.plots import figures as plots
from gradviz.engine import STATS
from gradviz.reporting.plaintext import md_text
from gradviz.playground import PATHS, figures
from gradviz.playground.lesson import exercise_markdown
from gradviz.scoring import images_digest
from gradviz.ui import playground as pg
from gradviz.ui.cache import get_model, get_result
from gradviz.ui.errors import user_errors
from gradviz.ui.datamap import where_it_lands
from gradviz.ui.explain import explain_picker, explained
from gradviz.ui.sidebar import current_config, ensure_frame
from gradviz.ui.widgets import line_picker

ensure_frame()

st.title("Playground")
st.caption("Draw a digit, photograph one, or start from a dataset sample: the prediction, every selected method's "
           "score as a percentile of the ID set, and the gradients inside the network update after every stroke. "
           "Then walk the image step by step out of the data and watch which scores notice.")
with st.expander("Guided exercise for a class (4 steps, ~10 minutes)", icon=":material/school:"):
    st.markdown(exercise_markdown())

cfg = current_config()
# One fixed slot for whatever the first computation draws (progress bars, spinners): without it the
# canvas below would move in the page's element tree on the next run, and the browser would remount it.
with st.container():
    with user_errors("Choose the bundled model and built-in sets in the sidebar."):
        model = get_model(cfg.model, cfg.weights)
        ref, band_note = pg.get_reference(cfg)  # once per choice, shared with Compare / Inspect
        runners, blank = pg.get_runners(cfg, ref)
    for message in blank:  # methods that cannot be fitted on the fit set are left out, with the reason
        st.warning(md_text(message))
card, classes = model.card, model.card.class_names

source = st.radio("Start from", pg.SOURCES, horizontal=True, key="pg_source")
left, right = st.columns([2, 3], gap="medium")
with left:
    x_src, src_name = pg.source_image(source, cfg, card)
if x_src is None:
    right.info("Draw a digit on the canvas (or take a picture, or pick a dataset sample) to see its scores.")
    st.stop()
src_digest = images_digest(x_src)
with left:
    x, name, loaded = pg.current_image(x_src, src_digest, src_name)
digest = images_digest(x)
with user_errors("Try another image, or fewer methods in the sidebar."):
    report = pg.live_report(digest, cfg.to_json(), x, runners, ref)
pred = int(report.prediction[0])
with right:
    c1, c2 = st.columns([1, 2])
    made = " (MNIST-style: 20 px box, centred by mass)" if source != pg.SOURCES[2] and loaded is None else ""
    c1.image(gi.display_image(x[0], 168),
             caption=f"The model's input: {md_text(name)}, {card.input_size[1]}×{card.input_size[2]}{made}")
    c1.metric("Prediction", md_text(classes[pred]), f"p = {report.probs[0, pred]:.3f}", delta_color="off",
              delta_arrow="off")
    c1.caption(f"Scored in {1000 * report.seconds:.0f} ms (server)")
    c2.plotly_chart(plots.probability_bars(report.probs[0], classes), width="stretch", key="pg_probs")

st.subheader("Every score, as a percentile of the ID set")
one = report.scores[report.scores["sample"] == 0]
g1, g2 = st.columns([1, 1], gap="medium")
g1.plotly_chart(figures.percentile_gauges(one, ref.id_spec), width="stretch", key="pg_gauges")
with g2:
    stats = list(STATS)
    stat = st.selectbox("Layer statistic", stats, index=stats.index("l2"), key="pg_stat")
    profile = report.profile(stat)
    if stat in ref.bands and profile is not None:
        fig = plots.layer_profile(ref.bands[stat], stat, profile, log=stat in ("l1", "l2", "std"))
        many = profile.size > 24  # a transformer has many named layers: more room for the tick labels
        fig.update_layout(height=560 if many else 420).update_xaxes(tickfont=dict(size=9 if many else 12))
        st.plotly_chart(fig, width="stretch", key="pg_profile")
        st.caption(f"Black: this image (gradient of −log p of its prediction). Blue: 5–95 % of {md_text(ref.id_spec)}.")
    else:
        st.info(band_note or report.note or "No per-layer gradient profile for this model.")
st.plotly_chart(figures.marker_histograms(ref, dict(zip(one["method"], one["score"]))), width="stretch", key="pg_hists")

where_it_lands(cfg, get_result(cfg).scores, x, "this image", cfg.method_names(), key="pg_map", shown=False)
if pg.explain_button(digest):
    score = explain_picker(cfg, "pg")
    with user_errors("Attributions need a model captum can hook; the scores above are unaffected."):
        atts, failed = explained(digest, cfg, pg.attribution_names(), x, score,
                                 lambda m: pg.attributions(digest, cfg.model, cfg.weights, x)[m])
        for line in failed:
            st.warning(md_text(line))
    for p in gi.attribution_panels(x[0], atts, size=168):
        cols = st.columns([1, 1, 1, 2])
        cols[3].markdown(f"**{p.caption}**  \noriginal | heat map | overlay")
        for col, img in zip(cols, (p.original, p.heat, p.overlay)):
            col.image(img, width="stretch")
        cols[1].image(p.scale, caption=p.scale_caption, width="stretch")  # the heat map's colour bar

st.subheader(f"Walk {md_text(src_name)} out of the data")
p1, p2, p3 = st.columns([2, 1, 3], vertical_alignment="bottom")
kind = p1.selectbox("Path", list(PATHS), format_func=lambda k: PATHS[k].title, key="pg_path")
steps = p2.slider("Steps", 20, 50, 31, key="pg_steps", help="All steps are scored together, as one batch.")
p3.caption(PATHS[kind].hint)
target, target_digest = None, None
if PATHS[kind].needs_target:
    target, target_name = pg.sample_picker(cfg, "pg_target", default_index=1, label="Morph into")
    target_digest = images_digest(target)
if not pg.path_wanted(source, src_digest, steps):  # a stroke scores the drawing; its path only when asked
    st.stop()
with user_errors("Pick another path or target image."):
    path, path_report = pg.path_report(src_digest, cfg.to_json(), kind, steps, target_digest, x_src, target, runners,
                                       ref)
step_preds = [classes[int(k)] for k in path_report.prediction]
conf = path_report.probs.max(axis=1)
selected = loaded["step"] if loaded and loaded.get("kind") == kind and loaded["step"] < len(path.values) else None
metrics, wide = get_result(cfg).metrics, path_report.wide()  # lines drawn first: the best of each family on the run
lines = line_picker(list(wide.columns), metrics.groupby("method")["auroc"].mean().to_dict() if len(metrics) else {},
                    "pg_lines", "mean AUROC over the OOD sets")
fig = figures.path_figure(wide[lines], path.values, path.labels(), step_preds, conf, None, PATHS[kind].axis,
                          ref.id_spec, selected, families=ref.families)
chart = "pg_path_chart"
st.plotly_chart(fig, width="stretch", key=chart, on_select=pg.load_step_callback(chart, src_digest, path),
                selection_mode="points")
pg.remember_path_time(path_report.seconds)
st.caption(f"{len(path.values)} steps scored as one batch in {1000 * path_report.seconds:.0f} ms. Click a point to "
           "load that step into the panels above.")
show = np.linspace(0, len(path.values) - 1, 8).round().astype(int)
cols = st.columns(len(show))
for col, k in zip(cols, show):
    col.image(gi.display_image(path.images[k], 84), caption=f"{md_text(path.labels()[k])} → {md_text(step_preds[k])}",
              width="stretch")
