"""Dashboard responsiveness, measured in headless Chromium against `streamlit run app.py` (fresh cache dirs).

(a) Compare on the embedded default (1,000 ID + 1,000 per OOD set, all methods): first computation
    (cold server and cache; the Compare page opened directly), then reruns served from the cache: the
    method picker changed, the "Every sample" view and a method picked in it, the other tabs, the page
    opened again in the same session, and the page opened in a new session (a new browser context: no
    HTTP cache, Home first, then Compare from the sidebar).
(b) Inspect: one uploaded image -> all scores + three attribution maps shown; -> fully rendered (GAIA map and
    the per-layer profile, which computes the layer table of every set once).
(c) Per page, time to first full render: cold (fresh server + fresh cache dir, page opened first) and warm
    (a new session on the same server after the cold visit).

A time ends at the first moment the script run is over (stApp ``notRunning``), no element is stale and
every Plotly chart on the page has drawn its SVG — confirmed by 0.6 s without change, which is not counted.

    .venv/bin/python benchmarks/dashboard_timing.py [--samples 1000] [--page-samples 100] [--write]

Prints a markdown table; ``--write`` puts it in docs/PERFORMANCE.md under "Dashboard responsiveness".
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from load_test import append_section, load_average  # benchmarks/load_test.py, beside this script

from gradviz.testing import browser as lt

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_SAMPLES = 1000  # the sidebar default
RERUN_METHODS = ("gaia_z", "confounding", "energy", "grad_l2", "msp")


DRAWN_JS = """() => {
  const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')];
  const stale = document.querySelectorAll('[data-stale="true"]').length;
  return stale === 0 && charts.every(c => c.querySelector('.main-svg'));
}"""


async def until_rendered(page, t0: float, timeout: float = 900.0) -> float:
    """Seconds from ``t0`` to the first moment the page was idle and fully drawn (stable for 0.6 s)."""
    deadline, first = time.perf_counter() + timeout, None
    while time.perf_counter() < deadline:
        state = await page.locator(lt.APP_STATE).get_attribute("data-test-script-state", timeout=timeout * 1000)
        now = time.perf_counter()
        if state == "notRunning" and await page.evaluate(DRAWN_JS):
            first = first or now
            if now - first >= 0.6:
                if await lt.exceptions(page):
                    raise RuntimeError(f"exception on the page: {(await lt.exceptions(page))[0][:300]}")
                return first - t0
        else:
            first = None
        # every poll is a round trip through the browser: on two cores, polling a long computation at
        # 20 Hz took CPU from it; after 2 s poll at 5 Hz (the time is then at most 0.2 s late)
        await asyncio.sleep(0.05 if now - t0 < 2.0 else 0.2)
    raise TimeoutError(f"the page was not idle and drawn after {timeout:.0f} s")


async def _session(browser, url: str, samples: int, first: str | None = None, path: str = "/"):
    """A new session at ``path``; slider set unless it is the default; optionally click page ``first`` at once."""
    context = await browser.new_context(viewport=lt.VIEWPORT)
    page = await context.new_page()
    t0 = time.perf_counter()
    await page.goto(url + path, timeout=600_000)
    await page.locator('[data-testid="stSidebarNav"] a').first.wait_for(timeout=600_000)
    if samples != DEFAULT_SAMPLES:
        await lt.set_sample_limit(page, samples, 600)
        t0 = time.perf_counter()
    if first and first != "home":
        t0 = time.perf_counter()
        await _go(page, first)
    return context, page, await until_rendered(page, t0)


async def _go(page, key: str) -> None:
    await lt.goto_page(page, lt.PAGES[key][0])
    await page.locator('[data-testid="stSidebarNav"] a[aria-current="page"]', has_text=lt.PAGES[key][0]).wait_for(
        timeout=600_000)


async def _timed_go(page, key: str) -> float:
    t0 = time.perf_counter()
    await _go(page, key)
    return await until_rendered(page, t0)


async def _pick_method(page, name: str) -> float:
    """Choose ``name`` in Compare's method picker; seconds until the page is redrawn."""
    box = page.locator('[data-testid="stSelectbox"]', has_text="Method").first
    await box.click()
    t0 = time.perf_counter()
    await page.locator('[role="option"]', has_text=name).first.click()
    return await until_rendered(page, t0)


