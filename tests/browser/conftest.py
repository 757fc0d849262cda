"""Fixtures for real-browser tests: one streamlit server for the whole session, a headless Chromium per module.

The server's cache dir (GRADVIZ_CACHE_DIR) is shared by every module, so a set scored once is read back by the next
module; each test opens its own browser context (its own Streamlit session). The server caps 'Samples per set', and
so the images a method is fitted on, at 200 (GRADVIZ_MAX_SAMPLES_WEB): the tests check what the pages show, not
numbers that need more images. Every test here is marked ``browser`` and skipped with a clear reason when
/usr/bin/chromium is absent. Helpers live in gradviz/testing/browser.py and gradviz/testing/browser_sync.py.
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


SERVER_ENV = {"GRADVIZ_MAX_SAMPLES_WEB": "200"}


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """``streamlit run app.py`` on a free loopback port, GRADVIZ_CACHE_DIR in a tmp dir; killed at teardown."""
    if not Path(CHROMIUM).exists():
        pytest.skip(NO_CHROMIUM)
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)  # after a finished run: a page still drawing its charts
    srv = StreamlitServer(tmp_path_factory.mktemp("gv-cache"), env=SERVER_ENV)
    try:
        srv.wait_healthy()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per module (system binary, never a downloaded one); module-scoped because the load
    test drives its own (async) Playwright, which cannot run while a sync one is open."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def shots_dir(tmp_path_factory) -> Path:
    """docs/screenshots when GRADVIZ_SCREENSHOTS=1, else a tmp dir."""
    if os.environ.get("GRADVIZ_SCREENSHOTS") == "1":
        out = ROOT / "docs" / "screenshots"
        out.mkdir(parents=True, exist_ok=True)
        return out
    return tmp_path_factory.mktemp("screenshots")
