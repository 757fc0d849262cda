"""The quick start's default results, computed in the background from the moment the server starts.

A new user's first pages all need the embedded default's scores of a bundled model: Home and the Playground
those of ``mnist-cnn`` (the Playground also the ID set's layerwise gradients), Compare models those of
``mnist-cnn`` and ``mnist-vit``. The server starts one thread per model of ``GRADVIZ_WARM_MODELS`` (default
both; empty = none) that scores the sidebar's default run configuration into the on-disk results store, the
store the pages read (:func:`gradviz.ui.cache.get_result`): a page opened later finds them there. A page that
needs one of these results while its thread still runs waits for the thread (:func:`wait_for`) and shows the
thread's progress with an estimate, instead of computing the same numbers a second time beside it.

The threads plan their passes for a web session's memory budget and fit on what a session fits on (the
fitted methods of the bundled models are shipped with them: :mod:`gradviz.methods.prefit`), so their results
are exactly the ones a session would compute. Each job runs in its own :func:`gradviz.runtime.ledger.serving`
scope: its passes reserve their memory from the server's budget (``GRADVIZ_SERVER_MEMORY_MB``) like a
session's, and a page that waits for a job first gives back what its own scope holds
(:func:`gradviz.runtime.ledger.give_back`), so the job never queues for memory the waiting page holds. A
failure is logged and leaves the pages to compute as usual.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from gradviz.runconfig import RunConfig

__all__ = ["default_config", "WarmJob", "WarmUp", "warm_models", "covers", "preload", "trace"]

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]


def default_config(model: str, max_samples: int) -> RunConfig:
    """The run configuration the sidebar starts from for ``model`` (its samples slider capped by the server)."""
    cfg = RunConfig(model=model)
    return replace(cfg, limit=max_samples if max_samples <= 100 else min(max(100, cfg.limit or 1000), max_samples))


def warm_models() -> list[str]:
    """The models to warm (``GRADVIZ_WARM_MODELS``, comma-separated; unset = the bundled two, empty = none)."""
    from gradviz.config import settings

    return list(settings().warm_models)


def covers(job_cfg: RunConfig, cfg: RunConfig) -> bool:
    """Whether results of ``job_cfg`` are results ``cfg`` reads (same model, data and parameters; sets and
    methods overlapping)."""
    same = ("model", "weights", "id", "limit", "seed", "device", "fit_set", "params")
    if any(getattr(job_cfg, f) != getattr(cfg, f) for f in same):
        return False
    return bool(set(job_cfg.method_names()) & set(cfg.method_names()))


def preload() -> None:
    """Import, in the calling thread, the modules a job imports on first use. Two threads importing torchvision's
    circular modules at once fail ("cannot import name … from partially initialized module"), so the jobs'
    threads start with them loaded (the page thread needs them as well)."""
    import sklearn.covariance  # noqa: F401  (the fitted methods' Gaussians)
    import torchvision.models  # noqa: F401
    import torchvision.transforms.v2.functional  # noqa: F401

    import gradviz.analysis.metrics  # noqa: F401
    import gradviz.methods  # noqa: F401  (every method module)
    from gradviz.data import check_spec
    from gradviz.models import zoo  # noqa: F401  (the bundled models)

    check_spec("mnist")  # registers every dataset kind


def trace(model) -> None:
    """Build the gradient engine's traced twin of ``model`` now (:mod:`gradviz.engine.folding`). torch.fx patches
    ``nn.Module.__call__`` process-wide while it traces, so a forward in another thread during a trace fails; the
    jobs' threads (and the pages, which share these model objects) then never trace them."""
    import torch

    from gradviz.errors import GradvizError
    from gradviz.methods.registry import ModelOutputs

    try:
        with model.lock:
            ModelOutputs.from_model(model, torch.zeros(1, *model.card.input_size), keep_graph=True)
    except GradvizError:  # a model the engine cannot hook: its methods say so when they run
        pass


@dataclass
class WarmJob:
    """One model's background computation and what it is doing now (read by pages while they wait)."""

    cfg: RunConfig
    layers: bool = False  # also the ID set's layerwise gradient table (the Playground's bands)
    nice: int = 0  # added to the thread's niceness (Linux): a job no first page waits for yields the CPU
    scored: threading.Event = field(default_factory=threading.Event)  # the scores are in the store
    finished: threading.Event = field(default_factory=threading.Event)  # and the layer table; or it failed
    text: str = "waiting to start"
    fraction: float = 0.0
    seconds: float = 0.0
    error: str = ""


