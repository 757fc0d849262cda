"""The map of the data in the app: a tab of Compare distributions (lasso → images → Inspect) and Inspect's
"where does this image land?". The projection is computed once per choice (model, sets, projection) and kept
in the results LRU; redrawing (another colour, a new image) only re-renders the figure."""

from __future__ import annotations

import pandas as pd
import streamlit as st
import torch

from gradviz.analysis import samples as gi
from gradviz.errors import GradvizError
from gradviz.analysis.datamap import PROJECTIONS, DataMap, available_projections, build_data_map, data_map_figure
from gradviz.reporting.plaintext import md_text
from gradviz.runconfig import RunConfig
from gradviz.scoring import images_digest
from gradviz.ui.cache import _memoised, cache_key, get_dataset, get_model, images_of_rows
from gradviz.ui.widgets import image_tiles, method_label, send_to_inspect


def get_data_map(cfg: RunConfig, scores: pd.DataFrame, uploads: dict | None, method: str) -> DataMap:
    """The map of every set in ``scores`` (memoised per config, uploads and projection)."""
    uploads = uploads or {}
    specs = list(dict.fromkeys(scores["dataset"]))
    key = cache_key(kind="data_map", cfg=cfg.to_json(), method=method, specs=specs,
                    uploads={k: images_digest(v.images) for k, v in uploads.items() if k in specs})

    def compute() -> DataMap:
        with st.spinner(f"Projecting the penultimate features ({PROJECTIONS[method].split(' (')[0]})…"):
            images = {s: (uploads[s] if s in uploads else get_dataset(cfg.model, cfg.weights, s, cfg.limit, cfg.seed)).images
                      for s in specs}
            return build_data_map(get_model(cfg.model, cfg.weights), scores, images, method, seed=cfg.seed)

    return _memoised(key, compute, cfg)


def _controls(methods: list[str], key: str) -> tuple[str, str]:
    c1, c2 = st.columns([1, 2])
    kinds = available_projections()
    method = c1.radio("Projection", kinds, horizontal=True, key=f"{key}_proj", format_func=lambda k: k.upper(),
                      help="PCA: linear, exact. UMAP appears when the umap-learn package is installed."
                      if len(kinds) == 1 else PROJECTIONS["umap"])
    colour = c2.selectbox("Colour by", ["set", *methods], key=f"{key}_colour",
                          format_func=lambda m: "set (ID / each OOD set)" if m == "set" else method_label(m))
    return method, colour


def data_map_tab(tab, cfg: RunConfig, scores: pd.DataFrame, uploads: dict | None, methods: list[str]) -> None:
    """Compare's tab (drawn only while ``tab`` is open): the map, coloured by set or a score; lasso a region to see
    its images and send one to Inspect."""
    if tab.open:
        with tab:
            _data_map_body(cfg, scores, uploads, methods)


def _data_map_body(cfg: RunConfig, scores: pd.DataFrame, uploads: dict | None, methods: list[str]) -> None:
    st.caption("Each point is a sample's penultimate features (the head's input), projected to 2D. Where OOD sets "
               "overlap the ID cloud, feature scores cannot separate them.")
    method, colour = _controls(methods, "map")
    m = get_data_map(cfg, scores, uploads, method)
    event = st.plotly_chart(data_map_figure(m, colour), width="stretch", key="map_chart", on_select="rerun",
                            selection_mode=("points", "box", "lasso"))
    selected = gi.rows_from_selection(scores, event.selection.points if event else [])
    if not len(selected):
        st.caption("Lasso or box-select points to see those images here and send one to the Inspect page.")
        return
    st.markdown(f"**{len(selected)} selected sample(s)**")
    caption_method = colour if colour != "set" else methods[0]
    image_tiles(images_of_rows(selected, cfg, uploads), gi.sample_captions(selected, caption_method), columns=8)
    send_to_inspect(zip(selected["dataset"], selected["index"]), key="map")


def where_it_lands(cfg: RunConfig, scores: pd.DataFrame, x: torch.Tensor, name: str, methods: list[str],
                   key: str = "ins_map", shown: bool = True) -> None:
    """Inspect / Playground: the map of the ID and OOD sets with this image placed on it (same projection, not
    refitted; the map is computed once per choice, each new image costs one forward). ``shown``: whether the map
    starts switched on (the Playground starts with it off: each stroke would redraw every scored sample)."""
    st.subheader(f"Where does {md_text(name)} land? (map of the data)")
    if not st.toggle("Show the map: penultimate features of every scored sample, projected once", shown, key=key):
        return
    method, colour = _controls(methods, key)
    try:
        m = get_data_map(cfg, scores, None, method)
        where = m.place(get_model(cfg.model, cfg.weights), x)[0]  # one forward: redrawn for every new image
    except GradvizError as exc:
        st.warning(md_text(str(exc)))
        return
    st.plotly_chart(data_map_figure(m, colour, (float(where[0]), float(where[1])), name), width="stretch",
                    key=f"{key}_chart")
    st.caption("Star: this image. Points: the ID and OOD samples scored for the sidebar's choice.")
