"""Cached access to models, datasets and results for the pages.

Models are shared across sessions (``st.cache_resource``; the model object is read-only
and locks its own hooked passes). Results are deterministic functions of the run config
(plus upload digests), so they are memoised in a bounded in-process LRU and on disk in the
results store; the progress bar (gradviz.ui.progress) is drawn outside any cached function.
"""

from __future__ import annotations

import threading
from typing import Callable

import pandas as pd
import streamlit as st
from cachetools import LRUCache

from gradviz.config import settings
from gradviz.data import ImageSet, load_dataset
from gradviz.errors import ModelError
from gradviz.models import GradvizModel, load_model
from gradviz.scoring import RunConfig, ScoreResult, blank_method_warnings, images_digest, layer_table, run
from gradviz.runtime.store import ResultStore
from gradviz.runtime.store import cache_key as _cache_key
from gradviz.ui.progress import progress_bar, wait_for_warm_up


@st.cache_resource(show_spinner="Loading model…")
def _shared_model(name: str, weights: str | None = None, allow_code: bool = False) -> GradvizModel:
    return load_model(name, weights, allow_code=allow_code)


def get_model(name: str, weights: str | None = None) -> GradvizModel:
    """The model ``name``: this session's own upload, or one shared instance per name and weights file.

    ``file.py:build`` models run only when the server configuration lists them (never from a browser).
    """
    from gradviz.ui.private import is_private_model, session_models
    from gradviz.ui.server import allowed_code_models

    if is_private_model(name):
        own = session_models().get(name)
        if own is None:
            raise ModelError(f"{name} is not among this session's uploaded models (uploads belong to the session "
                             "that made them); upload the weights again")
        return own
    from gradviz.runtime.budget import check_parameters_web

    check_parameters_web(name)  # torchvision / timm names: counted on the meta device, refused before they are built
    return _shared_model(name, weights, name in allowed_code_models())


@st.cache_resource
def get_store() -> ResultStore:
    return ResultStore()


def allowed_roots() -> tuple[str, ...]:
    """The folders web users may read with ``folder:`` (GRADVIZ_ALLOWED_ROOTS): enforced on every load here."""
    return tuple(str(r) for r in settings().allowed_roots)


def cache_key(**parts) -> str:
    """:func:`gradviz.runtime.store.cache_key` plus the allowed roots: a result read under other roots is never reused."""
    return _cache_key(roots=allowed_roots(), **parts)


@st.cache_resource(show_spinner="Loading dataset…", max_entries=32)
def _shared_dataset(model_name: str, weights: str | None, spec: str, limit: int | None, seed: int,
                    roots: tuple[str, ...]) -> ImageSet:
    return load_dataset(spec, get_model(model_name, weights).card, limit=limit, seed=seed, allowed_roots=roots)


def get_dataset(model_name: str, weights: str | None, spec: str, limit: int | None, seed: int) -> ImageSet:
    """A dataset adapted to the model's input (treat as read-only): shared between sessions, except where
    the model or the set is this session's own upload (then kept in this session only)."""
    from gradviz.data.session import mentions_session
    from gradviz.ui.private import is_private_model

    if not (is_private_model(model_name) or mentions_session(spec)):
        return _shared_dataset(model_name, weights, spec, limit, seed, allowed_roots())
    key = cache_key(kind="dataset", model=model_name, weights=weights, spec=spec, limit=limit, seed=seed)
    memo = _session_memo()
    hit = memo.get(key)
    if hit is None:
        with st.spinner("Loading dataset…"):
            hit = load_dataset(spec, get_model(model_name, weights).card, limit=limit, seed=seed,
                               allowed_roots=allowed_roots())
        memo.put(key, hit)
    return hit


def images_of_rows(rows: pd.DataFrame, cfg: RunConfig, uploads: dict[str, ImageSet] | None = None) -> list:
    """The images behind rows of a scores table, from the same cached datasets that were scored."""
    uploads = uploads or {}
    out = []
    for spec, idx in zip(rows["dataset"], rows["index"]):
        data = uploads[spec] if spec in uploads else get_dataset(cfg.model, cfg.weights, spec, cfg.limit, cfg.seed)
        out.append(data.images[int(idx)])
    return out


class _Memo:
    """A thread-safe LRU of finished results (deterministic values; safe to share): cachetools' LRUCache."""

    def __init__(self, size: int = 24) -> None:
        self.items: LRUCache = LRUCache(maxsize=size)
        self.lock = threading.Lock()

    def get(self, key: str):
        with self.lock:
            return self.items.get(key)

    def put(self, key: str, value) -> None:
        with self.lock:
            self.items[key] = value


