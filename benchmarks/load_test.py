"""Multi-session load test of the dashboard: N concurrent headless-browser sessions against one server.

Half the sessions run the Compare flow (read every view's data: histogram, strip, ROC curves, the metrics table
downloaded three times as metrics.csv), half the Inspect flow (upload a distinct
image each, read the prediction). Reports errors, per-session latency (p50/p95), the server's peak RSS
(VmHWM of the streamlit process and its children), whether every Compare table equals a single-session
run, and whether any session ever showed another session's upload.

    .venv/bin/python benchmarks/load_test.py --sessions 8 [--samples 100] [--write]
    .venv/bin/python benchmarks/load_test.py --download-race   # metrics.csv downloads while other sessions rerun

``--write`` appends the table to docs/PERFORMANCE.md under "Load test". Needs /usr/bin/chromium.
The server, the browser flows and the scenario live in gradviz/testing/browser.py (shared with tests/browser
and benchmarks/dashboard_timing.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from report_md import replace_section  # benchmarks/report_md.py, beside this script

from gradviz.testing.browser import CHROMIUM, StreamlitServer, download_race, run_load

ROOT = Path(__file__).resolve().parent.parent

HEADER = ("| sessions | samples/set | errors | cross-session leaks | results ≠ single session | single session s "
          "| p50 s | p95 s | wall s | server peak RSS MiB |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def append_section(path: Path, heading: str, body: str) -> None:
    """Write ``body`` as the ``## heading`` section of ``path`` (replacing an earlier run's)."""
    replace_section(path, heading, body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--samples", type=int, default=100, help="sidebar 'Samples per set' (multiple of 100)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--write", action="store_true", help="append to docs/PERFORMANCE.md under 'Load test'")
    ap.add_argument("--download-race", action="store_true",
                    help="instead: one session downloads metrics.csv 30 times while 4 sessions keep rerunning")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup (stop servers) when killed
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} not found (apt-get install chromium)", file=sys.stderr)
        return 2
    if args.download_race:
        with tempfile.TemporaryDirectory(prefix="gv-load-") as tmp, StreamlitServer(tmp) as server:
            server.wait_healthy()
            race = asyncio.run(download_race(server.url, timeout=args.timeout))
        print(f"metrics.csv downloads while 4 other sessions reran {race['other_runs']} times: {race['outcomes']}")
        return 0 if set(race["outcomes"]) == {"complete"} else 1
    with tempfile.TemporaryDirectory(prefix="gv-load-") as tmp, StreamlitServer(tmp) as server:
        server.wait_healthy()
        load_before = load_average()
        res = asyncio.run(run_load(server.url, args.sessions, args.samples, args.timeout, server))
    table = f"{HEADER}\n{res.row()}"
    note = (f"{time.strftime('%Y-%m-%d %H:%M')} · `benchmarks/load_test.py --sessions {args.sessions} --samples "
            f"{args.samples}` · one server, one headless Chromium with {args.sessions} contexts; even sessions Compare "
            f"(data of every chart — score histogram, strip, ROC/PR curves of all methods — compared with a "
            f"single-session run), odd sessions Inspect with their own uploaded PNG. "
            f"Latency = open app → set slider → page fully rendered. Load average before/after: {load_before} / "
            f"{load_average()} (2 shared cores). Server tracebacks: {len(res.tracebacks)}.")
    print(table)
    print(note)
    for line in res.errors + res.leaks + res.mismatches:
        print("  !", line)
    for tb in res.tracebacks[:3]:
        lines = [line for line in tb.splitlines()
                 if "use_container_width" not in line and "width=" not in line and line.strip()]
        print("server traceback:\n", "\n".join(lines)[:2500], file=sys.stderr)
    if args.write:
        append_section(ROOT / "docs" / "PERFORMANCE.md", "Load test", f"{table}\n\n{note}")
    return 1 if (res.errors or res.leaks or res.mismatches) else 0


if __name__ == "__main__":
    sys.exit(main())
