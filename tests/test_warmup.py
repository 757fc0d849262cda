"""The quick start's default results computed in the background (gradviz.ui.warmup): what a job computes is
exactly what a session then reads from the store, a page waits only for a job whose results it reads, and the
sidebar's defaults are what the server warms."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gradviz.runtime.budget import session_budget
from gradviz.scoring import RunConfig, run
from gradviz.runtime.store import ResultStore
from gradviz.ui.warmup import WarmJob, WarmUp, covers, default_config, warm_models

APP = str(Path(__file__).resolve().parents[1] / "app.py")
SMALL = RunConfig(limit=100, ood=["noise-uniform"], methods=["msp", "mahalanobis", "gradnorm", "grad_l2"])


def test_a_warm_job_leaves_what_a_session_reads_in_the_store(tmp_path):
    store = ResultStore(tmp_path)
    job = WarmJob(SMALL, layers=True, nice=5)  # (a lower priority changes when it runs, not what it computes)
    warm = WarmUp([job], store).start()
    shown = []
    assert warm.wait_for(SMALL, lambda fraction, text: shown.append((fraction, text)), poll_s=0.005)
    assert job.scored.is_set()  # the scores: what Home and Compare read (the layer table may still run)
    warm.wait_for(SMALL, lambda *a: None, layers=True)  # the ID set's layer table: what the Playground reads
    assert job.finished.is_set() and job.error == "" and job.text == "mnist-cnn: done"
    assert all(0 <= f <= 1 and text.startswith("started with the server: ") for f, text in shown)
    assert any(text.startswith("started with the server: mnist-cnn, scoring mnist: ") for _, text in shown), shown
    labels = []
    with session_budget():  # what a web session computes: its fits and batches
        result = run(SMALL, progress=lambda done, total, label: labels.append(label), store=store)
    assert labels == ["mnist (cached)", "noise-uniform (cached)"]
    assert result.scores[SMALL.method_names()].notna().all().all()
    assert len(list(tmp_path.glob("*.npz"))) == 2 * 6 + 1  # two sets × (base + logits + 4 methods), one layer table
    assert not warm.wait_for(SMALL, lambda *a: None) and not warm.wait_for(SMALL, lambda *a: None, layers=True)


def test_a_failing_job_is_recorded_and_releases_the_pages(tmp_path):
    job = WarmJob(replace(SMALL, model="no-such-model"))
    warm = WarmUp([job], ResultStore(tmp_path)).start()
    assert warm.threads == [] and job.finished.is_set() and "no-such-model" in job.error
    assert warm.pending(replace(SMALL, model="no-such-model")) is None
    assert warm.pending(replace(SMALL, model="no-such-model"), layers=True) is None


@pytest.mark.parametrize("change, read", [({}, True), ({"methods": ["msp"]}, True), ({"ood": ["letters"]}, True),
                                          ({"limit": 200}, False), ({"model": "mnist-vit"}, False),
                                          ({"seed": 1}, False), ({"params": {"knn": {"k": 5}}}, False),
                                          ({"methods": ["energy"]}, False)])
def test_a_page_waits_only_for_a_job_whose_results_it_reads(change, read):
    assert covers(SMALL, replace(SMALL, **change)) is read


def test_the_models_warmed_are_set_by_the_environment(monkeypatch):
    monkeypatch.delenv("GRADVIZ_WARM_MODELS", raising=False)
    assert warm_models() == ["mnist-cnn", "mnist-vit"]
    monkeypatch.setenv("GRADVIZ_WARM_MODELS", "none")
    assert warm_models() == []
    monkeypatch.setenv("GRADVIZ_WARM_MODELS", "mnist-vit, ")
    assert warm_models() == ["mnist-vit"]


@pytest.mark.parametrize("max_samples", [5000, 300, 50])
def test_the_sidebar_starts_from_the_configuration_the_server_warms(max_samples, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("GRADVIZ_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GRADVIZ_MAX_SAMPLES_WEB", str(max_samples))
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/learn.py")  # a page that computes nothing: only the sidebar's configuration is read
    at.run()
    assert not at.exception, at.exception
    cfg = at.session_state["gv_config"]
    warmed = default_config("mnist-cnn", max_samples)
    assert covers(warmed, cfg) and cfg.ood == warmed.ood and cfg.method_names() == warmed.method_names()


def test_two_jobs_started_in_a_fresh_process_import_without_racing(tmp_path):
    """Two threads importing torchvision's circular modules at once fail; the jobs start with them loaded."""
    import subprocess
    import sys

    code = f"""
from gradviz.runtime.store import ResultStore
from gradviz.scoring import RunConfig
from gradviz.ui.warmup import WarmJob, WarmUp
jobs = [WarmJob(RunConfig(model=m, limit=100, ood=["letters"], methods=["msp", "mahalanobis"]))
        for m in ("mnist-cnn", "mnist-vit")]
warm = WarmUp(jobs, ResultStore({str(tmp_path)!r})).start()
for thread in warm.threads:
    thread.join(600)
print([job.error for job in jobs])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "['', '']", out.stdout + out.stderr[-3000:]


def test_a_jobs_model_is_traced_before_its_thread_starts(tmp_path, monkeypatch):
    """torch.fx patches nn.Module.__call__ process-wide while tracing: the engine's twin is built in the starting
    thread, so the jobs' threads (and pages sharing the model) never trace while another thread runs a forward."""
    import threading

    import torch.fx

    from gradviz.models.zoo import random_model

    traced_in, real = [], torch.fx.symbolic_trace

    def spy(*args, **kwargs):
        traced_in.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.fx, "symbolic_trace", spy)
    model = random_model("mnist-cnn", num_classes=10, input_size=(1, 28, 28), seed=5)  # never traced before
    job = WarmJob(replace(SMALL, methods=["grad_l2", "gradnorm"]))
    warm = WarmUp([job], ResultStore(tmp_path), load_model=lambda name: model).start()
    warm.threads[0].join(600)
    assert job.error == "" and traced_in == [threading.current_thread().name]


