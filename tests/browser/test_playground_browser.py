"""Real browser: the Playground in headless Chromium. Mouse strokes on the canvas reach the server; the
prediction and the scores change stroke by stroke; undo and reset send the canvas back; a click on the path
plot loads that step; no exception box appears and the server logs no traceback.

GRADVIZ_SCREENSHOTS=1 saves docs/screenshots/playground.png (a drawn 3) and playground_path.png (the path).
The page is opened by its address; the server caps 'Samples per set' at 200 (tests/browser/conftest.py), so the
page's first computation (the ID reference of every method) is small from the start.
"""

from __future__ import annotations

import numpy as np
import pytest
from playwright.sync_api import expect

from gradviz.testing.browser import VIEWPORT
from gradviz.testing.browser_sync import (exceptions, is_idle, open_session, rerun, save_shot, settle_layout,
                                          traceback_head)

GAUGES_JS = """() => {
  const gd = [...document.querySelectorAll('.js-plotly-plot')]
    .find(g => g._fullLayout && ((g._fullLayout.title || {}).text || '').includes('ID percentile'));
  if (!gd) return null;
  const out = {};
  gd._fullData.slice(1).forEach(t => Array.from(t.y).forEach((m, i) => { out[m] = t.x[i]; }));
  return out;
}"""

# page coordinates of step k of the path plot's first line (Plotly's own axis maps)
PATH_POINT_JS = """k => {
  const gd = [...document.querySelectorAll('.js-plotly-plot')]
    .find(g => g._fullLayout && ((g._fullLayout.title || {}).text || '').includes('Along the path'));
  gd.scrollIntoView({block: 'center'});
  const t = gd._fullData[0], xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
  return [r.left + xa._offset + xa.l2p(t.x[k]), r.top + ya._offset + ya.l2p(t.y[k])];
}"""


def arc(cx: float, cy: float, r: float, a0: float, a1: float, n: int = 24) -> list[tuple[float, float]]:
    t = np.deg2rad(np.linspace(a0, a1, n))
    return list(zip(cx + r * np.cos(t), cy + r * np.sin(t)))


UPPER, LOWER = arc(140, 90, 50, -160, 90), arc(140, 190, 55, -90, 160)  # the two halves of a '3'
SCRIBBLE = [(60, 60), (230, 220), (70, 230), (220, 50), (60, 140), (240, 140)]


def stroke(page, points) -> None:
    """One mouse stroke on the canvas (canvas pixel coordinates), then wait for the script run it starts."""
    box = page.locator("canvas.upper-canvas").first.bounding_box()
    with rerun(page):
        page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
        page.mouse.down()
        for x, y in points[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=4)
        page.mouse.up()


def click_and_rerun(page, locator) -> None:
    with rerun(page):
        locator.click()


def state(page) -> tuple[str, dict]:
    """(predicted class, {method: ID percentile}) as shown."""
    metric = page.locator('[data-testid="stMetric"]', has_text="Prediction").first
    value = metric.locator('[data-testid="stMetricValue"]').inner_text().strip()
    return value, page.evaluate(GAUGES_JS)


@pytest.fixture(scope="module")
def page(server, browser):
    context, page = open_session(server, browser, "/playground")
    expect(page.get_by_text("Draw a digit on the canvas").first).to_be_visible()
    yield page
    context.close()


def test_strokes_change_prediction_and_scores(page, server, shots_dir):
    assert page.get_by_text("Draw a digit on the canvas").count() == 1
    assert page.locator('[data-testid="stSidebarNav"] a[aria-current="page"]', has_text="Playground").count() == 1
    stroke(page, UPPER)
    first_pred, first = state(page)
    stroke(page, LOWER)
    pred, scores = state(page)
    assert pred == "3" and first_pred != "3", (first_pred, pred)
    assert set(scores) == set(first) and scores != first
    assert all(0 <= v <= 100 for v in scores.values())
    assert not exceptions(page), exceptions(page)
    page.set_viewport_size({"width": VIEWPORT["width"], "height": 1350})
    settle_layout(page)
    save_shot(page, shots_dir / "playground.png")
    page.set_viewport_size(VIEWPORT)

    click_and_rerun(page, page.locator("button[aria-label=Undo]"))  # the canvas toolbar's undo: back to the upper half
    assert state(page) == (first_pred, first)
    stroke(page, LOWER)
    stroke(page, SCRIBBLE)  # a scribble over the 3: far from every digit
    scribbled = state(page)[1]
    assert scribbled["mahalanobis"] > scores["mahalanobis"]
    assert not exceptions(page), exceptions(page)
    assert not server.tracebacks(), traceback_head(server)


def test_clicking_a_path_step_loads_it_and_reset_clears(page, server, shots_dir):
    click_and_rerun(page, page.locator("button[aria-label=Undo]"))  # the 3 again, without the scribble
    start = state(page)
    path_chart = page.locator('[data-testid="stPlotlyChart"]', has_text="Along the path")
    expect(path_chart).to_have_count(0)  # a stroke scores the drawing alone: the path waits for the button
    click_and_rerun(page, page.locator('[data-testid="stButton"] button', has_text="Score the path"))
    expect(path_chart).to_have_count(1)
    x, y = page.evaluate(PATH_POINT_JS, 15)  # rotate, step 15 of 31 = 90°
    with rerun(page):
        page.mouse.click(x, y)
    expect(page.locator('[data-testid="stAlert"]', has_text="Showing step").first).to_contain_text("rotate")
    assert state(page) != start  # the live panels show the rotated digit
    save_shot(page, shots_dir / "playground_path.png")
    click_and_rerun(page, page.locator('[data-testid="stButton"] button', has_text="Back to your drawing").first)
    assert state(page) == start
    click_and_rerun(page, page.locator("button[aria-label='Reset canvas & history']"))
    expect(page.get_by_text("Draw a digit on the canvas")).to_have_count(1)
    assert is_idle(page)
    assert not exceptions(page), exceptions(page)
    assert not server.tracebacks(), traceback_head(server)
