"""The scoring pipeline: datasets × methods -> one scores table (+ metrics), cached on disk.

This is the engine the CLI and the dashboard share::

    cfg = RunConfig(id="mnist", ood=["letters", "noise-uniform"], methods="all", limit=1000)
    result = run(cfg, progress=lambda done, total, label: print(label, done, total))
    result.scores   # one row per sample: dataset, role, index, path, label, prediction, correct, <methods>
    result.metrics  # one row per OOD set × method: auroc, fpr95, aupr_in, aupr_out, ...
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from cachetools import LRUCache, cached

from gradviz.runtime.budget import batch_size_for, fit_limit, scoring_kind
from gradviz.data import ImageSet, load_dataset, short_spec
from gradviz.errors import MethodError
from gradviz.analysis.metrics import MIN_VALID
from gradviz.methods.prefit import shipped_state
from gradviz.methods.registry import (MethodInfo, MethodRunner, ModelOutputs, needs_graph,
                                      resolve_methods, scoring_order, shared_input_grads)
from gradviz.models import GradvizModel, load_model
from gradviz.runtime.ledger import checkpoint
from gradviz.runtime.progress import reporting
from gradviz.runconfig import RunConfig
from gradviz.runtime.store import ResultStore, cache_key

__all__ = ["RunConfig", "ScoreResult", "run", "score_dataset", "score_images", "make_runner", "layer_table",
           "images_digest", "invalid_rows", "too_few_samples", "fit_inputs", "model_inputs", "FitSet"]

Progress = Callable[[int, int, str], None]
BASE_COLUMNS = ["dataset", "role", "index", "path", "label", "prediction", "confidence", "correct"]


@dataclass
class ScoreResult:
    """Scores table, metrics table, the config that produced them, any warnings, and per dataset
    the files skipped and the decoder's notes (``{spec: [(file, text), ...]}``, only where any)."""

    scores: pd.DataFrame
    metrics: pd.DataFrame
    config: RunConfig
    warnings: list[str] = field(default_factory=list)
    skipped: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    notes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