@st.cache_resource
def _shared_memo() -> _Memo:
    return _Memo()


def _session_memo() -> _Memo:
    """This session's own LRU: results computed from its uploads never enter the shared one."""
    return st.session_state.setdefault("gv_private_memo", _Memo(size=12))


def _memo(cfg: RunConfig | None = None) -> _Memo:
    """The LRU for results of ``cfg``: the session's own where ``cfg`` reads this session's uploads."""
    from gradviz.ui.private import check_owned, is_private

    if cfg is not None and is_private(cfg):
        check_owned(cfg)
        return _session_memo()
    return _shared_memo()


def _store(cfg: RunConfig) -> ResultStore | None:
    """The on-disk results cache, or None for results computed from this session's uploads."""
    from gradviz.ui.private import is_private

    return None if is_private(cfg) else get_store()


def _memoised(key: str, compute: Callable[[], object], cfg: RunConfig | None = None):
    """``compute()`` once per key (the in-process LRU of :func:`_memo`); later calls return the same value."""
    memo = _memo(cfg)
    hit = memo.get(key)
    if hit is None:
        hit = compute()
        memo.put(key, hit)
    return hit


@st.cache_resource(show_spinner=False)
def start_warm_up():
    """The background computation of the quick start's default results (:mod:`gradviz.ui.warmup`), started once
    per server process (``app.py`` calls this on every run; only the first call starts the threads)."""
    from gradviz.ui.warmup import WarmJob, WarmUp, default_config, warm_models

    limit = settings().max_samples_web
    # the default model's results first (Home, the Playground, Inspect open with it); the others yield the CPU
    jobs = [WarmJob(default_config(m, limit), layers=m == RunConfig.model, nice=0 if m == RunConfig.model else 10)
            for m in warm_models()]
    return WarmUp(jobs, get_store(), allowed_roots(), load_model=get_model).start()  # the pages' model objects


def get_result(cfg: RunConfig, uploads: dict[str, ImageSet] | None = None) -> ScoreResult:
    """Scores + metrics for ``cfg``, computed once per choice (progress bar on first run)."""
    uploads = {k: v for k, v in (uploads or {}).items() if k in cfg.ood or k == cfg.id}
    cfg.validate(provided=set(uploads))  # every field checked before anything is loaded or looked up
    key = cache_key(cfg=cfg.to_json(), uploads={k: images_digest(v.images) for k, v in uploads.items()})
    hit = _memo(cfg).get(key)
    if hit is not None:
        return hit
    model = get_model(cfg.model, cfg.weights)
    datasets = {**uploads}
    for spec in [cfg.id, *cfg.ood]:  # a refused or missing set fails here, before any progress bar is drawn
        if spec not in datasets:
            datasets[spec] = get_dataset(cfg.model, cfg.weights, spec, cfg.limit, cfg.seed)
    if _store(cfg) is not None:  # results of this session's uploads are not read from the store
        wait_for_warm_up(start_warm_up(), cfg, "Scoring samples")
    with progress_bar("Scoring samples") as update:
        result = run(cfg, progress=update, store=_store(cfg), model=model, datasets=datasets,
                     allowed_roots=allowed_roots())
    _memo(cfg).put(key, result)
    return result


def get_layer_table(cfg: RunConfig, specs: list[str], uploads: dict[str, ImageSet] | None = None,
                    loss: str = "nll_pred") -> pd.DataFrame:
    """Layerwise gradient table (rows (dataset, index), columns (layer, stat)) for ``specs``."""
    uploads = uploads or {}
    key = cache_key(kind="layers", cfg=cfg.to_json(), specs=specs, loss=loss,
                    uploads={k: images_digest(v.images) for k, v in uploads.items() if k in specs})
    hit = _memo(cfg).get(key)
    if hit is not None:
        return hit
    model = get_model(cfg.model, cfg.weights)
    if specs == [cfg.id] and _store(cfg) is not None:  # the ID set's table is warmed with the default results
        wait_for_warm_up(start_warm_up(), cfg, "Layerwise gradients", layers=True)
    frames = []
    with progress_bar("Layerwise gradients") as update:
        for spec in specs:
            data = uploads.get(spec) or get_dataset(cfg.model, cfg.weights, spec, cfg.limit, cfg.seed)
            frames.append(layer_table(model, data, loss=loss, batch_size=cfg.batch_size, store=_store(cfg),
                                      progress=update))
    table = pd.concat(frames)
    _memo(cfg).put(key, table)
    return table


