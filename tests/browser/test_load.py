"""Load test of concurrent sessions: 8 headless-browser sessions on one `streamlit run app.py`.

Half run Compare (their metrics CSV, downloaded three times, must equal a single-session run: no other
session's run may delete a download built on click), half Inspect with their own uploaded
PNG (each sees its own file name and prediction, never another session's upload). No session may error,
the server must log no traceback, and its peak RSS stays bounded. Sample slider at its minimum (100/set).
The scenario lives in gradviz/testing/browser.py (benchmarks/load_test.py runs it for bigger runs and a table).
"""

from __future__ import annotations

import asyncio

from gradviz.testing.browser import run_load

SESSIONS = 8
MAX_RSS_MIB = 6000  # bounded: the model and datasets are shared, sessions only add page state


def _head(tb: str) -> str:
    return "\n".join(l for l in tb.splitlines() if l.strip() and "use_container_width" not in l and "width=" not in l)[-3000:]


def test_eight_concurrent_sessions_match_single_session_and_stay_isolated(server):
    res = asyncio.run(run_load(server.url, sessions=SESSIONS, limit=100, timeout=240, server=server))
    print(f"\nsessions={SESSIONS} single={res.single_s:.1f}s p50={res.pct(0.5):.1f}s p95={res.pct(0.95):.1f}s "
          f"wall={res.wall_s:.1f}s peak RSS={res.peak_rss_mib:.0f} MiB")
    assert res.errors == [], res.errors
    assert res.leaks == [], res.leaks
    assert res.mismatches == [], res.mismatches
    assert len(res.latencies) == SESSIONS
    assert not res.tracebacks, _head(res.tracebacks[0])
    assert 0 < res.peak_rss_mib < MAX_RSS_MIB