def images_digest(images: torch.Tensor) -> str:
    """Content hash of an image tensor (keys the cache for any dataset, uploads included)."""
    t = images.detach().cpu().contiguous()
    h = hashlib.sha256(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def logits_key(model: GradvizModel, digest: str) -> str:
    """The cache key of a set's logits (:func:`gradviz.trust.report.set_logits`), by its images' digest."""
    return cache_key(model=model_inputs(model), data=digest, kind="logits")


def make_runner(model: GradvizModel, info: MethodInfo, params: dict | None = None,
                fit_set: str = "mnist:train", seed: int = 0, fit: "FitSet | None" = None) -> MethodRunner:
    """A method with parameters set; fitted methods are fitted on ``fit`` (default: ``fit_set`` drawn with ``seed``,
    identified by its spec alone), memoised by :meth:`FitSet.key`."""
    runner = info.create(**(params or {}))
    if not info.needs_fit:
        return runner
    fitted = _fitted(model, runner, fit or FitSet(fit_set, seed))
    if isinstance(fitted, MethodError):
        raise MethodError(str(fitted))
    return fitted


def make_runners(model: GradvizModel, infos: list[MethodInfo], params: dict[str, dict] | None = None,
                 fit_set: str = "mnist:train", seed: int = 0, *, unfitted: dict[str, str] | None = None,
                 progress: Progress | None = None, fit: "FitSet | None" = None) -> list[MethodRunner]:
    """:func:`make_runner` for each of ``infos``, in order.

    With ``unfitted`` (a dict) a fitted method that cannot be fitted on ``fit_set`` (too few images, labels
    the model does not know) is left out and its reason recorded there — the caller leaves it blank and
    says why (:func:`blank_method_warnings`); a method already in ``unfitted`` is not tried again.
    Without it, the error is raised."""
    params = params or {}
    runners = []
    for info in infos:
        if unfitted is not None and info.name in unfitted:
            continue
        fitting = f"fitting {info.name} on {fit_set} (once)"
        if info.needs_fit and progress:  # fits are one-off but take seconds: say what is running
            progress(0, 1, fitting)
        try:
            with reporting(progress if info.needs_fit else None, fitting):  # the fit's batches, with an ETA
                runners.append(make_runner(model, info, params.get(info.name), fit_set, seed, fit=fit))
        except MethodError as exc:
            if unfitted is None or not info.needs_fit:
                raise
            unfitted[info.name] = str(exc)
        if info.needs_fit and progress:
            progress(1, 1, fitting)
    return runners


def blank_method_warnings(unfitted: dict[str, str], fit_set: str) -> list[str]:
    """One line per method left blank because it could not be fitted on ``fit_set`` (``unfitted``: name -> reason)."""
    return [f"{name} is left blank: it could not be fitted on {short_spec(fit_set, 120)} ({reason})"
            for name, reason in unfitted.items()]


def fit_inputs(fit_set: str, seed: int, content: str | None = None, limit: int | None = None) -> dict:
    """What a fitted method's state depends on besides the model and its parameters, as a cache-key part: the fit
    set's spec (a ``fit:`` split names its share), the seed (it draws the split and any sampled set), the number
    of images read (all of them, except in a web session: at most ``GRADVIZ_MAX_SAMPLES_WEB``) and, for a set read
    from files, a digest of what was read. The in-memory and the on-disk keys both use it."""
    return {"spec": fit_set, "seed": int(seed), "limit": None if limit is None else int(limit), "content": content}


def model_inputs(model: GradvizModel) -> dict:
    """A model's identity in cache keys: its parameters' digest and the card fields every number depends on (the
    normalisation and how images are adapted to the input), so the same weights under another card never share a
    result."""
    card = model.card
    return {"digest": model.digest, "input_size": [int(v) for v in card.input_size],
            "mean": [float(v) for v in card.mean], "std": [float(v) for v in card.std],
            "interpolation": str(getattr(card, "interpolation", ""))}


@dataclass
class FitSet:
    """The set fitted methods fit on. Bundled and generated sets are fixed by (spec, seed) and the code; a set read
    from files (``folder:``, ``zip:`` and their ``fit:`` parts) can change on disk, so :meth:`identify` reads it and
    adds a digest of its images and labels: an edited folder gives new keys, never the old fit."""

    spec: str
    seed: int = 0
    content: str | None = None
    native: ImageSet | None = field(default=None, repr=False, compare=False)  # as read, before the card's adaptation
    limit: int | None = field(default_factory=fit_limit)  # the web app's sample cap in a session, else None (all)

    @classmethod
    def identify(cls, spec: str, seed: int = 0, allowed_roots: Sequence[str | Path] | None = None) -> "FitSet":
        """``spec`` identified for cache keys (reads it when it comes from files, confined to ``allowed_roots``)."""
        from gradviz.data import DATASETS, check_spec, parse_spec

        problem = check_spec(spec)  # (also registers every kind)
        if problem or not DATASETS[parse_spec(spec)[0]].reads_paths:
            return cls(spec, int(seed))
        data = load_dataset(spec, None, seed=seed, allowed_roots=allowed_roots)
        labels = np.ascontiguousarray(np.asarray(data.labels, dtype=np.int64))
        content = hashlib.sha256((images_digest(data.images) + hashlib.sha256(labels.tobytes()).hexdigest()).encode())
        return cls(spec, int(seed), content.hexdigest()[:16], data)

    def key(self) -> dict:
        return fit_inputs(self.spec, self.seed, self.content, self.limit)

    def load(self, card) -> ImageSet:
        """The fit set at ``card``'s input (the images already read when :meth:`identify` read them), at most
        ``limit`` of them (a seeded draw from a set read from files: those are often ordered by class)."""
        if self.native is None:
            return load_dataset(self.spec, card, seed=self.seed, limit=self.limit)
        from gradviz.data import adapt_images

        native = self.native
        if self.limit is not None and len(native) > self.limit:
            keep = np.sort(np.random.default_rng(self.seed).choice(len(native), self.limit, replace=False))
            native = native.subset(keep)
        return ImageSet(native.spec, adapt_images(native.images, card), native.labels)


# Fitted detectors are deterministic functions of (model, method, params, fit inputs): keep a few.
_FITTED: LRUCache = LRUCache(maxsize=16)


@cached(_FITTED, lock=threading.Lock(),
        key=lambda model, runner, fit: cache_key(model=model_inputs(model), method=runner.info.name,
                                                 params=runner.params, fit=fit.key()))
def _fitted(model: GradvizModel, runner: MethodRunner, fit: FitSet) -> MethodRunner | MethodError:
    """The fitted runner, or the MethodError saying why it cannot be fitted: a failure is as deterministic
    as a fit, and remembering it spares the Playground a doomed fit on every stroke. A state shipped with a
    bundled model for exactly this fit (:mod:`gradviz.methods.prefit`) is read instead of fitted."""
    fit_data = fit.load(model.card)
    shipped = shipped_state(model, runner, fit_data.images, fit_data.labels)
    if shipped is not None:
        runner.state = shipped
        return runner
    try:
        runner.fit(model, fit_data.images, fit_data.labels)
    except MethodError as exc:
        return exc
    return runner


def score_images(model: GradvizModel, images: torch.Tensor, runners: list[MethodRunner], batch_size: int | None = None,
                 progress: Progress | None = None, label: str = "") -> dict[str, np.ndarray]:
    """Prediction, confidence, logits and every runner's uncertainty for ``images``, batch by batch (confidence
    is NaN where the logits are NaN or infinite: the softmax is undefined there).

    The batch is planned for the memory budget (:mod:`gradviz.runtime.budget`); ``batch_size`` is an upper bound."""
    n = int(images.shape[0])
    batch_size = batch_size_for(model, scoring_kind(runners), "scoring", upper=batch_size, n=n)
    out: dict[str, list] = {"prediction": [], "confidence": [], "logits": [], **{r.info.name: [] for r in runners}}
    total = max(1, -(-n // batch_size))
    keep_graph = needs_graph(runners)  # gradient methods share one hooked forward per batch
    # PRO-MSP (and ODIN on two classes) step along −log p_ŷ's input gradient: grad_*'s backward also delivers it
    input_grads = shared_input_grads(runners, model.card.num_classes)
    ordered = scoring_order(runners)
    if progress:
        progress(0, total, label)  # the clock of the pass's ETA starts here
    for i, start in enumerate(range(0, n, batch_size)):
        checkpoint()  # a web session whose tab is gone stops here (gradviz.runtime.ledger)
        with model.lock:  # one session's forward+backward passes never interleave with another's hooks
            batch = ModelOutputs.from_model(model, images[start:start + batch_size], keep_graph=keep_graph,
                                              input_grads=input_grads)
            out["prediction"].append(batch.prediction.cpu().numpy())
            out["confidence"].append(batch.probs.amax(-1).cpu().numpy())
            out["logits"].append(batch.logits.detach().float().cpu().numpy())
            for r in ordered:
                out[r.info.name].append(r.score(batch).numpy())
            del batch  # its graph goes now, not while the next batch's forward runs (two graphs at once)
        if progress:
            progress(i + 1, total, label)
    return {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in out.items()}


def score_dataset(model: GradvizModel, data: ImageSet, role: str, infos: list[MethodInfo], *,
                  params: dict[str, dict] | None = None, fit_set: str = "mnist:train", seed: int = 0,
                  batch_size: int | None = None, store: ResultStore | None = None,
                  progress: Progress | None = None, unfitted: dict[str, str] | None = None,
                  fit: FitSet | None = None) -> pd.DataFrame:
    """Score one dataset with every method; cached per method in ``store`` (only misses run).

    With ``unfitted`` (a dict) a fitted method that cannot be fitted on ``fit_set`` (too few images, labels
    the model does not know) gets a NaN column and its reason in ``unfitted``; without, the error is raised.
    ``fit``: the fit set already identified (:meth:`FitSet.identify`, as :func:`run` does once for all sets);
    by default it is identified here when a fitted method is asked for."""
    params = params or {}
    digest = images_digest(data.images)
    fitted = {i.name for i in infos if i.needs_fit}
    if fitted and fit is None:
        fit = FitSet.identify(fit_set, seed)

    def key(name: str) -> str:
        p = {**get_defaults(name), **params.get(name, {})} if name != "_base" else {}
        return cache_key(model=model_inputs(model), data=digest, method=name, params=p,
                         fit=fit.key() if fit is not None and name in fitted else None)

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
        runners = make_runners(model, missing, params, fit_set, seed, unfitted=unfitted, progress=progress, fit=fit)
        fresh = score_images(model, data.images, runners, batch_size, progress, label=f"scoring {data.spec}")
        logits = fresh.pop("logits")
        if store is not None:  # the set's logits too: calibration (gradviz.trust.report) reads them from here
            store.put(logits_key(model, digest), {"logits": logits}, {"dataset": data.spec, "kind": "logits"})
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
    no_prediction = ~np.isfinite(cached["confidence"])  # NaN/inf logits: the argmax is no prediction
    correct = pd.array(np.where(labels >= 0, labels == pred, False), dtype="boolean")
    correct[(labels < 0) | no_prediction] = pd.NA  # neither right nor wrong: no label, or no prediction
    frame = pd.DataFrame({
        "dataset": data.spec, "role": role, "index": np.arange(n),
        "path": data.paths if data.paths is not None else [""] * n,
        "label": labels, "prediction": pred, "confidence": cached["confidence"], "correct": correct,
    })
    for info in infos:
        frame[info.name] = cached[info.name] if info.name in cached else np.full(n, np.nan)
    return frame


def get_defaults(name: str) -> dict:
    from gradviz.methods.registry import get_method

    return dict(get_method(name).defaults)


def _which(rows: pd.DataFrame, shown: int = 5) -> str:
    """``mnist#0, mnist#3, … 80 in all``: the first ``shown`` samples of ``rows`` (dataset#index), then the count."""
    where = ", ".join(f"{short_spec(d, 60)}#{i}" for d, i in zip(rows["dataset"][:shown], rows["index"][:shown]))
    return where + (f", … {len(rows)} in all" if len(rows) > shown else "")


def invalid_rows(scores: pd.DataFrame, methods: list[str]) -> list[str]:
    """Human-readable warnings for samples without a finite number (never silently dropped): first the samples
    whose logits are NaN/inf (the model's own output, so no prediction), then per method its other NaN/inf scores."""
    msgs = []
    no_logits = ~np.isfinite(scores["confidence"].to_numpy(dtype=float)) if "confidence" in scores else np.zeros(
        len(scores), dtype=bool)
    if no_logits.any():
        msgs.append(f"the model's logits are NaN or infinite for {int(no_logits.sum())} sample(s) "
                    f"({_which(scores[no_logits])}): the model gives no prediction for them, so every score read "
                    "from the logits is NaN there and left out of the metrics, and they count neither as right nor "
                    "wrong; check the model and its weights (NaN weights, an overflow, a division by zero)")
    for m in methods:
        bad = ~np.isfinite(scores[m].to_numpy(dtype=float)) & ~no_logits
        if bad.any():
            further = " further" if no_logits.any() else ""
            msgs.append(f"{m}: {int(bad.sum())}{further} sample(s) gave NaN/inf ({_which(scores[bad])}); "
                        "they are left out of the metrics")
    return msgs


def too_few_samples(counts: dict[str, int], what: str = "samples") -> str:
    """Why detection metrics are blank: the sets in ``counts`` ({spec: n}) with fewer than
    :data:`gradviz.analysis.metrics.MIN_VALID` samples, or "" when every set has enough."""
    few = {spec: n for spec, n in counts.items() if n < MIN_VALID}
    if not few:
        return ""
    listed = ", ".join(f"{short_spec(spec, 120)} has {n}" for spec, n in few.items())
    advice = ("add images to the set or raise the samples per set" if what == "samples"
              else "the rest are NaN/inf (see the warning naming them)")
    return (f"too few {what} for AUROC, FPR95 and AUPR ({listed}; each side needs at least {MIN_VALID}), "
            f"so these metrics are left blank (NaN): {advice}")


def _metric_warnings(metrics: pd.DataFrame) -> list[str]:
    """One line per OOD set (or method) whose metrics are NaN for lack of finite scores."""
    out: list[str] = []
    if not len(metrics) or "n_ood" not in metrics:
        return out
    for ood, rows in metrics.groupby("ood_dataset", sort=False):
        blank = rows[rows["auroc"].isna()]
        if not len(blank):
            continue
        if len(blank) == len(rows) and blank["n_ood"].nunique() == 1 and blank["n_id"].nunique() == 1:
            what = "finite scores" if blank["n_invalid"].sum() else "samples"  # NaN scores are not missing images
            message = too_few_samples({ood: int(blank["n_ood"].iloc[0]), "the ID set": int(blank["n_id"].iloc[0])},
                                      what=what)
            out.append(f"{short_spec(ood, 120)}: {message}" if message else "")
            continue
        for r in blank.itertuples():
            message = too_few_samples({ood: int(r.n_ood), "the ID set": int(r.n_id)}, what="finite scores")
            out.append(f"{r.method}: {message}" if message else "")
    return [m for m in out if m]


def run(cfg: RunConfig, progress: Progress | None = None, store: ResultStore | None = None,
        model: GradvizModel | None = None, datasets: dict[str, ImageSet] | None = None,
        allowed_roots: Sequence[str | Path] | None = None) -> ScoreResult:
    """Load model and datasets, score every set with every method, and compute the metrics.

    ``cfg`` is validated first (:meth:`RunConfig.validate`), before anything is loaded or read
    from the cache. ``datasets`` maps specs to already-loaded sets (e.g. uploaded images,
    ``upload:<name>``); other specs are loaded with :func:`gradviz.data.load_dataset`, confined
    to ``allowed_roots`` when given (the web app).
    """
    from gradviz.analysis.metrics import metrics_table

    cfg.validate(provided=set(datasets or {}))
    infos = resolve_methods(cfg.methods)
    if model is None:
        model = load_model(cfg.model, cfg.weights, cfg.device)
    # Load every set first: a bad spec fails before any minute is spent scoring.
    loaded = []
    for role, spec in [("id", cfg.id)] + [("ood", s) for s in cfg.ood]:
        data = datasets[spec] if datasets and spec in datasets else load_dataset(
            spec, model.card, limit=cfg.limit, seed=cfg.seed, allowed_roots=allowed_roots)
        loaded.append((role, data))
    # The fit set, identified once for every set's keys (read now when it comes from files, confined like the rest).
    fit = FitSet.identify(cfg.fit_set, cfg.seed, allowed_roots) if any(i.needs_fit for i in infos) else None
    frames: list[pd.DataFrame] = []
    unfitted: dict[str, str] = {}
    for role, data in loaded:
        frames.append(score_dataset(model, data, role, infos, params=cfg.params, fit_set=cfg.fit_set, seed=cfg.seed,
                                    batch_size=cfg.batch_size, store=store, progress=progress, unfitted=unfitted,
                                    fit=fit))
    scores = pd.concat(frames, ignore_index=True)
    for name in unfitted:  # one fit failure blanks the method everywhere (an earlier set may have a cached column)
        scores[name] = np.nan
    names = [i.name for i in infos]
    metrics = metrics_table(scores, names) if cfg.ood else pd.DataFrame()
    fitted = [n for n in names if n not in unfitted]
    warnings = blank_method_warnings(unfitted, cfg.fit_set)
    warnings += invalid_rows(scores, fitted) + _metric_warnings(metrics[~metrics["method"].isin(list(unfitted))]
                                                                if len(metrics) else metrics)
    skipped = {data.spec: list(data.skipped) for _, data in loaded if data.skipped}
    notes = {data.spec: list(data.notes) for _, data in loaded if data.notes}
    return ScoreResult(scores, metrics, cfg, warnings, skipped, notes)


def layer_table(model: GradvizModel, data: ImageSet, loss: str = "nll_pred", *, batch_size: int | None = None,
                store: ResultStore | None = None, progress: Progress | None = None) -> pd.DataFrame:
    """Layerwise gradient metrics (Oberdiek et al. 2018): one row per sample, columns (layer, stat).

    Rows are indexed like the scores table (``dataset``, ``index``). Cached in ``store``.
    """
    from gradviz.engine import layer_gradient_stats

    key = cache_key(model=model_inputs(model), data=images_digest(data.images), kind="layers", loss=loss)
    hit = store.get(key) if store is not None else None
    if hit is not None:
        values, meta = hit[0]["values"], hit[1]
        layers, stats = meta["layers"], meta["stats"]
        if progress:
            progress(1, 1, f"{data.spec} layers (cached)")
    else:
        parts, layers, stats = [], None, None
        n = len(data)
        batch_size = batch_size_for(model, "gradients", "layer gradients", upper=batch_size, n=n)
        total = max(1, -(-n // batch_size))
        if progress:
            progress(0, total, f"{data.spec} layers")
        for i, start in enumerate(range(0, n, batch_size)):
            checkpoint()
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
    frame.index = pd.MultiIndex.from_arrays([[data.spec] * len(frame), np.arange(len(frame))],
                                            names=["dataset", "index"])
    return frame
