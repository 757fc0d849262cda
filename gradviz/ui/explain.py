"""Widgets for "explain: [the class | this score]" (Inspect, Playground): which thing the attribution maps
explain, and the maps themselves, cached per (image digest, choices)."""

from __future__ import annotations

import streamlit as st
import torch

from gradviz.errors import GradvizError
from gradviz.explain.scores import EXPLAIN_TARGETS, differentiable_methods, explain_score
from gradviz.methods.registry import get_method
from gradviz.reporting.plaintext import md_text
from gradviz.runconfig import RunConfig
from gradviz.scoring import make_runner
from gradviz.ui.cache import get_model
from gradviz.ui.server import as_session_work


def explain_picker(cfg: RunConfig, key: str) -> str | None:
    """Radio "Explain: the class | this score" and, for a score, a picker of the chosen methods whose score
    is differentiable. Returns the score's method name, or None for the predicted class."""
    c1, c2 = st.columns([2, 3])
    target = c1.radio("Explain", EXPLAIN_TARGETS, horizontal=True, key=f"{key}_explains",
                      help="the class: why the model predicts its class (the class logit). this score: which pixels "
                           "make the chosen uncertainty score high (its gradient w.r.t. the input).")
    if target == EXPLAIN_TARGETS[0]:
        return None
    able = set(differentiable_methods())
    chosen = [m for m in cfg.method_names() if m in able]
    if not chosen:
        c2.info("None of the chosen methods has a differentiable score (pick e.g. energy or grad_l2 in the sidebar); "
                "explaining the class.")
        return None
    name = c2.selectbox("Score", chosen, key=f"{key}_score", format_func=lambda n: f"{n} — {get_method(n).title}")
    return name


@st.cache_data(max_entries=128, show_spinner="Attributing the score…")
@as_session_work
def score_attribution(digest: str, cfg_json: str, attribution: str, score: str, _x: torch.Tensor):
    """One attribution of ``score``'s uncertainty of ``_x`` (fitted methods use the run's fit set)."""
    cfg = RunConfig.from_json(cfg_json)
    model = get_model(cfg.model, cfg.weights)
    runner = make_runner(model, get_method(score), cfg.params.get(score), cfg.fit_set, cfg.seed)
    return explain_score(model, _x, attribution, runner)


def explained(digest: str, cfg: RunConfig, methods: list[str], x: torch.Tensor, score: str | None,
              class_attribution) -> tuple[dict, list[str]]:
    """({attribution method: Attribution}, [one line per method that failed]) for ``x``: of the class
    (``class_attribution(method)``) or of ``score``. A failing method is reported, the others still shown."""
    out, errors = {}, []
    for m in methods:
        try:
            out[m] = class_attribution(m) if score is None else score_attribution(digest, cfg.to_json(), m, score, x)
        except GradvizError as exc:  # e.g. Grad-CAM on a double-backprop score: say so, show the others
            errors.append(f"{m}: {exc}")
    return out, errors


@st.cache_data(max_entries=64, show_spinner="Checking the maps (randomised copies, deletion and insertion)…")
@as_session_work
def _checks(digest: str, cfg_json: str, methods: tuple[str, ...], score: str | None, _x: torch.Tensor):
    from gradviz.explain.sanity import map_checks

    cfg = RunConfig.from_json(cfg_json)
    model = get_model(cfg.model, cfg.weights)
    runner = None if score is None else make_runner(model, get_method(score), cfg.params.get(score), cfg.fit_set,
                                                    cfg.seed)
    return map_checks(model, _x, list(methods), runner)


def map_checks(digest: str, cfg: RunConfig, x: torch.Tensor, methods: list[str], score: str | None) -> None:
    """On demand: can these maps be trusted? A table per map (randomisation, deletion/insertion, sparseness)."""
    if not methods or not st.toggle("Can these maps be trusted? (sanity checks, on demand)", False, key="ins_checks"):
        return
    try:
        table = _checks(digest, cfg.to_json(), tuple(methods), score, x)
    except GradvizError as exc:
        st.warning(md_text(str(exc)))
        return
    st.dataframe(table, hide_index=True, width="stretch", key="ins_checks_table", column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in table.columns if c not in ("method", "flagged")})
    what = "the class probability" if score is None else f"{score}'s score"
    st.caption(f"Randomisation (Adebayo et al. 2018): Spearman similarity of |map| after re-initialising the top 3 "
               f"layers; flagged above 0.5 — the map does not depend on the model. Deletion AUC ↓ / insertion AUC ↑: "
               f"{what} as the map's top pixels are removed / inserted (Petsiuk et al. 2018). Sparseness: Gini of |map|.")
