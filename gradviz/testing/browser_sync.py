"""Synchronous Playwright helpers for the real-browser tests (tests/browser): a session on the app, navigation through
the sidebar, waits for the script run an action starts, exception boxes and screenshots.

Every wait is a Playwright wait on a condition in the page (the server's answer to an action, counted by the page
itself; the run state staying idle; an element or a text appearing), never a fixed sleep. Playwright and Pillow are
imported inside the functions that use them (test requirements, not runtime ones).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from gradviz.testing.browser import APP_STATE, PAGES, VIEWPORT

TIMEOUT_S = 300  # the first computation on a shared 2-core machine can take minutes
SIDEBAR = '[data-testid="stSidebar"]'
MAIN = '[data-testid="stMain"]'

# Counts the messages the Streamlit server sends this page (window.__gvMsgs): a script run, however short, sends
# some (its start, its elements, its end), and nothing else does while a page sits idle. Installed before any page
# script (context.add_init_script), so the app's own WebSocket is the counted one.
_COUNT_MESSAGES_JS = """(() => {
  if (window.__gvMsgs !== undefined) return;
  window.__gvMsgs = 0;
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', () => { window.__gvMsgs++; });
    }
  };
})();"""

# True once the run state has read "notRunning" on `calm` polls in a row (no rerun queued right behind the last).
_CALM_JS = """calm => {
  const s = document.querySelector('[data-testid="stApp"]')?.getAttribute('data-test-script-state');
  window.__gvCalm = s === 'notRunning' ? (window.__gvCalm || 0) + 1 : 0;
  return window.__gvCalm >= calm;
}"""


def new_context(browser):
    """A browser context at the test viewport whose pages count the server's messages (see :func:`rerun`)."""
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(_COUNT_MESSAGES_JS)
    context.set_default_timeout(TIMEOUT_S * 1000)
    return context


def messages(page) -> int:
    """Messages the server has sent this page so far."""
    return page.evaluate("() => window.__gvMsgs || 0")


def wait_idle(page, timeout: float = TIMEOUT_S) -> None:
    """Wait until the script run has finished: the run state reads notRunning on 3 polls 200 ms apart."""
    page.evaluate("() => { window.__gvCalm = 0; }")
    page.wait_for_function(_CALM_JS, arg=3, polling=200, timeout=timeout * 1000)


def wait_run_after(page, before: int, timeout: float = TIMEOUT_S) -> None:
    """Wait until the server has answered (a message after the count ``before`` of :func:`messages`) and the
    script run has finished."""
    page.wait_for_function("n => (window.__gvMsgs || 0) > n", arg=before, timeout=timeout * 1000)
    wait_idle(page, timeout)


@contextmanager
def rerun(page, timeout: float = TIMEOUT_S) -> Iterator[None]:
    """``with rerun(page): <an action that reruns the script>``: after the block, wait for that run to finish."""
    before = messages(page)
    yield
    wait_run_after(page, before, timeout)


def exceptions(page) -> list[str]:
    """Texts of Streamlit exception boxes on the page."""
    return [e.inner_text() for e in page.locator('[data-testid="stException"]').all()]


def traceback_head(server) -> str:
    """The end of the server's first logged traceback (for an assertion message), without layout warnings."""
    tracebacks = server.tracebacks()
    return "\n".join(l for l in tracebacks[0].splitlines() if "width" not in l)[-3000:] if tracebacks else ""


def open_session(server, browser, path: str = "/"):
    """A fresh context + page on ``path`` of the app, once its first run has finished; -> (context, page)."""
    context = new_context(browser)
    page = context.new_page()
    page.goto(server.url + path)
    wait_run_after(page, 0)
    return context, page


def new_session(server, browser):
    """A fresh session on the app with 'Samples per set' at its minimum; -> (context, page)."""
    context, page = open_session(server, browser)
    thumb = page.locator(f'{SIDEBAR} [data-testid="stSlider"] input[type="range"]').first
    if thumb.get_attribute("value") != thumb.get_attribute("min"):
        with rerun(page):
            thumb.focus()
            page.keyboard.press("Home")
            page.wait_for_function("e => e.value === e.min", arg=thumb.element_handle())
    return context, page


def page_key(url: str) -> str:
    """The key of the page at ``url`` (the default page, Home, sits at the root)."""
    return urlparse(url).path.strip("/") or "home"


def go(page, key: str) -> None:
    """Navigate through the sidebar link of page ``key`` and wait for its run to finish."""
    if page_key(page.url) == key:
        wait_idle(page)  # already there: nothing to rerun
        return
    with rerun(page):
        page.locator('[data-testid="stSidebarNav"] a', has_text=PAGES[key][0]).first.click()
        page.wait_for_url(lambda url: page_key(url) == key)


def switch_on(page, label: str) -> None:
    """Turn on the sidebar switch ``label`` (its panel then appears below it)."""
    switch = page.locator(f'{SIDEBAR} [data-testid="stCheckbox"]', has_text=label).first
    if not switch.locator("input").is_checked():
        with rerun(page):
            switch.locator("label").first.click()


def pick(page, container, label: str, option: str) -> None:
    """Choose ``option`` in the selectbox labelled ``label`` inside ``container``."""
    container.get_by_role("combobox", name=label, exact=True).click()
    page.locator('[role="option"]', has_text=option).first.click()


def settle_layout(page) -> None:
    """Wait until the page has drawn two animation frames (after a viewport change, before a screenshot)."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def save_shot(page, path: Path) -> None:
    """Viewport screenshot as an optimised palette PNG (small enough to commit); GRADVIZ_SCREENSHOTS_FULL=DIR also
    saves a full-page shot into DIR (for reviewing the lower sections)."""
    from PIL import Image

    page.screenshot(path=str(path))
    if os.environ.get("GRADVIZ_SCREENSHOTS_FULL"):
        height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")  # inner scroller
        page.set_viewport_size({"width": VIEWPORT["width"], "height": min(int(height), 12000)})
        settle_layout(page)
        page.screenshot(path=str(Path(os.environ["GRADVIZ_SCREENSHOTS_FULL"]) / path.name))
        page.set_viewport_size(VIEWPORT)
    Image.open(path).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def is_idle(page) -> bool:
    """Whether no script run is in progress right now."""
    return page.locator(APP_STATE).get_attribute("data-test-script-state") == "notRunning"
