"""Cached access to a model comparison for the "Compare models" page."""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from gradviz.analysis.model_compare import ModelComparison, compare_models
from gradviz.runtime.progress import Eta
from gradviz.scoring import RunConfig
from gradviz.runtime.store import cache_key
from gradviz.ui.cache import _memoised, get_dataset, get_model, get_result
from gradviz.ui.private import is_private_model


def get_model_comparison(cfg: RunConfig, models: list[str]) -> ModelComparison:
    """:func:`gradviz.analysis.model_compare.compare_models` of ``cfg`` over ``models``, once per choice (memoised;
    per session where a model or set is this session's upload). Each model's scores reuse the cache of
    the other pages (the same :func:`get_result`)."""
    key = cache_key(kind="compare_models", cfg=cfg.to_json(), models=list(models))
    owner = next((replace(cfg, model=m) for m in models if is_private_model(m)), cfg)

    def compute() -> ModelComparison:
        bar, eta, now = st.progress(0.0, text="Comparing models"), Eta(), {"model": "", "at": 0.0}

        def progress(done: int, total: int, name: str) -> None:
            now.update(model=f"{name} (model {done + 1} of {total})", at=done / max(total, 1))
            bar.progress(min(1.0, now["at"]), text=f"Comparing models — {now['model']}")

        def steps(done: int, total: int, label: str) -> None:  # a fit of the model's methods (none: shipped)
            bar.progress(min(1.0, now["at"]), text=f"Comparing models — {now['model']}: {eta.text(done, total, label)}")

        try:
            return compare_models(cfg, models, get_model=get_model, run_config=get_result, progress=progress,
                                  steps=steps,
                                  probe_images=lambda m: get_dataset(m, None, cfg.id, cfg.limit, cfg.seed).images)
        finally:
            bar.empty()

    return _memoised(key, compute, owner)
