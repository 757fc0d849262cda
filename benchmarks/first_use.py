"""What a new user waits for, in headless Chromium against ``streamlit run app.py`` (a fresh server and cache dir):

(a) **The first visit to Compare models** on the default quick start (the two bundled models, mnist-cnn and
    mnist-vit, on the embedded default: 1,000 ID digits, three OOD sets, every method): the page opened by its
    address on a fresh server with an empty cache, until the page has settled.
(b) **Playground strokes**: a new session on the Playground (bundled mnist-cnn, the sidebar's defaults), one
    stroke drawn with mouse events after another, each a new image; a stroke's time runs from the mouse-up on
    the canvas until the page has settled. Median and p95 over the strokes (the first one is reported apart: it
    is the first image of the session). Then "Score the path" is pressed once and timed the same way.

"Settled" is read in the page itself: a MutationObserver on the app's ``data-test-script-state`` records when
a script run starts and ends, and a ``requestAnimationFrame`` poll records the first moment after the last run
that nothing is stale (``data-stale``) and every Plotly chart has drawn its SVG. Both are reported: "idle" =
Streamlit's running indicator gone; "drawn" = also every chart drawn. The page must stay so for 0.6 s, which is
not counted.

    .venv/bin/python benchmarks/first_use.py [--strokes 10] [--skip-compare] [--write]

Prints a markdown table; ``--write`` puts it in docs/PERFORMANCE.md under "First use, as a user sees it".
The cores may be shared with other work: the load average before and after is printed with the numbers.
"""

from __future__ import annotations

import argparse
import math
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from load_test import append_section, load_average  # benchmarks/load_test.py, beside this script

from gradviz.testing.browser import APP_STATE, CHROMIUM, CHROMIUM_ARGS, VIEWPORT, StreamlitServer

ROOT = Path(__file__).resolve().parent.parent
HEADING = "First use, as a user sees it"
QUIET_MS = 600  # the page must stay settled this long (not counted)

# Installed once per page: records every change of the script state with its time (performance.now()).
OBSERVER_JS = """() => {
  if (window.__gv) return;
  const app = document.querySelector('[data-testid="stApp"]');
  window.__gv = {runs: [['running', 0]], up: null};  // the page load itself starts a run
  const note = () => window.__gv.runs.push([app.getAttribute('data-test-script-state'), performance.now()]);
  new MutationObserver(note).observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
  note();
  document.addEventListener('pointerup', () => { window.__gv.up = performance.now(); }, true);
}"""

# Polled every animation frame by wait_for_function: true once the page has settled for QUIET_MS after ``since``
# (at least one script run started after it). Leaves the settle times in window.__gv.result.
SETTLED_JS = """([since, quiet]) => {
  const gv = window.__gv, now = performance.now();
  const runs = gv.runs.filter(r => r[1] >= since);
  const state = document.querySelector('[data-testid="stApp"]').getAttribute('data-test-script-state');
  if (!runs.some(r => r[0] === 'running') || state !== 'notRunning') { gv.drawnAt = null; return false; }
  const idleAt = runs[runs.length - 1][1];
  const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')];
  const drawn = document.querySelectorAll('[data-stale="true"]').length === 0
                && charts.every(c => c.querySelector('.main-svg'));
  if (!drawn) { gv.drawnAt = null; return false; }
  gv.drawnAt = gv.drawnAt || now;
  if (now - Math.max(idleAt, gv.drawnAt) < quiet) return false;
  const started = runs.find(r => r[0] === 'running')[1];
  gv.result = {idle: idleAt - since, drawn: Math.max(idleAt, gv.drawnAt) - since, runs: runs.length,
               started: started - since};
  return true;
}"""


def settle(page, since: float, timeout_s: float) -> dict:
    """Seconds from ``since`` (page clock, ms) to idle and to drawn, once the page has settled."""
    page.evaluate("() => { window.__gv.drawnAt = null; window.__gv.result = null; }")
    page.wait_for_function(SETTLED_JS, arg=[since, QUIET_MS], polling="raf", timeout=timeout_s * 1000)
    out = page.evaluate("() => window.__gv.result")
    errors = page.locator('[data-testid="stException"]')
    if errors.count():
        raise RuntimeError(f"exception on the page: {errors.first.inner_text()[:300]}")
    return {"idle": out["idle"] / 1000, "drawn": out["drawn"] / 1000, "runs": out["runs"], "started": out["started"] / 1000}


