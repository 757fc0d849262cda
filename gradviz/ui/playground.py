"""Streamlit pieces of the Playground page: the image sources, the cached reference and scoring, path steps.

Session-state keys (all prefixed ``pg_``): ``pg_source`` (Draw | Take a picture | Dataset sample),
``pg_canvas`` (the canvas widget), ``pg_stroke``, ``pg_camera``, ``pg_spec``/``pg_index`` (dataset
sample), ``pg_path``/``pg_steps``/``pg_target_spec``/``pg_target_index`` (path controls),
``pg_path_chart`` (the path plot's selection), ``pg_walked`` (the drawing whose path was asked for),
``pg_path_live`` (re-score the path after every stroke), ``pg_path_seconds`` (the last path's time), ``pg_loaded`` (a path step shown instead of the start
image: {source digest, image, label, step}), ``pg_explained`` (digest whose attributions were asked for).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import streamlit as st
import torch

from gradviz.data import short_spec
from gradviz.errors import GradvizError
from gradviz.methods.registry import MethodRunner, resolve_methods
from gradviz.reporting.plaintext import md_text
from gradviz.playground import LiveReport, Reference, Walk, build_reference, score_batch, walk
from gradviz.playground.preprocess import frame_to_input
from gradviz.scoring import RunConfig, blank_method_warnings, make_runners
from gradviz.ui.cache import get_dataset, get_layer_table, get_model, get_result
from gradviz.ui.canvas import digit_canvas
from gradviz.ui.server import as_session_work, session_work
from gradviz.ui.sidebar import dataset_options

SOURCES = ["Draw", "Take a picture", "Dataset sample"]


# --------------------------------------------------------------------------- reference and scoring


@st.cache_resource(max_entries=8, show_spinner=False)
def _reference(cfg_json: str, _scores, _layer_table) -> Reference:
    cfg = RunConfig.from_json(cfg_json)
    return build_reference(_scores, resolve_methods(cfg.methods), cfg.id, _layer_table)


def get_reference(cfg: RunConfig) -> tuple[Reference, str]:
    """The ID reference of ``cfg`` (scores and the ID layer table shared with the other pages), and a note
    when the per-layer bands are unavailable. Computed once per choice (progress bars on the first run)."""
    result = get_result(cfg)
    note = ""
    try:
        table = get_layer_table(cfg, [cfg.id])
    except GradvizError as exc:  # the engine cannot read every model's layers: scores still work
        table, note = None, f"No per-layer gradient band for this model: {exc}"
    return _reference(cfg.to_json(), result.scores, table), note


def get_runners(cfg: RunConfig, ref: Reference) -> tuple[list[MethodRunner], list[str]]:
    """The chosen methods with their parameters (fitted ones fitted once, shared with the scoring pipeline),
    warmed up once per choice so that the first stroke is as fast as the next ones; and one warning per
    method left blank because it cannot be fitted on the fit set (e.g. GROOD on a small own ID set)."""
    model = get_model(cfg.model, cfg.weights)
    unfitted: dict[str, str] = {}
    with st.spinner("Preparing the methods…", show_time=True), session_work():
        runners = make_runners(model, resolve_methods(cfg.methods), cfg.params, cfg.fit_set, cfg.seed, unfitted=unfitted)
        if not runners:
            raise GradvizError(f"none of the chosen methods can be fitted on {short_spec(cfg.fit_set, 120)}; "
                               "add methods that need no fitting (msp, energy, gradnorm, …) in the sidebar")
        _warm_up(cfg.to_json(), runners, ref)
    return runners, blank_method_warnings(unfitted, cfg.fit_set)


@st.cache_resource(max_entries=8, show_spinner=False)
@as_session_work
def _warm_up(cfg_json: str, _runners, _ref: Reference) -> bool:
    """Score one ID image: the first pass through a model sets up its engine plans (~0.4 s, once)."""
    cfg = RunConfig.from_json(cfg_json)
    x = get_dataset(cfg.model, cfg.weights, cfg.id, cfg.limit, cfg.seed).images[:1]
    score_batch(get_model(cfg.model, cfg.weights), x, _runners, _ref)
    return True


@st.cache_data(max_entries=64, show_spinner=False)
@as_session_work
def live_report(digest: str, cfg_json: str, _x: torch.Tensor, _runners, _ref: Reference) -> LiveReport:
    """Every score of one image, its ID percentiles and per-layer profile (the per-stroke fast path)."""
    cfg = RunConfig.from_json(cfg_json)
    return score_batch(get_model(cfg.model, cfg.weights), _x, _runners, _ref)


@st.cache_data(max_entries=16, show_spinner="Walking the path…")
@as_session_work
def path_report(digest: str, cfg_json: str, kind: str, steps: int, target_digest: str | None, _x, _target, _runners,
                _ref: Reference) -> tuple[Walk, LiveReport]:
    """The path ``kind`` from image ``_x`` in ``steps`` steps, scored as one batch."""
    cfg = RunConfig.from_json(cfg_json)
    path = walk(_x, kind, steps, target=_target, seed=cfg.seed)
    return path, score_batch(get_model(cfg.model, cfg.weights), path.images, _runners, _ref, layer_profile=False)


@st.cache_data(max_entries=64, show_spinner=False)
def _to_input(kind: str, data: bytes, card_json: str, _card) -> tuple[torch.Tensor | None, str]:
    """Decoded, MNIST-style model input of a drawing or photo (None if no ink), and the decoder's note."""
    return frame_to_input(kind, data, _card)


