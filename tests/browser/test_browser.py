"""Real-browser test: every dashboard page renders in headless Chromium without exceptions, charts are drawn,
and the Inspect upload flow shows a prediction (and a clear message for a broken file).

One browser session for the page tests, on the session's server; pages are reached through the sidebar navigation,
the sample slider is set to its minimum (100 per set) first to keep the run short. GRADVIZ_SCREENSHOTS=1 saves
docs/screenshots/<page>.png (1280×900 viewport, palette PNG).
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from gradviz.testing.browser import PAGES, StreamlitServer, digit_png
from gradviz.testing.browser_sync import (MAIN, SIDEBAR, exceptions, go, is_idle, new_context, new_session, rerun,
                                          save_shot, traceback_head, wait_run_after)


@pytest.fixture(scope="module")
def app(server, browser):
    """One browser session shared by the page tests (navigation through the sidebar, like a user)."""
    context, page = new_session(server, browser)
    yield page
    context.close()


@pytest.mark.parametrize("key", list(PAGES))
def test_page_renders_without_exception_and_draws_charts(app, server, shots_dir, key):
    go(app, key)
    assert is_idle(app)
    assert not exceptions(app), f"{key}: {exceptions(app)}"
    assert app.locator("h1").first.inner_text().strip(), f"{key}: no page title"
    if key == "meta":  # 100 ID samples hold no misclassification: a clear message instead of the CV charts
        assert app.get_by_text("Cannot cross-validate yet").count() == 1
    elif PAGES[key][1] and key != "inspect":  # Inspect draws charts once an image is chosen (tested below)
        app.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=60_000)
        assert app.locator(".js-plotly-plot .main-svg").count() >= 1
    save_shot(app, shots_dir / f"{key}.png")
    assert not server.tracebacks(), traceback_head(server)


def test_inspect_upload_shows_prediction_and_charts(app, server, shots_dir):
    go(app, "inspect")
    upload = app.locator('[data-testid="stFileUploader"] input[type="file"]').first
    with rerun(app):
        upload.set_input_files({"name": "my_digit.png", "mimeType": "image/png", "buffer": digit_png(0)})
    metric = app.locator('[data-testid="stMetric"]').first
    expect(metric).to_contain_text("Prediction")
    expect(app.locator(MAIN)).to_contain_text("my_digit.png")
    app.locator(f'{MAIN} .js-plotly-plot .main-svg').first.wait_for()
    assert app.locator(".js-plotly-plot").count() >= 3  # probabilities, GAIA map, layer profile
    assert not exceptions(app), exceptions(app)
    save_shot(app, shots_dir / "inspect.png")


def test_inspect_broken_png_shows_a_message_not_an_exception(server, browser):
    context, app = new_session(server, browser)  # a new session: no earlier upload in its file list
    go(app, "inspect")
    upload = app.locator('[data-testid="stFileUploader"] input[type="file"]').first
    with rerun(app):
        upload.set_input_files({"name": "bad.png", "mimeType": "image/png", "buffer": b"this is not an image\n" * 10})
    expect(app.locator('[data-testid="stAlert"]', has_text="bad.png").first).to_be_visible()
    assert not exceptions(app), exceptions(app)
    assert app.locator('[data-testid="stMetric"]').count() == 0  # no prediction for a broken file
    assert not server.tracebacks(), traceback_head(server)
    context.close()


def test_deep_link_to_a_page_shows_the_shared_sidebar(browser, tmp_path):
    # a fresh server whose first request is the deep link: the page runs inside app.py's frame (shared sidebar)
    with StreamlitServer(tmp_path) as fresh:
        fresh.wait_healthy()
        context = new_context(browser)
        try:
            page = context.new_page()
            page.goto(fresh.url + "/learn")
            wait_run_after(page, 0)
            expect(page.get_by_text("Learn: gradient-based uncertainty").first).to_be_visible()
            expect(page.locator(f'{SIDEBAR} [data-testid="stSlider"]')).to_have_count(1)
        finally:
            context.close()