def stroke_points(i: int) -> list[tuple[float, float]]:
    """The i-th stroke of a growing drawing on the 280 px canvas: arcs and lines at varying places, so every
    stroke makes a new image (nothing is served from a cache)."""
    cx, cy = 140 + 40 * math.cos(1.7 * i), 140 + 40 * math.sin(2.3 * i)
    r = 35 + 8 * (i % 4)
    a0 = 50.0 * i
    return [(cx + r * math.cos(math.radians(a0 + t)), cy + r * math.sin(math.radians(a0 + t))) for t in range(0, 200, 10)]


def draw(page, points) -> float:
    """One mouse stroke on the canvas; returns the page-clock time of its mouse-up."""
    canvas = page.locator("canvas.upper-canvas").first
    canvas.scroll_into_view_if_needed()  # mouse events outside the viewport are lost
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=2)
    page.mouse.up()
    return page.evaluate("() => window.__gv.up")


def pct(values: list[float], q: float) -> float:
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def compare_models_first_visit(browser, timeout_s: float) -> dict:
    """Fresh server and cache: Compare models opened by its address, until settled."""
    with tempfile.TemporaryDirectory(prefix="gv-first-") as tmp, StreamlitServer(tmp) as server:
        server.wait_healthy()
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        t0 = time.perf_counter()
        page.goto(server.url + "/compare_models", timeout=timeout_s * 1000)
        page.locator(APP_STATE).wait_for(timeout=timeout_s * 1000)
        page.evaluate(OBSERVER_JS)
        since = 0.0  # the page clock starts at the navigation
        texts: list[str] = []
        deadline = time.perf_counter() + timeout_s
        # the progress texts shown on the way (each wait says what it does and how long is left)
        while time.perf_counter() < deadline:
            try:
                page.wait_for_function(SETTLED_JS, arg=[since, QUIET_MS], polling="raf", timeout=1000)
                break
            except Exception:  # noqa: BLE001  (not settled yet: read the progress text and wait on)
                shown = page.locator('[data-testid="stProgress"], [data-testid="stSpinner"]').all_inner_texts()
                at = time.perf_counter() - t0
                texts += [f"{at:.0f} s: {t.strip()}" for t in shown if t.strip() and (not texts or not texts[-1].endswith(t.strip()))]
        out = page.evaluate("() => window.__gv.result")
        if out is None:
            raise TimeoutError(f"Compare models had not settled after {timeout_s:.0f} s")
        wall = time.perf_counter() - t0
        errors = page.locator('[data-testid="stException"]').all_inner_texts()
        context.close()
        return {"idle": out["idle"] / 1000, "drawn": out["drawn"] / 1000, "wall": wall, "progress": texts,
                "errors": errors, "tracebacks": len(server.tracebacks())}


def playground_strokes(browser, strokes: int, timeout_s: float) -> dict:
    """A fresh server: the Playground's default (Draw, bundled mnist-cnn), ``strokes`` strokes, then the path."""
    with tempfile.TemporaryDirectory(prefix="gv-first-") as tmp, StreamlitServer(tmp) as server:
        server.wait_healthy()
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(timeout_s * 1000)
        t0 = time.perf_counter()
        page.goto(server.url + "/playground")
        page.get_by_text("Draw a digit on the canvas").first.wait_for()
        page.evaluate(OBSERVER_JS)
        first_open = settle(page, 0.0, timeout_s)
        opened = time.perf_counter() - t0
        times = []
        for i in range(strokes):
            up = draw(page, stroke_points(i))
            times.append(settle(page, up, timeout_s))
            print(f"  stroke {i + 1}: run started after {times[-1]['started']:.2f} s, idle {times[-1]['idle']:.2f} s, "
                  f"drawn {times[-1]['drawn']:.2f} s ({times[-1]['runs']} state changes)", flush=True)
        path = None
        button = page.locator('[data-testid="stButton"] button', has_text="Score the path")
        if button.count():
            button.first.scroll_into_view_if_needed()
            button.first.click()
            up = page.evaluate("() => window.__gv.up")
            path = settle(page, up, timeout_s)
        context.close()
        return {"open": opened, "open_idle": first_open["idle"], "strokes": times, "path": path,
                "tracebacks": len(server.tracebacks())}


