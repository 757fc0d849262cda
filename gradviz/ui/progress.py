"""The progress bar of the dashboard's long passes: one bar per group of passes, with an ETA, removed afterwards."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import streamlit as st


@contextmanager
def progress_bar(text: str) -> Iterator[Callable[[int, int, str], None]]:
    """A progress callback drawing one bar (removed afterwards, also on an error) for a group of passes that
    run as the session's work (:func:`gradviz.ui.server.session_work`: they reserve their memory from the
    server's budget, and the callback stops them between batches once the session's tab is gone)."""
    from gradviz.runtime.ledger import checkpoint
    from gradviz.runtime.progress import Eta
    from gradviz.ui.server import session_work

    bar, eta = st.progress(0.0, text=text), Eta()

    def update(done: int, total: int, label: str) -> None:
        checkpoint()
        # "Scoring samples — fitting mahalanobis on mnist:train (once): 40/125 batches, ~30 s left"
        bar.progress(min(1.0, done / max(total, 1)), text=f"{text} — {eta.text(done, total, label)}")

    try:
        with session_work():
            yield update
    finally:
        bar.empty()  # an error never leaves a bar standing at "23/24 methods"


def wait_for_warm_up(warm, cfg, text: str, layers: bool = False) -> None:
    """Wait, with its progress shown in a bar, while the background warm-up ``warm`` (:mod:`gradviz.ui.warmup`)
    computes what ``cfg`` reads (its scores; with ``layers`` the ID set's layer table); at once when it does not."""
    if not warm.pending(cfg, layers):
        return
    bar = st.progress(0.0, text=text)
    try:
        warm.wait_for(cfg, lambda fraction, status: bar.progress(fraction, text=f"{text} — {status}"), layers=layers)
    finally:
        bar.empty()