class WarmUp:
    """Background threads computing :class:`WarmJob` s into ``store`` (one thread per job). ``load_model(name)``
    gives the model objects (the dashboard passes its shared ones)."""

    def __init__(self, jobs: list[WarmJob], store, allowed_roots=None, load_model=None) -> None:
        self.jobs, self.store, self.allowed_roots = jobs, store, allowed_roots
        self._load_model = load_model
        self.threads: list[threading.Thread] = []

    def start(self) -> "WarmUp":
        """Load each job's model and trace it here, then start one thread per job."""
        from gradviz.errors import GradvizError
        from gradviz.models import load_model

        if self.jobs:
            preload()
        for job in self.jobs:
            try:
                model = (self._load_model or load_model)(job.cfg.model)
                trace(model)
            except GradvizError as exc:  # e.g. a model that cannot be loaded here: the pages say why when asked
                job.error, job.text = str(exc), f"{job.cfg.model}: {exc}"
                job.scored.set()
                job.finished.set()
                continue
            thread = threading.Thread(target=self._run, args=(job, model), name=f"gradviz-warm-{job.cfg.model}",
                                      daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def _run(self, job: WarmJob, model) -> None:
        from gradviz.data import load_dataset
        from gradviz.errors import GradvizError
        from gradviz.runtime.budget import session_budget
        from gradviz.runtime.ledger import serving
        from gradviz.runtime.progress import Eta
        from gradviz.scoring import layer_table, run

        eta, t0 = Eta(), time.perf_counter()
        if job.nice:
            try:  # per thread on Linux: the pages' threads and the default model's job keep their priority
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + job.nice)
            except (AttributeError, OSError):  # another OS: the job runs at the process's priority
                pass

        def progress(done: int, total: int, label: str) -> None:
            job.fraction, job.text = min(1.0, done / max(total, 1)), f"{job.cfg.model}, {eta.text(done, total, label)}"

        try:
            # a web session's budget (its batches and fit limit), its passes' memory reserved from the server's
            with session_budget(), serving():
                run(job.cfg, progress=progress, store=self.store, model=model, allowed_roots=self.allowed_roots)
                job.scored.set()
                if job.layers:
                    data = load_dataset(job.cfg.id, model.card, limit=job.cfg.limit, seed=job.cfg.seed,
                                        allowed_roots=self.allowed_roots)
                    layer_table(model, data, store=self.store, progress=progress)
            job.text = f"{job.cfg.model}: done"
        except GradvizError as exc:  # e.g. a set that cannot be read here: the pages say why when asked
            job.error = str(exc)
            log.warning("warming %s failed: %s", job.cfg.model, exc)
        except Exception as exc:  # noqa: BLE001  (a bug here must not take the server down; the pages recompute)
            job.error = f"{type(exc).__name__}: {exc}"
            log.exception("warming %s failed", job.cfg.model)
        finally:
            job.seconds = time.perf_counter() - t0
            job.scored.set()
            job.finished.set()

    def pending(self, cfg: RunConfig, layers: bool = False) -> WarmJob | None:
        """The job whose results ``cfg`` reads and that has not computed them yet (its scores; with ``layers``
        its layer table), if any."""
        return next((j for j in self.jobs if not (j.finished if layers else j.scored).is_set()
                     and (j.layers or not layers) and covers(j.cfg, cfg)), None)

    def wait_for(self, cfg: RunConfig, show: Callable[[float, str], None], poll_s: float = 0.25,
                 layers: bool = False) -> bool:
        """Block until the job ``cfg`` reads from has its scores (with ``layers``: its layer table) in the store,
        calling ``show(fraction, text)`` meanwhile; False at once when there is none. The caller's
        :func:`~gradviz.runtime.ledger.serving` scope gives back its reservation before it waits: the job may
        need that memory."""
        from gradviz.runtime.ledger import give_back

        job = self.pending(cfg, layers)
        if job is None:
            return False
        give_back()  # never wait while holding memory
        while not (job.finished if layers else job.scored).wait(poll_s):
            show(job.fraction, f"started with the server: {job.text}")
        return True