# --------------------------------------------------------------------------- image sources


def _random_index(key: str, n: int) -> None:
    st.session_state[key] = int(np.random.default_rng().integers(n))


def sample_picker(cfg: RunConfig, prefix: str, default_index: int = 0, label: str = "Dataset") -> tuple[torch.Tensor, str]:
    """Dataset + index (+ a Random button) -> one image (1, C, H, W) and its name."""
    options = list(dict.fromkeys([cfg.id, *cfg.ood, *dataset_options()]))
    c1, c2 = st.columns([3, 2], vertical_alignment="bottom")
    spec = c1.selectbox(label, options, key=f"{prefix}_spec")
    data = get_dataset(cfg.model, cfg.weights, spec, cfg.limit, cfg.seed)
    key = f"{prefix}_index"
    st.session_state[key] = min(int(st.session_state.get(key, default_index)), len(data) - 1)
    i = int(c2.number_input(f"Index (0–{len(data) - 1})", 0, len(data) - 1, key=key))
    st.button("Random sample", key=f"{prefix}_random", on_click=_random_index, args=(key, len(data)), icon=":material/shuffle:")
    label_id = int(data.labels[i])
    named = data.class_names[label_id] if data.class_names and 0 <= label_id < len(data.class_names) else label_id
    return data.images[i:i + 1], f"{spec} #{i}" + (f" (label {named})" if label_id >= 0 else "")


def source_image(source: str, cfg: RunConfig, card) -> tuple[torch.Tensor | None, str]:
    """Draw the chosen source's widgets; returns the model input (1, C, H, W) or None, and a name."""
    if source == SOURCES[2]:
        return sample_picker(cfg, "pg")
    if source == SOURCES[0]:
        width = st.slider("Stroke width", 8, 40, 22, key="pg_stroke", help="MNIST strokes are ~2–3 px of 28: "
                          "about 22 px on this 280 px canvas for a digit filling most of it")
        data, kind, name = digit_canvas("pg_canvas", width), "canvas", "your drawing"
        st.caption("Draw with the mouse (or a finger). Toolbar: undo, redo, reset. Every stroke updates the scores.")
    else:
        shot = st.camera_input("Photograph a digit written on paper", key="pg_camera",
                               help="Thick dark pen on white paper works best. Processed here; nothing is uploaded anywhere.")
        data, kind, name = (shot.getvalue() if shot is not None else None), "photo", "your photo"
    if data is None:
        return None, name
    try:
        x, note = _to_input(kind, data, card.to_json(), card)
    except GradvizError as exc:
        st.warning(f"{md_text(exc)}. Try again, or start from a dataset sample.")
        return None, name
    if note and kind == "photo":
        st.caption(note)
    if x is None and kind == "photo":
        st.warning("No ink stood out from the paper: use a thick dark pen and fill the frame.")
    return x, name


