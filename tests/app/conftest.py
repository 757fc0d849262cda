"""Shared AppTest helper: open one page of the app with a small run configuration."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from gradviz.scoring import RunConfig

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture
def open_page(monkeypatch, tmp_path):
    """``open_page(page, config, **state)`` -> an AppTest that has run ``page`` once, without exception.

    The config goes into ``gv_config`` (the sidebar starts from it); ``state`` sets other keys.
    Torch runs single-threaded meanwhile (the CPU is shared: avoids OpenMP oversubscription stalls).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("GRADVIZ_CACHE_DIR", str(tmp_path))

    def _open(page: str, config: RunConfig, **state) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=120)
        at.session_state["gv_config"] = config
        for key, value in state.items():
            at.session_state[key] = value
        at.switch_page(page)
        at.run()
        assert not at.exception, at.exception
        return at

    yield _open
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_hidden_page_bugs(caplog):
    """Fail an app test whose page met an unexpected exception: ``user_errors`` shows users a short message and
    logs the traceback (logger ``gradviz.ui``), so ``not at.exception`` alone would not see it."""
    yield
    bugs = [r for r in caplog.get_records("call") if r.name == "gradviz.ui" and r.levelno >= logging.ERROR]
    assert not bugs, "\n".join(logging.Formatter().format(r) for r in bugs)
