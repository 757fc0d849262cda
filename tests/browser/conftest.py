"""Fixtures for real-browser tests: one streamlit server per module (tmp cache dir) and a headless Chromium.

Every test here is marked ``browser`` and skipped with a clear reason when /usr/bin/chromium is absent. Server
helpers live in gradviz/testing/browser.py (shared with the load test and the timing benchmark).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gradviz.testing.browser import CHROMIUM, CHROMIUM_ARGS, StreamlitServer

ROOT = Path(__file__).resolve().parents[2]
NO_CHROMIUM = f"{CHROMIUM} is not installed (apt-get install chromium); real-browser tests skipped"


@pytest.hookimpl(tryfirst=True)  # before `-m "not browser"` deselects by marker
def pytest_collection_modifyitems(config, items):
    """Mark every test in this folder ``browser``; skip them when Chromium is missing."""
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.path)).parent == here:
            item.add_marker(pytest.mark.browser)
            if not Path(CHROMIUM).exists():
                item.add_marker(pytest.mark.skip(reason=NO_CHROMIUM))


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """``streamlit run app.py`` on a free loopback port, GRADVIZ_CACHE_DIR in a tmp dir; killed at teardown.
    A test module may set ``SERVER_ENV`` (extra environment variables) for its own server."""
    if not Path(CHROMIUM).exists():
        pytest.skip(NO_CHROMIUM)
    srv = StreamlitServer(tmp_path_factory.mktemp("gv-cache"), env=getattr(request.module, "SERVER_ENV", None))
    try:
        srv.wait_healthy()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium (system binary, never a downloaded one)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def shots_dir(tmp_path_factory) -> Path:
    """docs/screenshots when GRADVIZ_SCREENSHOTS=1, else a tmp dir."""
    if os.environ.get("GRADVIZ_SCREENSHOTS") == "1":
        out = ROOT / "docs" / "screenshots"
        out.mkdir(parents=True, exist_ok=True)
        return out
    return tmp_path_factory.mktemp("screenshots")
