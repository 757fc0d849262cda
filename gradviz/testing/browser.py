"""Real-browser helpers shared by tests/browser and the dashboard benchmarks (benchmarks/load_test.py,
benchmarks/dashboard_timing.py): a ``streamlit run app.py`` server of the checkout on a free loopback port, a
headless Chromium's flows through the pages (Compare, Inspect), and the multi-session load scenario.

Playwright is imported inside the functions that use it (it is a test requirement, not a runtime one).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from gradviz.ui.pages import PAGES as _PAGES  # the page registry

ROOT = Path(__file__).resolve().parents[2]  # the checkout: app.py and the pages are not part of the package

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}
# Sidebar labels of the pages (st.navigation titles) and whether the page draws plotly charts, by page key.
PAGES = {p.key: (p.title, p.charts) for p in _PAGES}
APP_STATE = '[data-testid="stApp"]'


# ---------------------------------------------------------------- server


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StreamlitServer:
    """``streamlit run app.py`` on loopback in its own process group; ``stop()`` kills the group."""

    def __init__(self, cache_dir: str | Path, env: dict | None = None, log: str | Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log or Path(cache_dir) / "streamlit.log")
        environ = {**os.environ, "GRADVIZ_CACHE_DIR": str(cache_dir), **(env or {})}
        cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
               "--server.port", str(self.port), "--server.address", "127.0.0.1",
               "--server.fileWatcherType", "none", "--server.runOnSave", "false",
               "--browser.gatherUsageStats", "false"]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_healthy(self, timeout: float = 120.0) -> float:
        """Block until ``/_stcore/health`` answers; returns the seconds waited."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"streamlit not healthy after {timeout:.0f} s:\n{self.log()}")

    def pids(self) -> list[int]:
        """The server process and all its descendants (from /proc)."""
        children: dict[int, list[int]] = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(d.name))
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        return out

    def peak_rss_mib(self) -> float:
        """Sum of VmHWM (peak resident set) over the server process tree, MiB."""
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total / 1024

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def tracebacks(self) -> list[str]:
        """Traceback blocks in the server log."""
        text = self.log()
        return [part for part in text.split("Traceback (most recent call last):")[1:]]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=15)
        self._log.close()

    def __enter__(self) -> "StreamlitServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------- test images