INTRO = """Measured by `benchmarks/first_use.py` in headless Chromium against `streamlit run app.py` with a fresh server and
an empty cache, as the quick start runs it. A time runs from the navigation (Compare models opened by its
address) or from the mouse-up of a stroke on the canvas to the moment the page has settled: **idle** = Streamlit's
running indicator gone (the app's script state `notRunning`, read by a MutationObserver in the page), **drawn** =
also nothing stale and every Plotly chart drawn, confirmed by 0.6 s without change (not counted). Strokes draw a
growing figure with mouse events, each a new image; the first stroke of a session is reported apart."""


def table(compare: dict | None, play: dict | None, strokes: int) -> str:
    rows = ["| measurement | idle s (running indicator gone) | drawn s (every chart drawn) |", "|---|---:|---:|"]
    if compare is not None:
        rows.append(f"| Compare models, first visit (fresh server and cache; mnist-cnn + mnist-vit, 1,000/set, all "
                    f"methods) | {compare['idle']:.1f} | {compare['drawn']:.1f} |")
    if play is not None:
        rest = play["strokes"][1:] or play["strokes"]
        idle, drawn = [s["idle"] for s in rest], [s["drawn"] for s in rest]
        rows.append(f"| Playground: open the page (fresh server and cache: the ID reference of every method) | "
                    f"{play['open_idle']:.1f} | {play['open']:.1f} (wall) |")
        rows.append(f"| Playground: first stroke of the session | {play['strokes'][0]['idle']:.2f} | "
                    f"{play['strokes'][0]['drawn']:.2f} |")
        rows.append(f"| Playground: stroke → settled, median of the next {len(rest)} | {statistics.median(idle):.2f} | "
                    f"{statistics.median(drawn):.2f} |")
        rows.append(f"| Playground: stroke → settled, p95 of the next {len(rest)} | {pct(idle, 0.95):.2f} | "
                    f"{pct(drawn, 0.95):.2f} |")
        if play["path"] is not None:
            rows.append(f"| Playground: 'Score the path' (31 steps) → settled | {play['path']['idle']:.2f} | "
                        f"{play['path']['drawn']:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strokes", type=int, default=11, help="strokes drawn (the first is reported apart)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--skip-compare", action="store_true", help="only the Playground")
    ap.add_argument("--skip-playground", action="store_true", help="only Compare models")
    ap.add_argument("--write", action="store_true", help=f"write docs/PERFORMANCE.md's section '{HEADING}'")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup (stop servers) when killed
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} not found (apt-get install chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    before, t0 = load_average(), time.perf_counter()
    compare = play = None
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            if not args.skip_compare:
                compare = compare_models_first_visit(browser, args.timeout)
                print(f"Compare models, first visit: idle {compare['idle']:.1f} s, drawn {compare['drawn']:.1f} s; "
                      "progress shown:\n  " + "\n  ".join(compare["progress"]), flush=True)
                if compare["errors"] or compare["tracebacks"]:
                    print(f"  errors: {compare['errors'][:2]}, server tracebacks: {compare['tracebacks']}")
            if not args.skip_playground:
                play = playground_strokes(browser, args.strokes, args.timeout)
        finally:
            browser.close()
    after = load_average()
    body = table(compare, play, args.strokes)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    footer = (f"{stamp} · `benchmarks/first_use.py --strokes {args.strokes}` · headless Chromium "
              f"{VIEWPORT['width']}×{VIEWPORT['height']}, `streamlit run app.py` as the quick start runs it; load "
              f"average before/after: {before} / {after} on {__import__('os').cpu_count()} cores; total "
              f"{time.perf_counter() - t0:.0f} s.")
    print(body + "\n\n" + footer)
    if args.write:
        append_section(ROOT / "docs" / "PERFORMANCE.md", HEADING, INTRO + "\n\n" + body + "\n\n" + footer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
