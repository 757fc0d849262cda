"""The scoring pipeline: datasets × methods -> one scores table (+ metrics), cached on disk.

This is the engine the CLI and the dashboard share::

    cfg = RunConfig(id="mnist", ood=["letters", "noise-uniform"], methods="all", limit=1000)
    result = run(cfg, progress=print_progress)
    result.scores   # one row per sample: dataset, role, index, path, label, prediction, correct, <methods>
    result.metrics  # one row per OOD set × method: auroc, fpr95, aupr_in, aupr_out, ...
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch

from gradviz.data import ImageSet, load_dataset
from gradviz.errors import GradvizError
from gradviz.methods.registry import MethodInfo, MethodRunner, ModelOutputs, needs_graph, resolve_methods
from gradviz.models import GradvizModel, load_model
from gradviz.store import ResultStore, cache_key

Progress = Callable[[int, int, str], None]
BASE_COLUMNS = ["dataset", "role", "index", "path", "label", "prediction", "confidence", "correct"]


@dataclass
class RunConfig:
    """Everything that determines a result; JSON round-trips it, and the CLI replays it."""

    model: str = "mnist-cnn"
    weights: str | None = None
    id: str = "mnist"
    ood: list[str] = field(default_factory=lambda: ["letters", "noise-uniform", "corrupt:gaussian_noise:5"])
    methods: list[str] | str = "all"
    limit: int | None = 1000
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 256
    fit_set: str = "mnist:train"
    params: dict[str, dict] = field(default_factory=dict)

    def method_names(self) -> list[str]:
        return [m.name for m in resolve_methods(self.methods)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GradvizError(f"run configuration is not valid JSON: {exc}") from None
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise GradvizError(f"unknown keys in run configuration: {sorted(unknown)}")
        return cls(**data)


@dataclass
class ScoreResult:
    """Scores table, metrics table, the config that produced them, and any warnings."""

    scores: pd.DataFrame
    metrics: pd.DataFrame
    config: RunConfig
    warnings: list[str] = field(default_factory=list)


def images_digest(images: torch.Tensor) -> str:
    """Content hash of an image tensor (keys the cache for any dataset, uploads included)."""
    t = images.detach().cpu().contiguous()
    h = hashlib.sha256(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


# Fitted detectors are deterministic functions of (model, method, params, fit set): keep a few.
_FITTED: "OrderedDict[str, MethodRunner]" = OrderedDict()
_FITTED_LOCK = threading.Lock()


def make_runner(model: GradvizModel, info: MethodInfo, params: dict | None = None,
                fit_set: str = "mnist:train", seed: int = 0) -> MethodRunner:
    """A method with parameters set; fitted methods are fitted on ``fit_set`` (memoised)."""
    runner = info.create(**(params or {}))
    if not info.needs_fit:
        return runner
    key = cache_key(model=model.digest, method=info.name, params=runner.params, fit=fit_set, seed=seed)
    with _FITTED_LOCK:
        if key in _FITTED:
            _FITTED.move_to_end(key)
            return _FITTED[key]
    fit_data = load_dataset(fit_set, model.card, seed=seed)
    runner.fit(model, fit_data.images, fit_data.labels)
    with _FITTED_LOCK:
        _FITTED[key] = runner
        while len(_FITTED) > 16:
            _FITTED.popitem(last=False)
    return runner


def score_images(model: GradvizModel, images: torch.Tensor, runners: list[MethodRunner],
                 batch_size: int = 256, progress: Progress | None = None, label: str = "") -> dict[str, np.ndarray]:
    """Prediction, confidence and every runner's uncertainty for ``images``, batch by batch."""
    n = int(images.shape[0])
    out: dict[str, list] = {"prediction": [], "confidence": [], **{r.info.name: [] for r in runners}}
    total = max(1, -(-n // batch_size))
    keep_graph = needs_graph(runners)  # gradient methods share one hooked forward per batch
    for i, start in enumerate(range(0, n, batch_size)):
        with model.lock:  # one session's forward+backward passes never interleave with another's hooks
            batch = ModelOutputs.from_model(model, images[start:start + batch_size], keep_graph=keep_graph)
            out["prediction"].append(batch.prediction.cpu().numpy())
            out["confidence"].append(batch.probs.amax(-1).cpu().numpy())
            for r in runners:
                out[r.info.name].append(r.score(batch).numpy())
        if progress:
            progress(i + 1, total, label)
    return {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in out.items()}


def score_dataset(model: GradvizModel, data: ImageSet, role: str, infos: list[MethodInfo], *,
                  params: dict[str, dict] | None = None, fit_set: str = "mnist:train", seed: int = 0,
                  batch_size: int = 256, store: ResultStore | None = None,
                  progress: Progress | None = None) -> pd.DataFrame:
    """Score one dataset with every method; cached per method in ``store`` (only misses run)."""
    params = params or {}
    digest = images_digest(data.images)

    def key(name: str) -> str:
        p = {**get_defaults(name), **params.get(name, {})} if name != "_base" else {}
        return cache_key(model=model.digest, data=digest, method=name, params=p,
                         fit=fit_set if name != "_base" else None)

    cached: dict[str, np.ndarray] = {}
    missing: list[MethodInfo] = []
    for name in ["_base"] + [i.name for i in infos]:
        hit = store.get(key(name)) if store is not None else None
        if hit is not None:
            cached.update(hit[0])
        elif name != "_base":
            missing.append(next(i for i in infos if i.name == name))
    need_base = "prediction" not in cached
    if missing or need_base:
        runners = []
        for n, info in enumerate(missing):
            if info.needs_fit and progress:  # fits are one-off but take seconds: say what is running
                progress(n, len(missing), f"fitting {info.name} on {fit_set} (once)")
            runners.append(make_runner(model, info, params.get(info.name), fit_set, seed))
        fresh = score_images(model, data.images, runners, batch_size, progress, label=data.spec)
        if store is not None:
            store.put(key("_base"), {"prediction": fresh["prediction"], "confidence": fresh["confidence"]},
                      {"dataset": data.spec})
            for r in runners:
                store.put(key(r.info.name), {r.info.name: fresh[r.info.name]}, {"dataset": data.spec})
        cached.update(fresh)
    elif progress:
        progress(1, 1, f"{data.spec} (cached)")
    n = len(data)
    labels = np.asarray(data.labels, dtype=np.int64)
    pred = cached["prediction"].astype(np.int64)
    correct = pd.array(np.where(labels >= 0, labels == pred, False), dtype="boolean")
    correct[labels < 0] = pd.NA
    frame = pd.DataFrame({
        "dataset": data.spec, "role": role, "index": np.arange(n),
        "path": data.paths if data.paths is not None else [""] * n,
        "label": labels, "prediction": pred, "confidence": cached["confidence"], "correct": correct,
    })
    for info in infos:
        frame[info.name] = cached[info.name]
    return frame


def get_defaults(name: str) -> dict:
    from gradviz.methods.registry import get_method

    return dict(get_method(name).defaults)


def invalid_rows(scores: pd.DataFrame, methods: list[str]) -> list[str]:
    """Human-readable warnings for samples whose scores are NaN/inf (never silently dropped)."""
    msgs = []
    for m in methods:
        bad = scores[~np.isfinite(scores[m].to_numpy(dtype=float))]
        if len(bad):
            where = ", ".join(f"{d}#{i}" for d, i in zip(bad["dataset"][:5], bad["index"][:5]))
            msgs.append(f"{m}: {len(bad)} sample(s) gave NaN/inf ({where}{', …' if len(bad) > 5 else ''}); "
                        "they are left out of the metrics")
    return msgs


def run(cfg: RunConfig, progress: Progress | None = None, store: ResultStore | None = None,
        model: GradvizModel | None = None, datasets: dict[str, ImageSet] | None = None) -> ScoreResult:
    """Load model and datasets, score every set with every method, and compute the metrics.

    ``datasets`` maps specs to already-loaded sets (e.g. uploaded images, ``upload:<name>``);
    other specs are loaded with :func:`gradviz.data.load_dataset`.
    """
    from gradviz.metrics import metrics_table

    infos = resolve_methods(cfg.methods)
    if cfg.limit is not None and int(cfg.limit) <= 0:
        raise GradvizError(f"limit must be positive, got {cfg.limit}")
    if model is None:
        model = load_model(cfg.model, cfg.weights, cfg.device)
    # Load every set first: a bad spec fails before any minute is spent scoring.
    loaded = []
    for role, spec in [("id", cfg.id)] + [("ood", s) for s in cfg.ood]:
        data = datasets[spec] if datasets and spec in datasets else load_dataset(spec, model.card, limit=cfg.limit, seed=cfg.seed)
        loaded.append((role, data))
    frames = []
    for role, data in loaded:
        frames.append(score_dataset(model, data, role, infos, params=cfg.params, fit_set=cfg.fit_set,
                                    seed=cfg.seed, batch_size=cfg.batch_size, store=store, progress=progress))
    scores = pd.concat(frames, ignore_index=True)
    names = [i.name for i in infos]
    metrics = metrics_table(scores, names) if cfg.ood else pd.DataFrame()
    return ScoreResult(scores, metrics, cfg, invalid_rows(scores, names))


def layer_table(model: GradvizModel, data: ImageSet, loss: str = "nll_pred", *, batch_size: int = 256,
                store: ResultStore | None = None, progress: Progress | None = None) -> pd.DataFrame:
    """Layerwise gradient metrics (Oberdiek et al. 2018): one row per sample, columns (layer, stat).

    Rows are indexed like the scores table (``dataset``, ``index``). Cached in ``store``.
    """
    from gradviz.gradients import layer_gradient_stats

    key = cache_key(model=model.digest, data=images_digest(data.images), kind="layers", loss=loss)
    hit = store.get(key) if store is not None else None
    if hit is not None:
        values, meta = hit[0]["values"], hit[1]
        layers, stats = meta["layers"], meta["stats"]
        if progress:
            progress(1, 1, f"{data.spec} layers (cached)")
    else:
        parts, layers, stats = [], None, None
        n = len(data)
        total = max(1, -(-n // batch_size))
        for i, start in enumerate(range(0, n, batch_size)):
            ls = layer_gradient_stats(model, data.images[start:start + batch_size].to(model.device), loss=loss)
            parts.append(ls.values.detach().float().cpu().numpy())
            layers, stats = list(ls.layers), list(ls.stats)
            if progress:
                progress(i + 1, total, f"{data.spec} layers")
        values = np.concatenate(parts)
        if store is not None:
            store.put(key, {"values": values}, {"layers": layers, "stats": stats, "dataset": data.spec})
    columns = pd.MultiIndex.from_product([layers, stats], names=["layer", "stat"])
    frame = pd.DataFrame(values.reshape(len(values), -1), columns=columns)
    frame.index = pd.MultiIndex.from_arrays([[data.spec] * len(frame), np.arange(len(frame))], names=["dataset", "index"])
    return frame