async def _click(page, locator) -> float:
    """Click ``locator``; seconds until the page is redrawn."""
    await locator.wait_for(timeout=600_000)
    t0 = time.perf_counter()
    await locator.click()
    return await until_rendered(page, t0)


def _view(page, label: str):
    return page.locator('[data-testid="stButtonGroup"] button', has_text=label).first


def _tab(page, label: str):
    return page.get_by_role("tab", name=label)


async def measure_default(samples: int) -> list[tuple[str, str, float]]:
    """(a) and (b) on one fresh server."""
    from playwright.async_api import async_playwright

    class Rows(list):
        def append(self, row):  # progress on stderr as each number arrives
            print(f"  {row[0]}: {row[2]:.2f}", file=sys.stderr, flush=True)
            super().append(row)

    rows = Rows()
    n = f"{samples}/set"
    with tempfile.TemporaryDirectory(prefix="gv-timing-") as tmp, lt.StreamlitServer(tmp) as server:
        server.wait_healthy()
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=lt.CHROMIUM, args=lt.CHROMIUM_ARGS)
            try:
                path = "/compare" if samples == DEFAULT_SAMPLES else "/"
                ctx, page, first = await _session(browser, server.url, samples, path=path,
                                                  first=None if samples == DEFAULT_SAMPLES else "compare")
                rows.append(("(a) Compare: first computation (cold server and cache, all methods)", n, first))
                picks = [await _pick_method(page, name) for name in RERUN_METHODS * 2]  # first and second visits
                rows.append(("(a) Compare: rerun from cache, another method picked (median of "
                             f"{len(picks)}; max {max(picks):.2f} s)", n, statistics.median(picks)))
                strip = [await _click(page, _view(page, "Every sample"))]
                strip += [await _pick_method(page, name) for name in RERUN_METHODS]
                rows.append(("(a) Compare: rerun from cache, 'Every sample' view, then another method in it (median of "
                             f"{len(strip)}; max {max(strip):.2f} s)", n, statistics.median(strip)))
                await _click(page, _view(page, "Histogram"))
                tabs = []
                for _ in range(2):
                    for label in ("ROC & precision-recall", "Detection metrics & exports", "Score distributions"):
                        tabs.append(await _click(page, _tab(page, label)))
                rows.append((f"(a) Compare: rerun from cache, another tab (median of {len(tabs)}; "
                             f"max {max(tabs):.2f} s)", n, statistics.median(tabs)))
                again = []
                for _ in range(3):
                    await _timed_go(page, "home")
                    again.append(await _timed_go(page, "compare"))
                rows.append((f"(a) Compare: page again in the same session, from cache (median of 3; max "
                             f"{max(again):.2f} s)", n, statistics.median(again)))
                await ctx.close()
                fresh = []
                for _ in range(3):
                    ctx, page, _ = await _session(browser, server.url, samples)
                    fresh.append(await _timed_go(page, "compare"))
                    if len(fresh) < 3:
                        await ctx.close()
                rows.append((f"(a) Compare: page from cache, new session (median of 3; max {max(fresh):.2f} s)", n,
                             statistics.median(fresh)))
                await _go(page, "inspect")
                await until_rendered(page, time.perf_counter())
                upload = page.locator('[data-testid="stFileUploader"] input[type="file"]').first
                t0 = time.perf_counter()
                await upload.set_input_files({"name": "digit.png", "mimeType": "image/png", "buffer": lt.digit_png(3)})
                await page.locator('[data-testid="stDownloadButton"]', has_text="overlay.png").nth(2).wait_for(
                    timeout=900_000)
                rows.append(("(b) Inspect upload → all scores + 3 attribution maps", n, time.perf_counter() - t0))
                rows.append(("(b) Inspect upload → fully rendered (GAIA, layer profile of every set)", n,
                             await until_rendered(page, t0)))
                await ctx.close()
            finally:
                await browser.close()
        rows.append(("server peak RSS MiB (a, b)", "", server.peak_rss_mib()))
        if server.tracebacks():
            print("server tracebacks:\n", server.tracebacks()[0][-1500:], file=sys.stderr)
    return rows


