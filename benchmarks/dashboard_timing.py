"""Dashboard responsiveness, measured in headless Chromium against `streamlit run app.py` (fresh cache dirs).

(a) Compare on the embedded default (1,000 ID + 1,000 per OOD set, all methods): first computation
    (cold server, via the Home page which computes the same cached result) and Compare from cache.
(b) Inspect: one uploaded image -> all scores + three attribution maps shown; -> fully rendered (GAIA map and
    the per-layer profile, which computes the layer table of every set once).
(c) Per page, time to first full render: cold (fresh server + fresh cache dir, page opened first) and warm
    (a new session on the same server after the cold visit).

    .venv/bin/python benchmarks/dashboard_timing.py [--samples 1000] [--page-samples 100] [--write]

Prints a markdown table; ``--write`` appends it to docs/PERFORMANCE.md under "Dashboard responsiveness".
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("gv_load_test", ROOT / "benchmarks" / "load_test.py")
lt = importlib.util.module_from_spec(_spec)
sys.modules["gv_load_test"] = lt
_spec.loader.exec_module(lt)

DEFAULT_SAMPLES = 1000  # the sidebar default


async def _session(browser, url: str, samples: int, first: str | None = None):
    """A new session at "/"; slider set unless it is the default; optionally click page ``first`` at once."""
    context = await browser.new_context(viewport=lt.VIEWPORT)
    page = await context.new_page()
    await page.goto(url + "/", timeout=600_000)
    await page.locator('[data-testid="stSidebarNav"] a').first.wait_for(timeout=600_000)
    if samples != DEFAULT_SAMPLES:
        await lt.set_sample_limit(page, samples, 600)
    t0 = time.perf_counter()
    if first and first != "home":
        await _go(page, first)
    await _settle(page)
    return context, page, time.perf_counter() - t0


async def _go(page, key: str) -> None:
    await lt.goto_page(page, lt.PAGES[key][0])
    await page.locator('[data-testid="stSidebarNav"] a[aria-current="page"]', has_text=lt.PAGES[key][0]).wait_for(
        timeout=600_000)


async def _settle(page) -> None:
    await asyncio.sleep(0.4)
    await lt.wait_idle(page, 900)
    if await lt.exceptions(page):
        raise RuntimeError(f"exception on the page: {(await lt.exceptions(page))[0][:300]}")


async def _timed_go(page, key: str) -> float:
    t0 = time.perf_counter()
    await _go(page, key)
    await _settle(page)
    return time.perf_counter() - t0


async def measure_default(samples: int) -> list[tuple[str, str, float]]:
    """(a) and (b) on one fresh server."""
    from playwright.async_api import async_playwright

    class Rows(list):
        def append(self, row):  # progress on stderr as each number arrives
            print(f"  {row[0]}: {row[2]:.1f}", file=sys.stderr, flush=True)
            super().append(row)

    rows = Rows()
    with tempfile.TemporaryDirectory(prefix="gv-timing-") as tmp, lt.StreamlitServer(tmp) as server:
        server.wait_healthy()
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=lt.CHROMIUM, args=lt.CHROMIUM_ARGS)
            try:
                ctx, page, first = await _session(browser, server.url, samples)  # Home: computes the default result
                rows.append(("(a) Compare: first computation (cold server, all methods)", f"{samples}/set", first))
                rows.append(("(a) Compare: page from cache, same session", f"{samples}/set", await _timed_go(page, "compare")))
                await ctx.close()
                ctx, page, _ = await _session(browser, server.url, samples)
                rows.append(("(a) Compare: page from cache, new session", f"{samples}/set", await _timed_go(page, "compare")))
                await _go(page, "inspect")
                await _settle(page)
                upload = page.locator('[data-testid="stFileUploader"] input[type="file"]').first
                t0 = time.perf_counter()
                await upload.set_input_files({"name": "digit.png", "mimeType": "image/png", "buffer": lt.digit_png(3)})
                await page.locator('[data-testid="stDownloadButton"]', has_text="overlay.png").nth(2).wait_for(
                    timeout=900_000)
                rows.append(("(b) Inspect upload → all scores + 3 attribution maps", f"{samples}/set",
                             time.perf_counter() - t0))
                await _settle(page)
                rows.append(("(b) Inspect upload → fully rendered (GAIA, layer profile of every set)", f"{samples}/set",
                             time.perf_counter() - t0))
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
    load0 = lt.load_average()
    t0 = time.perf_counter()
    ab = asyncio.run(measure_default(args.samples))
    pages = [] if args.skip_pages else asyncio.run(measure_pages(args.page_samples))
    lines = ["| measurement | samples | seconds |", "|---|---:|---:|"]
    lines += [f"| {name} | {n} | {v:.1f} |" if "RSS" not in name else f"| {name} | | {v:.0f} MiB |" for name, n, v in ab]
    if pages:
        lines += ["", "| page: time to first full render | samples | cold s (fresh server + cache) | warm s (new session) |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {name} | {n} | {c:.1f} | {w:.1f} |" for name, n, c, w in pages]
    note = (f"{time.strftime('%Y-%m-%d %H:%M')} · `benchmarks/dashboard_timing.py --samples {args.samples} "
            f"--page-samples {args.page_samples}` · headless Chromium 1280×900, times from the click/upload until "
            f"the script run finished (stApp script state `notRunning`) with no exception. Cold page times "
            f"include the interrupted start of Home (sessions land on /). Load average before/after: {load0} / "
            f"{lt.load_average()} on 2 shared cores; total {time.perf_counter() - t0:.0f} s.")
    text = "\n".join(lines) + "\n\n" + note
    print(text)
    if args.write:
        lt.append_section(ROOT / "docs" / "PERFORMANCE.md", "Dashboard responsiveness", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
