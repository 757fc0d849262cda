"""Real browser: what a new user meets first, on a server that warms the default results of both bundled models in
the background (GRADVIZ_WARM_MODELS, as the quick start does; 100 samples per set here to keep it short).
Compare models opened first shows both models; on the Playground a stroke scores the drawing alone, its path is
scored when "Score the path" is pressed, and the next stroke asks again. Every wait is a Playwright ``expect``."""

from __future__ import annotations

import math

import pytest

from gradviz.testing.browser import APP_STATE, VIEWPORT

SERVER_ENV = {"GRADVIZ_MAX_SAMPLES_WEB": "100", "GRADVIZ_WARM_MODELS": "mnist-cnn,mnist-vit"}
TIMEOUT_MS = 300_000  # a first computation on a busy shared 2-core machine can take minutes


def arc(cx: float, cy: float, r: float, a0: float, a1: float, n: int = 24) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a)))
            for a in (a0 + (a1 - a0) * i / (n - 1) for i in range(n))]


def stroke(page, points) -> None:
    """One mouse stroke on the canvas (canvas pixel coordinates)."""
    canvas = page.locator("canvas.upper-canvas").first
    canvas.scroll_into_view_if_needed()  # mouse events outside the viewport are lost
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=4)
    page.mouse.up()


@pytest.fixture(scope="module")
def context(browser):
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    ctx.close()


def idle_and_clean(page, server) -> None:
    from playwright.sync_api import expect

    expect(page.locator(APP_STATE)).to_have_attribute("data-test-script-state", "notRunning", timeout=TIMEOUT_MS)
    expect(page.locator('[data-testid="stException"]')).to_have_count(0)
    assert not server.tracebacks(), server.tracebacks()[0][-3000:]


def test_compare_models_opened_first_shows_both_bundled_models(server, context):
    from playwright.sync_api import expect

    page = context.new_page()
    page.goto(server.url + "/compare_models")
    expect(page.get_by_text("Detection metrics per model")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_text("ID accuracy")).to_have_count(2, timeout=TIMEOUT_MS)  # one histogram per model
    idle_and_clean(page, server)
    page.close()


def test_a_stroke_scores_the_drawing_and_its_path_waits_for_the_button(server, context):
    from playwright.sync_api import expect

    page = context.new_page()
    page.goto(server.url + "/playground")
    expect(page.get_by_text("Draw a digit on the canvas")).to_be_visible(timeout=TIMEOUT_MS)
    button = page.locator('[data-testid="stButton"] button', has_text="Score the path")
    path_chart = page.locator('[data-testid="stPlotlyChart"]', has_text="Along the path")
    stroke(page, arc(140, 90, 50, -160, 90))  # the upper half of a 3
    expect(button).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator('[data-testid="stMetric"]', has_text="Prediction")).to_be_visible()
    expect(path_chart).to_have_count(0)

    button.click()
    expect(path_chart).to_have_count(1, timeout=TIMEOUT_MS)
    expect(button).to_have_count(0)
    expect(page.get_by_text("steps scored as one batch")).to_be_visible()

    stroke(page, arc(140, 190, 55, -90, 160))  # the lower half: a new drawing, whose path is not scored yet
    expect(button).to_be_visible(timeout=TIMEOUT_MS)
    expect(path_chart).to_have_count(0)
    expect(page.get_by_text("the last path took")).to_be_visible()  # the wait the button stands for
    idle_and_clean(page, server)
    page.close()
