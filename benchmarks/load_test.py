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

``--mix``: one heavy session beside N Playground sessions drawing, in one process the way the web server runs
them (one thread per session, one torch thread each, every session's work inside
``gradviz.runtime.ledger.serving`` with its session budget, all of them sharing the server's ledger). The
heavy session fits and scores every method on random images with a torchvision model at ``--side``²; each
Playground session scores a growing stroke drawing on the bundled mnist-cnn (every method and the layer
profile, as a stroke on the page does) until the heavy session is done. Reports the stroke latency (p50/p95)
alone and beside the heavy session, the heavy session's time, and the process's peak RSS against the
server's budget. No browser: it measures the library and the ledger, not Streamlit's websocket::

    .venv/bin/python benchmarks/load_test.py --mix                      # small: resnet18 at 96², 2 Playgrounds
    .venv/bin/python benchmarks/load_test.py --mix --heavy resnet50 --side 224 --playgrounds 8 --images 64
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
    ap.add_argument("--mix", action="store_true", help="instead: one heavy session beside N Playground sessions")
    ap.add_argument("--heavy", default="resnet18", help="--mix: the heavy session's torchvision model")
    ap.add_argument("--side", type=int, default=96, help="--mix: its input side (224 for the real size)")
    ap.add_argument("--images", type=int, default=32, help="--mix: images it fits on and scores (each, ID and OOD)")
    ap.add_argument("--playgrounds", type=int, default=2, help="--mix: Playground sessions drawing beside it")
    ap.add_argument("--alone-strokes", type=int, default=10, help="--mix: strokes per Playground before the heavy one")
    ap.add_argument("--server-mb", type=int, default=None,
                    help="--mix: GRADVIZ_SERVER_MEMORY_MB (default: the setting)")
    args = ap.parse_args(argv)
    if args.mix:
        from load_mix import run_mix  # benchmarks/load_mix.py, beside this script

        return run_mix(args, ROOT, append_section)
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
