"""Real browser: on the Trust page, moving the coverage slider changes the stated outcome and the galleries."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from gradviz.testing.browser_sync import MAIN, exceptions, go, new_session, rerun, traceback_head


def _state(page) -> tuple[float, str, int]:
    """(kept share stated, the rejected gallery's heading, images shown in the main area)."""
    main = page.locator(MAIN)
    text = main.inner_text()
    kept = float(re.search(r"([\d.]+) % of images kept", text).group(1))
    rejected = re.search(r"Rejected \(most uncertain first\): [\d,]+", text).group(0)
    return kept, rejected, main.locator('[data-testid="stImage"] img').count()


def test_moving_the_coverage_slider_changes_outcome_and_galleries(server, browser):
    context, page = new_session(server, browser)
    go(page, "trust")
    assert not exceptions(page), exceptions(page)
    expect(page.locator(".js-plotly-plot .main-svg").first).to_be_visible()
    kept, rejected, images = _state(page)
    thumb = page.locator('[data-testid="stMain"] [data-testid="stSlider"]', has_text="Coverage").locator(
        'input[type="range"]').first
    with rerun(page):
        thumb.focus()
        page.keyboard.press("Home")  # the smallest coverage: nearly everything rejected
        page.wait_for_function("e => e.value === e.min", arg=thumb.element_handle())
    expect(page.locator(MAIN).get_by_text(re.compile(r"\b5\.0 % of images kept")).first).to_be_visible()
    kept_after, rejected_after, images_after = _state(page)
    assert kept == 90.0 and kept_after == 5.0
    assert rejected_after != rejected and images_after > images  # the rejected gallery fills up
    assert not exceptions(page), exceptions(page)
    assert not server.tracebacks(), traceback_head(server)
    context.close()