def get_layer_auroc(cfg: RunConfig, loss: str, ood: str, table: pd.DataFrame) -> pd.DataFrame:
    """gradviz.analysis.layers.layer_auroc of ``table`` (:func:`get_layer_table` of ``cfg`` and ``loss``) for ``ood``,
    memoised: ~100 AUROCs (every layer × statistic) took ~0.25 s of each rerun of the Layer profiles page."""
    from gradviz.analysis.layers import layer_auroc

    key = cache_key(kind="layer_auroc", cfg=cfg.to_json(), loss=loss, ood=ood)
    return _memoised(key, lambda: layer_auroc(table, cfg.id, ood), cfg)


def get_coverage(cfg: RunConfig) -> pd.DataFrame:
    """The engine's coverage report of the chosen model (one probe forward; memoised per model)."""
    from gradviz.engine import coverage

    key = cache_key(kind="coverage", model=cfg.model, weights=cfg.weights)
    return _memoised(key, lambda: coverage(get_model(cfg.model, cfg.weights)).to_frame(), cfg)


def get_severity_scores(cfg: RunConfig, corruption: str) -> tuple[pd.DataFrame, list[str]]:
    """Scores of the clean ID set and ``corruption`` at severities 1–5 (gradviz.analysis.sweeps.severity_scores), and
    one warning per method left blank (it cannot be fitted on the fit set, e.g. a small own ID set); memoised."""
    from gradviz.analysis.sweeps import severity_scores

    key = cache_key(kind="severity", cfg=cfg.to_json(), corruption=corruption)
    hit = _memo(cfg).get(key)
    if hit is not None:
        return hit
    model = get_model(cfg.model, cfg.weights)
    unfitted: dict[str, str] = {}
    with progress_bar(f"Severity sweep: {corruption}") as update:
        scores = severity_scores(model, corruption, cfg.methods, id_spec=cfg.id, limit=cfg.limit, seed=cfg.seed,
                                 params=cfg.params, fit_set=cfg.fit_set, batch_size=cfg.batch_size, store=_store(cfg),
                                 progress=update, unfitted=unfitted,
                                 loader=lambda spec: get_dataset(cfg.model, cfg.weights, spec, cfg.limit, cfg.seed))
    out = (scores, blank_method_warnings(unfitted, cfg.fit_set))
    _memo(cfg).put(key, out)
    return out


def get_severity_table(cfg: RunConfig, corruption: str, scores: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """gradviz.analysis.sweeps.severity_metrics of ``scores`` (those of :func:`get_severity_scores`), memoised: the
    methods × severities metrics (70 of them for all methods) are computed once per choice, not per rerun."""
    from gradviz.analysis.sweeps import severity_metrics

    key = cache_key(kind="severity_metrics", cfg=cfg.to_json(), corruption=corruption, methods=list(methods))
    return _memoised(key, lambda: severity_metrics(scores, methods), cfg)


def get_meta_report(cfg: RunConfig, table: pd.DataFrame, **options):
    """gradviz.analysis.meta.meta_report on ``table`` (the joined scores + layer table of ``cfg``), memoised by content + options."""
    from gradviz.analysis.meta import meta_report

    digest = int(pd.util.hash_pandas_object(table, index=False).sum())
    key = cache_key(kind="meta", cfg=cfg.to_json(), table=[len(table), list(map(str, table.columns)), digest],
                    options={k: (sorted(v) if isinstance(v, (list, tuple, set)) else v) for k, v in options.items()})

    def compute():
        with st.spinner("Cross-validating meta classifiers…", show_time=True):
            return meta_report(table, **options)

    return _memoised(key, compute, cfg)


def get_decomposition(cfg: RunConfig, uploads: dict[str, ImageSet] | None = None) -> pd.DataFrame:
    """gradviz.analysis.decomposition.decomposition_table for the chosen last-layer gradient scores (feature norm ×
    output factor, per OOD set), memoised per choice: one forward of each set."""
    from gradviz.analysis.decomposition import decomposition_table

    uploads = uploads or {}
    key = cache_key(kind="decomposition", cfg=cfg.to_json(),
                    uploads={k: images_digest(v.images) for k, v in uploads.items() if k in cfg.ood})

    def compute() -> pd.DataFrame:
        from gradviz.ui.server import session_work

        with st.spinner("Splitting last-layer gradient scores into feature norm × output factor…"), session_work():
            def data(spec: str) -> ImageSet:
                return uploads.get(spec) or get_dataset(cfg.model, cfg.weights, spec, cfg.limit, cfg.seed)

            return decomposition_table(get_model(cfg.model, cfg.weights), data(cfg.id),
                                       {spec: data(spec) for spec in cfg.ood}, methods=cfg.method_names())

    return _memoised(key, compute, cfg)