# --- the server's memory ledger: a job reserves like a session, and a page waiting for one gives back first ------

TINY = RunConfig(limit=100, ood=["noise-uniform"], methods=["msp", "grad_l2"])
WAIT = 600  # seconds a thread may take before the test fails (a job here takes seconds)


@pytest.fixture
def server(monkeypatch):
    from gradviz.runtime import ledger as ledger_mod
    from gradviz.runtime.ledger import server_ledger

    monkeypatch.setenv("GRADVIZ_SERVER_MEMORY_MB", "1000")
    monkeypatch.setattr(ledger_mod, "_LEDGERS", {})
    ledger = server_ledger()
    ledger.max_wait_s = 30  # a job queued behind memory nobody gives back is refused (and says so) after this
    return ledger


def test_a_warm_jobs_passes_reserve_their_memory_from_the_servers_ledger(server, tmp_path):
    job = WarmJob(TINY)
    warm = WarmUp([job], ResultStore(tmp_path)).start()
    warm.threads[0].join(WAIT)
    assert job.finished.is_set() and job.error == ""
    assert 0 < server.peak_mb <= server.budget_mb  # its passes were seen by GRADVIZ_SERVER_MEMORY_MB
    assert server.in_use_mb == 0 and server.waiting == 0  # and given back when the job ended


def test_a_page_waiting_for_a_warm_job_gives_back_its_memory_first(server, tmp_path):
    """The page's scope holds 999 of the server's 1,000 MB when it starts waiting for the job, whose passes need
    more than the 1 MB left: were the page to keep its reservation while it waits, the job would queue behind it
    until the ledger refuses it (``max_wait_s``) and the page would wait that long."""
    import threading

    from gradviz.runtime.ledger import admit, serving

    job = WarmJob(TINY)
    warm = WarmUp([job], ResultStore(tmp_path))
    seen: dict[str, object] = {}

    def page() -> None:
        with serving():
            admit(999, "the page's last pass")
            seen["held"] = server.in_use_mb
            warm.start()  # the job's first pass arrives while the page holds its memory
            seen["waited"] = warm.wait_for(TINY, lambda *a: None, poll_s=0.05)
            seen["after"] = server.in_use_mb

    thread = threading.Thread(target=page, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert seen == {"held": 999, "waited": True, "after": 0}
    assert job.error == "" and 0 < server.peak_mb <= server.budget_mb
