"""Several models scored on the same ID / OOD sets, side by side (the "Compare models" page, exports).

Each model gets the same run configuration (ID set, OOD sets, methods, samples, seed); only
the model changes. A method a model cannot run (e.g. a gradient method on an architecture the
gradient engine does not cover) is found by :func:`supported_methods` on a few images first
and left out for that model with its reason, so one unsupported method never hides the others.
The result is one long metrics table with a ``model`` column — the same shape as a single
run's, so it plots and exports the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import pandas as pd
import torch

from gradviz.errors import GradvizError
from gradviz.methods.registry import ModelOutputs, needs_graph, resolve_methods
from gradviz.models import GradvizModel
from gradviz.scoring import RunConfig, ScoreResult, make_runner

PROBE_IMAGES = 4
METRICS = ("auroc", "fpr95", "aupr_in", "aupr_out", "detection_error")
HIGHER_BETTER = {"auroc", "aupr_in", "aupr_out"}
Progress = Callable[[int, int, str], None]


def supported_methods(model: GradvizModel, images: torch.Tensor, methods: list[str] | str, params: dict | None = None,
                      fit_set: str = "mnist:train", seed: int = 0,
                      progress: Progress | None = None) -> tuple[list[str], dict[str, str]]:
    """(methods that score ``images[:4]`` on ``model``, {method: why not} for the others).

    Fitted methods are fitted here (memoised by :func:`gradviz.scoring.make_runner`, so the real
    run reuses the fit; the bundled models' fits are shipped with them), each fit's batches reported
    to ``progress``. Only user-facing errors (:class:`GradvizError`) count as "not supported";
    anything else is a bug and is raised.
    """
    ok, refused = [], {}
    from gradviz.data import short_spec
    from gradviz.runtime.budget import batch_size_for, scoring_kind
    from gradviz.runtime.progress import reporting

    for info in resolve_methods(methods):
        try:
            with reporting(progress if info.needs_fit else None, f"fitting {info.name} on {short_spec(fit_set, 60)}"):
                runner = make_runner(model, info, (params or {}).get(info.name), fit_set, seed)
            probe = batch_size_for(model, scoring_kind([runner]), f"probing {info.name}", upper=PROBE_IMAGES,
                                   n=int(images.shape[0]))
            x = images[:probe].to(model.device)
            with model.lock:
                batch = ModelOutputs.from_model(model, x, keep_graph=needs_graph([runner]))
                values = runner.score(batch)
            if tuple(values.shape) != (x.shape[0],):
                raise GradvizError(f"returned shape {tuple(values.shape)}")
            ok.append(info.name)
        except GradvizError as exc:
            refused[info.name] = str(exc).splitlines()[0][:240]
    return ok, refused


@dataclass
class ModelComparison:
    """Per model: its score result, the methods it could not run (with reasons), or why it failed."""

    config: RunConfig
    results: dict[str, ScoreResult] = field(default_factory=dict)
    unsupported: dict[str, dict[str, str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return list(self.results)

    @property
    def metrics(self) -> pd.DataFrame:
        """One row per model × OOD set × method (``model`` first, then the usual metrics columns)."""
        frames = [r.metrics.assign(model=m) for m, r in self.results.items() if len(r.metrics)]
        if not frames:
            return pd.DataFrame(columns=["model", "ood_dataset", "method", *METRICS])
        table = pd.concat(frames, ignore_index=True)
        return table[["model", *[c for c in table.columns if c != "model"]]]

    @property
    def scores(self) -> pd.DataFrame:
        """Every model's scores table stacked, with a ``model`` column (methods a model lacks are empty)."""
        frames = [r.scores.assign(model=m) for m, r in self.results.items()]
        if not frames:
            return pd.DataFrame()
        table = pd.concat(frames, ignore_index=True)
        return table[["model", *[c for c in table.columns if c != "model"]]]

    def table(self, metric: str = "auroc") -> pd.DataFrame:
        """Wide view: rows (OOD set, method), one column per model; empty where a model lacks the method."""
        if metric not in METRICS:
            raise GradvizError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
        long = self.metrics
        if not len(long):
            return pd.DataFrame()
        wide = long.pivot_table(index=["ood_dataset", "method"], columns="model", values=metric, sort=False)
        order = [m for m in self.models if m in wide.columns]
        return wide[order].reset_index()

    def best_model(self, metric: str = "auroc") -> pd.DataFrame:
        """Per OOD set and method, the model with the best ``metric`` (ties: the first listed)."""
        wide = self.table(metric)
        if not len(wide):
            return wide
        values = wide[[m for m in self.models if m in wide.columns]]
        pick = values.idxmax(axis=1) if metric in HIGHER_BETTER else values.idxmin(axis=1)
        return wide[["ood_dataset", "method"]].assign(best=pick, value=values.max(axis=1) if metric in HIGHER_BETTER
                                                      else values.min(axis=1))


def compare_models(cfg: RunConfig, models: list[str], *, get_model: Callable[[str], GradvizModel],
                   probe_images: Callable[[str], torch.Tensor], run_config: Callable[[RunConfig], ScoreResult],
                   progress: Progress | None = None, steps: Progress | None = None) -> ModelComparison:
    """Score ``cfg`` with every model of ``models`` (cfg.model is replaced; nothing else changes).

    The callables let the dashboard pass its cached loaders: ``get_model(name)``,
    ``probe_images(name)`` (a few ID images at that model's input size) and ``run_config(cfg)``.
    A model that cannot be loaded or run is recorded in ``errors`` and the others go on.
    ``progress(i, n, model)`` is called as each model starts; ``steps`` gets the batches of its fits.
    """
    out = ModelComparison(cfg)
    for i, name in enumerate(dict.fromkeys(models)):
        if progress:
            progress(i, len(models), name)
        try:
            model = get_model(name)
            ok, refused = supported_methods(model, probe_images(name), cfg.methods, cfg.params, cfg.fit_set, cfg.seed,
                                            steps)
            if refused:
                out.unsupported[name] = refused
            if not ok:
                out.errors[name] = "none of the chosen methods runs on this model"
                continue
            out.results[name] = run_config(replace(cfg, model=name, weights=None if name != cfg.model else cfg.weights,
                                                   methods=ok))
        except GradvizError as exc:
            out.errors[name] = str(exc)
    if progress:
        progress(len(models), len(models), "done")
    return out
