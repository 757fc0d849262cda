"""Real-browser test: every dashboard page renders in headless Chromium without exceptions, charts are drawn,
and the Inspect upload flow shows a prediction (and a clear message for a broken file).

One server and one browser session per module; pages are reached through the sidebar navigation, the sample
slider is set to its minimum (100 per set) first to keep the run short. GRADVIZ_SCREENSHOTS=1 saves
docs/screenshots/<page>.png (1280×900 viewport, palette PNG).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gradviz.testing.browser import APP_STATE, PAGES, VIEWPORT, StreamlitServer, digit_png

TIMEOUT_S = 300  # the first computation on this shared 2-core machine can take minutes


def wait_idle(page, timeout: float = TIMEOUT_S) -> None:
    """Block until the script run has finished (stApp data-test-script-state stays notRunning)."""
    deadline = time.perf_counter() + timeout
    calm = 0
    while time.perf_counter() < deadline:
        state = page.locator(APP_STATE).get_attribute("data-test-script-state")
        calm = calm + 1 if state == "notRunning" else 0
        if calm >= 3:
            return
        time.sleep(0.2)
    raise AssertionError(f"the app was still running after {timeout} s")


def exceptions(page) -> list[str]:
    return [e.inner_text() for e in page.locator('[data-testid="stException"]').all()]


def save_shot(page, path: Path) -> None:
    """Viewport screenshot as an optimised palette PNG (small enough to commit)."""
    from PIL import Image

    page.screenshot(path=str(path))
    if os.environ.get("GRADVIZ_SCREENSHOTS_FULL"):  # full-page shots for reviewing the lower sections
        height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")  # inner scroller
        page.set_viewport_size({"width": VIEWPORT["width"], "height": min(int(height), 12000)})
        time.sleep(1.0)
        page.screenshot(path=str(Path(os.environ["GRADVIZ_SCREENSHOTS_FULL"]) / path.name))
        page.set_viewport_size(VIEWPORT)
    Image.open(path).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def go(page, key: str) -> None:
    """Navigate through the sidebar link of page ``key`` and wait for its run to finish."""
    title = PAGES[key][0]
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    page.wait_for_url(lambda url: url.rstrip("/").endswith("" if key == "home" else f"/{key}"), timeout=60_000)
    page.locator('[data-testid="stSidebarNav"] a[aria-current="page"]', has_text=title).wait_for(timeout=60_000)
    time.sleep(0.5)  # let the rerun start before polling the run state
    wait_idle(page)


def new_session(server, browser):
    """A fresh browser context on the app with 'Samples per set' at its minimum; returns (context, page)."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_S * 1000)
    page.goto(server.url + "/")
    thumb = page.locator('[data-testid="stSidebar"] [data-testid="stSlider"] input[type="range"]').first
    thumb.focus()
    page.keyboard.press("Home")
    page.wait_for_function("e => e.value === e.min", arg=thumb.element_handle())
    time.sleep(0.5)
    wait_idle(page)
    return context, page


@pytest.fixture(scope="module")
def app(server, browser):
    """One browser session shared by the page tests (navigation through the sidebar, like a user)."""
    context, page = new_session(server, browser)
    yield page
    context.close()


@pytest.mark.parametrize("key", list(PAGES))
def test_page_renders_without_exception_and_draws_charts(app, server, shots_dir, key):
    go(app, key)
    assert app.locator(APP_STATE).get_attribute("data-test-script-state") == "notRunning"
    assert not exceptions(app), f"{key}: {exceptions(app)}"
    assert app.locator("h1").first.inner_text().strip(), f"{key}: no page title"
    if key == "meta":  # 100 ID samples hold no misclassification: a clear message instead of the CV charts
        assert app.get_by_text("Cannot cross-validate yet").count() == 1
    elif PAGES[key][1] and key != "inspect":  # Inspect draws charts once an image is chosen (tested below)
        app.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=60_000)
        assert app.locator(".js-plotly-plot .main-svg").count() >= 1
    save_shot(app, shots_dir / f"{key}.png")
    assert not server.tracebacks(), "\n".join(l for l in server.tracebacks()[0].splitlines() if "width" not in l)[-3000:]


def test_inspect_upload_shows_prediction_and_charts(app, server, shots_dir):
    go(app, "inspect")
    upload = app.locator('[data-testid="stFileUploader"] input[type="file"]').first
    upload.set_input_files({"name": "my_digit.png", "mimeType": "image/png", "buffer": digit_png(0)})
    metric = app.locator('[data-testid="stMetric"]').first
    metric.wait_for()
    time.sleep(0.5)
    wait_idle(app)
    assert "Prediction" in metric.inner_text()
    assert "my_digit.png" in app.locator('[data-testid="stMain"]').inner_text()
    app.locator('[data-testid="stMain"] .js-plotly-plot .main-svg').first.wait_for()
    assert app.locator(".js-plotly-plot").count() >= 3  # probabilities, GAIA map, layer profile
    assert not exceptions(app), exceptions(app)
    save_shot(app, shots_dir / "inspect.png")


def test_inspect_broken_png_shows_a_message_not_an_exception(server, browser):
    context, app = new_session(server, browser)  # a new session: no earlier upload in its file list
    go(app, "inspect")
    upload = app.locator('[data-testid="stFileUploader"] input[type="file"]').first
    upload.set_input_files({"name": "bad.png", "mimeType": "image/png", "buffer": b"this is not an image\n" * 10})
    message = app.locator('[data-testid="stAlert"]', has_text="bad.png")
    message.first.wait_for()
    time.sleep(0.5)
    wait_idle(app)
    assert not exceptions(app), exceptions(app)
    assert app.locator('[data-testid="stMetric"]').count() == 0  # no prediction for a broken file
    assert not server.tracebacks(), "\n".join(l for l in server.tracebacks()[0].splitlines() if "width" not in l)[-3000:]
    context.close()


def test_deep_link_to_a_page_shows_the_shared_sidebar(browser, tmp_path):
    # a fresh server whose first request is the deep link (regression: pages/ was once run without app.py)
    with StreamlitServer(tmp_path) as fresh:
        fresh.wait_healthy()
        context = browser.new_context(viewport=VIEWPORT)
        try:
            page = context.new_page()
            page.goto(fresh.url + "/learn")
            page.get_by_text("Learn: gradient-based uncertainty").first.wait_for(timeout=120_000)
            time.sleep(1.0)
            wait_idle(page, 120)
            assert page.locator('[data-testid="stSidebar"] [data-testid="stSlider"]').count() == 1
        finally:
            context.close()