def digit_png(seed: int, size: int = 28) -> bytes:
    """A distinct small PNG (a seeded blob stroke) to upload."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size), np.float32)
    for cy, cx in rng.uniform(7, size - 7, (4, 2)):
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0)
    buf = io.BytesIO()
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- async browser flows


async def wait_idle(page, timeout: float = 300.0) -> None:
    """Wait until the script run has finished (stApp's data-test-script-state == notRunning), then settle."""
    deadline = time.perf_counter() + timeout
    calm = 0
    while time.perf_counter() < deadline:
        state = await page.locator(APP_STATE).get_attribute("data-test-script-state", timeout=timeout * 1000)
        calm = calm + 1 if state == "notRunning" else 0
        if calm >= 3:  # stable for ~0.6 s: no rerun queued right behind
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the app was still running after {timeout:.0f} s")


async def set_sample_limit(page, value: int | None = None, timeout: float = 120.0) -> None:
    """Set the sidebar 'Samples per set' slider (gv_limit) by keyboard: minimum when ``value`` is None."""
    thumb = page.locator('[data-testid="stSidebar"] [data-testid="stSlider"] input[type="range"]').first
    await thumb.wait_for(state="attached", timeout=timeout * 1000)
    await thumb.focus()
    await page.keyboard.press("Home")
    if value is not None:
        lo, step = int(await thumb.get_attribute("min")), int(await thumb.get_attribute("step"))
        for _ in range((value - lo) // step):
            await page.keyboard.press("ArrowRight")
    want = str(value if value is not None else await thumb.get_attribute("min"))
    deadline = time.perf_counter() + timeout
    while await thumb.get_attribute("value") != want:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"slider did not reach {want}")
        await asyncio.sleep(0.1)


async def goto_page(page, title: str) -> None:
    """Click the sidebar navigation link ``title`` (keeps the session, like a user)."""
    await page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()


async def exceptions(page) -> list[str]:
    """Texts of Streamlit exception boxes on the page."""
    return [await e.inner_text() for e in await page.locator('[data-testid="stException"]').all()]


async def open_app(browser, base_url: str, limit: int | None = None, timeout: float = 300.0):
    """A fresh browser context + page on the app, with the sample slider at ``limit`` (minimum if None); every
    action on it (a click, a focus) waits up to ``timeout`` for its element, like the flows' own waits."""
    context = await browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(timeout * 1000)
    page = await context.new_page()
    await page.goto(base_url + "/", timeout=timeout * 1000)
    await set_sample_limit(page, limit, timeout)
    return context, page


async def metrics_text(page, timeout: float = 60.0) -> str:
    """The Compare page's detection metrics as the CSV its "metrics.csv" button downloads (the grid is a canvas)."""
    button = page.locator('[data-testid="stDownloadButton"] button', has_text="metrics.csv").first
    await button.wait_for(timeout=timeout * 1000)
    async with page.expect_download(timeout=timeout * 1000) as info:
        await button.click()
    download = await info.value
    return Path(await download.path()).read_text()


async def compare_flow(browser, base_url: str, limit: int | None, timeout: float = 300.0,
                       charts: list[int] | None = None) -> dict:
    """Open the app, go to Compare and read every view's data: the histogram, every sample (strip), the ROC
    curves, and the metrics table (one chart per view: only the open tab and view are drawn).

    ``charts``: how many charts each of the three views drew in a reference run; each read then waits for that
    many (a loaded server mounts them seconds apart, so two equal reads 1 s apart can still be a partial page).
    The counts read are returned as ``charts``."""
    want = charts or [1, 1, 1]
    settle = 1 if charts else 3  # a reference run has no counts to wait for: it waits for a longer calm instead
    wait = min(timeout, 120.0)
    context, page = await open_app(browser, base_url, limit, timeout)
    try:
        await goto_page(page, PAGES["compare"][0])
        await page.get_by_role("tab", name="Score distributions").wait_for(timeout=timeout * 1000)
        await wait_idle(page, timeout)
        parts = [await stable_fingerprint(page, minimum=want[0], timeout=wait, settle=settle)]
        await page.locator('[data-testid="stButtonGroup"] button', has_text="Every sample").first.click()
        await wait_idle(page, timeout)
        parts.append(await stable_fingerprint(page, minimum=want[1], differs_from=parts[0],
                                             timeout=wait, settle=settle))
        await page.get_by_role("tab", name="ROC & precision-recall").click()
        await wait_idle(page, timeout)
        parts.append(await stable_fingerprint(page, minimum=want[2], differs_from=parts[1],
                                             timeout=wait, settle=settle))
        await page.get_by_role("tab", name="Detection metrics & exports").click()
        await wait_idle(page, timeout)
        downloads = [await metrics_text(page) for _ in range(3)]  # while other sessions finish runs (and sweep files)
        if len(set(downloads)) != 1 or not downloads[0].strip():
            raise RuntimeError(f"metrics.csv downloads differ or are empty: {[len(d) for d in downloads]} chars")
        counts = [len(json.loads(p)) for p in parts]
        parts.append(downloads[0])
        return {"metrics": "\n".join(parts), "charts": counts, "exceptions": await exceptions(page)}
    finally:
        await context.close()


async def figures_fingerprint(page) -> str:
    """Every drawn plotly trace on the page (name, x, y) as JSON, one entry per chart, sorted (mount order varies).

    Read from ``_fullData``: Plotly decodes the base64 typed arrays Streamlit sends there (``data`` keeps them
    encoded, so its ``x``/``y`` would read as empty)."""
    return await page.evaluate(
        """() => JSON.stringify(Array.from(document.querySelectorAll('.js-plotly-plot'))
               .filter(gd => gd._fullLayout && (gd._fullData || []).length)
               .map(gd => JSON.stringify(gd._fullData.map(t => [t.name, Array.from(t.x || []), Array.from(t.y || [])])))
               .sort())""")


async def stable_fingerprint(page, minimum: int, timeout: float = 60.0, differs_from: str | None = None,
                             settle: int = 1) -> str:
    """The figures' fingerprint once at least ``minimum`` charts are drawn and ``settle`` + 1 reads 1 s apart
    agree (and, with ``differs_from``, once the previous view's charts are gone).

    Streamlit mounts charts one by one after the script run ends: reading once can catch a page
    that is still drawing, which is a harness race, not a difference in results.
    """
    deadline = time.perf_counter() + timeout
    last, agreed = None, 0
    while True:
        current = await figures_fingerprint(page)
        count = len(json.loads(current))  # charts drawn, read in the same evaluation as their data
        agreed = agreed + 1 if current == last else 0
        if agreed >= settle and count >= minimum and current != differs_from:
            return current
        if time.perf_counter() > deadline:
            return current
        last = current
        await asyncio.sleep(1.0)


async def inspect_flow(browser, base_url: str, limit: int | None, name: str, png: bytes,
                       timeout: float = 300.0) -> dict:
    """Open the app, go to Inspect, upload ``png`` as ``name``, return the prediction and all visible upload names."""
    context, page = await open_app(browser, base_url, limit, timeout)
    try:
        await goto_page(page, PAGES["inspect"][0])
        upload = page.locator('[data-testid="stFileUploader"] input[type="file"]').first
        await upload.wait_for(state="attached", timeout=timeout * 1000)
        await upload.set_input_files({"name": name, "mimeType": "image/png", "buffer": png})
        metric = page.locator('[data-testid="stMetric"]').first
        await metric.wait_for(timeout=timeout * 1000)
        await wait_idle(page, timeout)
        body = await page.locator('[data-testid="stMain"]').inner_text()
        return {"prediction": await metric.inner_text(), "body": body, "exceptions": await exceptions(page)}
    finally:
        await context.close()


# ---------------------------------------------------------------- load test


@dataclass
class LoadResult:
    sessions: int
    samples: int | None
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    single_s: float = 0.0
    wall_s: float = 0.0
    tracebacks: list[str] = field(default_factory=list)

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]

    def row(self) -> str:
        return (f"| {self.sessions} | {self.samples or 'default'} | {len(self.errors)} | {len(self.leaks)} | "
                f"{len(self.mismatches)} | {self.single_s:.1f} | {self.pct(0.5):.1f} | {self.pct(0.95):.1f} | "
                f"{self.wall_s:.1f} | {self.peak_rss_mib:.0f} |")


