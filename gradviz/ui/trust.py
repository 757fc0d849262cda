"""Cached trust report of the sidebar's run for the Trust page (gradviz.trust.report), memoised per run configuration."""

from __future__ import annotations

import streamlit as st

from gradviz.runconfig import RunConfig
from gradviz.trust.selective import labelled_sets
from gradviz.trust.report import TEMPERATURE_FIT_LIMIT, TrustReport, fit_split, trust_report
from gradviz.ui.cache import _memoised, _store, cache_key, get_dataset, get_model, get_result


def get_trust(cfg: RunConfig) -> TrustReport:
    """Misclassification metrics of every chosen method and the model's calibration, computed once per choice: one
    no-grad forward of the ID set, each labelled shifted set and the fit split (logits cached on disk)."""
    result = get_result(cfg)

    def compute() -> TrustReport:
        model = get_model(cfg.model, cfg.weights)
        specs = [cfg.id, *labelled_sets(result.scores)]
        datasets = {s: get_dataset(cfg.model, cfg.weights, s, cfg.limit, cfg.seed) for s in specs}
        with st.spinner("Logits of the labelled sets and the fit split, temperature scaling…"):
            fit = fit_split(cfg.fit_set, model, cfg.seed,
                            loader=lambda spec: get_dataset(cfg.model, cfg.weights, spec, TEMPERATURE_FIT_LIMIT, cfg.seed))
            return trust_report(result.scores, cfg.method_names(), model, datasets, fit, batch_size=cfg.batch_size,
                                store=_store(cfg), seed=cfg.seed)

    return _memoised(cache_key(kind="trust", cfg=cfg.to_json()), compute, cfg)
