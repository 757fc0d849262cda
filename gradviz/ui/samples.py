"""Cached per-sample computations of the Inspect page: scores with ID percentiles, attributions, GAIA map and
per-layer profile of one image (each keyed by the image's digest and the choices; the tensors are not hashed)."""

from __future__ import annotations

import pandas as pd
import streamlit as st
import torch

from gradviz.analysis import samples as gi
from gradviz.methods.registry import resolve_methods
from gradviz.runconfig import RunConfig
from gradviz.scoring import make_runners
from gradviz.ui.cache import get_model
from gradviz.ui.server import as_session_work


@st.cache_data(max_entries=64, show_spinner="Scoring this image…")
@as_session_work
def sample_report(digest: str, cfg_json: str, _x: torch.Tensor, _id_scores: pd.DataFrame) -> gi.SampleReport:
    """Every method's score of ``_x`` (1, C, H, W) and its percentile among the ID rows of ``_id_scores``."""
    cfg = RunConfig.from_json(cfg_json)
    model = get_model(cfg.model, cfg.weights)
    unfitted: dict[str, str] = {}  # methods that cannot be fitted on the fit set: left blank, as in the scores table
    runners = make_runners(model, resolve_methods(cfg.methods), cfg.params, cfg.fit_set, cfg.seed, unfitted=unfitted)
    return gi.inspect_images(model, _x, runners, _id_scores, blank=unfitted)


@st.cache_data(max_entries=128, show_spinner="Attributing…")
@as_session_work
def attribution(digest: str, model: str, weights: str | None, method: str, _x: torch.Tensor):
    """One captum attribution of ``_x`` for its predicted class."""
    return gi.compute_attributions(get_model(model, weights), _x, [method])[method]


@st.cache_data(max_entries=64, show_spinner="Per-layer gradients of this image…")
@as_session_work
def per_sample(digest: str, model: str, weights: str | None, stat: str, _x: torch.Tensor):
    """(GAIA channel × layer table, per-layer ``stat`` profile) of ``_x``."""
    m = get_model(model, weights)
    return gi.gaia_channel_table(m, _x), gi.sample_layer_profile(m, _x, stat)