async def run_load(base_url: str, sessions: int = 8, limit: int | None = None, timeout: float = 300.0,
                   server: StreamlitServer | None = None) -> LoadResult:
    """One single-session Compare run (the reference, also warms the cache), then ``sessions`` concurrent sessions."""
    from playwright.async_api import async_playwright

    res = LoadResult(sessions=sessions, samples=limit)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            t0 = time.perf_counter()
            reference = await compare_flow(browser, base_url, limit, timeout)
            res.single_s = time.perf_counter() - t0
            if reference["exceptions"]:
                res.errors.append(f"reference: {reference['exceptions']}")
            names = [f"upload_session{i:02d}.png" for i in range(sessions)]

            async def one(i: int):
                t = time.perf_counter()
                try:
                    if i % 2 == 0:
                        out = await compare_flow(browser, base_url, limit, timeout, charts=reference["charts"])
                        if out["metrics"] != reference["metrics"]:
                            res.mismatches.append(f"session {i}: metrics differ from the single-session run: "
                                                  f"{first_difference(reference['metrics'], out['metrics'])}")
                    else:
                        out = await inspect_flow(browser, base_url, limit, names[i], digit_png(i), timeout)
                        if names[i] not in out["body"]:
                            res.errors.append(f"session {i}: own upload name not shown")
                        if "Prediction" not in out["prediction"]:
                            res.errors.append(f"session {i}: no prediction: {out['prediction']!r}")
                        others = [n for n in names if n != names[i] and n in out["body"]]
                        if others:
                            res.leaks.append(f"session {i} shows {others}")
                    if out["exceptions"]:
                        res.errors.append(f"session {i}: {out['exceptions']}")
                    if i % 2 == 0 and any(n in out.get("metrics", "") for n in names):
                        res.leaks.append(f"session {i}: an upload appears in its Compare table")
                    res.latencies.append(time.perf_counter() - t)
                except Exception as exc:  # noqa: BLE001  (recorded and reported)
                    res.errors.append(f"session {i}: {type(exc).__name__}: {exc}".splitlines()[0])

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(sessions)))
            res.wall_s = time.perf_counter() - t0
        finally:
            await browser.close()
    if server is not None:
        res.peak_rss_mib = server.peak_rss_mib()
        res.tracebacks = server.tracebacks()
    return res


async def download_race(base_url: str, downloads: int = 30, churners: int = 4, timeout: float = 300.0) -> dict:
    """One session downloads Compare's metrics.csv ``downloads`` times while ``churners`` other sessions keep
    finishing script runs (each run's end sweeps files no session references). -> counts of outcomes."""
    from collections import Counter

    from playwright.async_api import async_playwright

    async def churn(browser, stop: asyncio.Event, runs: list) -> None:
        context, page = await open_app(browser, base_url, None, timeout)
        try:
            await goto_page(page, PAGES["learn"][0])
            await wait_idle(page, timeout)
            seed = page.locator('[data-testid="stSidebar"] [data-testid="stNumberInput"] input').first
            while not stop.is_set():
                await seed.fill(str(len(runs) % 50))
                await seed.press("Enter")
                runs.append(1)
                await asyncio.sleep(0.15)
        finally:
            await context.close()

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context, page = await open_app(browser, base_url, None, timeout)
            await goto_page(page, PAGES["compare"][0])
            tab = page.get_by_role("tab", name="Detection metrics & exports")
            await tab.wait_for(timeout=timeout * 1000)
            await tab.click()
            await wait_idle(page, timeout)
            reference = await metrics_text(page)
            stop, runs = asyncio.Event(), list[int]()
            tasks = [asyncio.create_task(churn(browser, stop, runs)) for _ in range(churners)]
            await asyncio.sleep(15)  # the other sessions are up and rerunning
            outcomes = Counter[str]()
            for _ in range(downloads):
                try:
                    text = await metrics_text(page, timeout=30)
                    outcomes["complete" if text == reference else "different"] += 1
                except Exception as exc:  # noqa: BLE001  (a cancelled download: counted)
                    outcomes[f"failed ({str(exc).splitlines()[0][:40]})"] += 1
                await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await context.close()
        finally:
            await browser.close()
    return {"outcomes": dict(outcomes), "other_runs": len(runs), "reference_chars": len(reference)}


def first_difference(a: str, b: str) -> str:
    """The first differing line of two texts (for the report)."""
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"{len(a)} vs {len(b)} chars, first difference at {k}: {a[k:k + 80]!r} vs {b[k:k + 80]!r}"