# --------------------------------------------------------------------------- path steps


def _ask_for_path(digest: str) -> None:
    st.session_state["pg_walked"] = digest


def path_wanted(source: str, digest: str, steps: int) -> bool:
    """Whether the path of the start image (``digest``) is scored in this run. A photo or a dataset sample: yes
    (each is one finished image). A drawing: only when asked — the "Score the path" button (for this drawing:
    the next stroke makes a new one) or the toggle that re-scores it after every stroke — so that a stroke
    scores the drawing alone, not every step of its path."""
    if source != SOURCES[0]:
        return True
    live = st.toggle("Re-score the path after every stroke", key="pg_path_live",
                     help="Off: a stroke scores only the drawing, and the path waits for the button.")
    if live or st.session_state.get("pg_walked") == digest:
        return True
    last = st.session_state.get("pg_path_seconds")
    st.button("Score the path", key="pg_walk", type="primary", icon=":material/route:", on_click=_ask_for_path,
              args=(digest,))
    st.caption(f"Scores all {steps} steps of your drawing as one batch"
               + (f" (the last path took {last:.1f} s)." if last else ".") + " Draw on first: the path follows "
               "the drawing as it is when you press the button.")
    return False


def remember_path_time(seconds: float) -> None:
    """Keep the last path's scoring time: the button states it as the wait to expect."""
    st.session_state["pg_path_seconds"] = float(seconds)



def _load_step(chart_key: str, source: str, path: Walk) -> None:
    """on_select of the path plot: show the clicked step instead of the start image."""
    points = (st.session_state.get(chart_key) or {}).get("selection", {}).get("points", [])
    steps = [int(p["customdata"][0]) for p in points if p.get("customdata") is not None]
    if steps:
        k = steps[0]
        st.session_state["pg_loaded"] = {"source": source, "image": path.images[k:k + 1].clone(), "step": k,
                                         "kind": path.kind, "label": f"step {k} of '{path.kind}' ({path.labels()[k]})"}


def load_step_callback(chart_key: str, source: str, path: Walk):
    return partial(_load_step, chart_key, source, path)


def _back_to_start() -> None:
    st.session_state["pg_loaded"] = None


def current_image(x_src: torch.Tensor, source_digest: str, name: str) -> tuple[torch.Tensor, str, dict | None]:
    """The image the live panels show: a loaded path step of this start image, else the start image."""
    loaded = st.session_state.get("pg_loaded")
    if loaded and loaded.get("source") == source_digest:
        st.info(f"Showing {md_text(loaded['label'])} of the path below.", icon=":material/route:")
        st.button(f"Back to {md_text(name)}", key="pg_back", on_click=_back_to_start, icon=":material/undo:")
        return loaded["image"], loaded["label"], loaded
    return x_src, name, None


def explain_button(digest: str) -> bool:
    """A button asking for attribution maps of this image; True once asked (until the image changes)."""
    st.button("Explain this prediction (attribution maps)", key="pg_explain",
              on_click=lambda: st.session_state.update(pg_explained=digest))
    return st.session_state.get("pg_explained") == digest


def attribution_names() -> list[str]:
    """The maps shown: the registry's first two pixel methods and first layer method (it lists the most
    robust first: saliency, integrated gradients, Grad-CAM)."""
    from gradviz.explain.attributions import list_attributions

    infos = list_attributions()
    return [a.name for a in infos if a.kind == "pixel"][:2] + [a.name for a in infos if a.kind == "layer"][:1]


@st.cache_data(max_entries=32, show_spinner="Attribution maps…")
def attributions(digest: str, model: str, weights: str | None, _x: torch.Tensor) -> dict:
    """Attribution maps of one image's predicted class, on demand (:func:`attribution_names`)."""
    from gradviz.analysis.samples import compute_attributions

    return compute_attributions(get_model(model, weights), _x, attribution_names())