async def measure_pages(samples: int) -> list[tuple[str, str, float, float]]:
    """(c): per page, cold (fresh server + cache dir) and warm (new session, same server)."""
    from playwright.async_api import async_playwright

    rows = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=lt.CHROMIUM, args=lt.CHROMIUM_ARGS)
        try:
            for key in lt.PAGES:
                with tempfile.TemporaryDirectory(prefix="gv-timing-") as tmp, lt.StreamlitServer(tmp) as server:
                    server.wait_healthy()
                    ctx, page, cold = await _session(browser, server.url, samples, first=key)
                    await ctx.close()
                    ctx, page, warm = await _session(browser, server.url, samples, first=key)
                    await ctx.close()
                rows.append((lt.PAGES[key][0], f"{samples}/set", cold, warm))
                print(f"  {key}: cold {cold:.1f} s, warm {warm:.1f} s", file=sys.stderr)
        finally:
            await browser.close()
    return rows


def speed_probe() -> float:
    """Milliseconds of one plain forward+backward of the bundled model at batch 256 (fastest of 12 calls): how fast
    these shared cores are right now (the dashboard's times scale with it)."""
    import torch

    from gradviz.models import load_model

    model = load_model("mnist-cnn")
    x = torch.rand(256, 1, 28, 28, generator=torch.Generator().manual_seed(0), requires_grad=True)
    best = float("inf")
    for _ in range(12):
        t0 = time.perf_counter()
        torch.autograd.grad(model(x).sum(), x)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="samples per set for (a) and (b)")
    ap.add_argument("--page-samples", type=int, default=100, help="samples per set for (c)")
    ap.add_argument("--skip-pages", action="store_true", help="only (a) and (b)")
    ap.add_argument("--write", action="store_true", help="append to docs/PERFORMANCE.md")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup (stop servers) when killed
    if not Path(lt.CHROMIUM).exists():
        print(f"{lt.CHROMIUM} not found", file=sys.stderr)
        return 2
    load0, probe0 = load_average(), speed_probe()
    t0 = time.perf_counter()
    ab = asyncio.run(measure_default(args.samples))
    pages = [] if args.skip_pages else asyncio.run(measure_pages(args.page_samples))
    lines = ["| measurement | samples | seconds |", "|---|---:|---:|"]
    lines += [f"| {name} | {n} | {v:.2f} |" if "RSS" not in name else f"| {name} | | {v:.0f} MiB |"
              for name, n, v in ab]
    if pages:
        lines += ["", "| page: time to first full render | samples | cold s (fresh server + cache) "
                      "| warm s (new session) |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {name} | {n} | {c:.1f} | {w:.1f} |" for name, n, c, w in pages]
    note = (f"{time.strftime('%Y-%m-%d %H:%M')} · `benchmarks/dashboard_timing.py --samples {args.samples} "
            f"--page-samples {args.page_samples}` · headless Chromium 1280×900; a time runs from the navigation, "
            f"click or upload to the first moment the script run was over, nothing was stale and every Plotly "
            f"chart was drawn (no exception). Load average before/after: {load0} / {load_average()} on 2 "
            f"shared cores; one plain forward+backward of mnist-cnn at batch 256 took {probe0:.0f} / "
            f"{speed_probe():.0f} ms before/after (the dashboard's times scale with it); total "
            f"{time.perf_counter() - t0:.0f} s.")
    text = "\n".join(lines) + "\n\n" + note
    print(text)
    if args.write:
        append_section(ROOT / "docs" / "PERFORMANCE.md", "Dashboard responsiveness", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
