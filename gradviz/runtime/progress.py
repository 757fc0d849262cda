"""Progress of passes over data, with an ETA: "fitting mahalanobis: 40/125 batches, ~30 s left".

A progress callback is ``progress(done, total, label)`` (the label names the pass). Loops deep in
the library that have no callback of their own — the fit passes of fitted methods — report through
:func:`report` to whatever :func:`reporting` installed around them (scoring does, per method), so
no signature down the call chain needs a progress argument. :class:`Eta` turns the calls into the
text the page shows; the command line draws them with tqdm.
"""

from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from gradviz.runtime.ledger import checkpoint

__all__ = ["Progress", "Eta", "reporting", "report", "format_seconds", "SHOW_AFTER_S"]

Progress = Callable[[int, int, str], None]
SHOW_AFTER_S = 2.0  # an ETA only for passes that take longer than this

_CURRENT: contextvars.ContextVar[tuple[Progress, str] | None] = contextvars.ContextVar("gradviz_progress", default=None)


@contextmanager
def reporting(progress: Progress | None, label: str) -> Iterator[None]:
    """Within the block, :func:`report` calls go to ``progress`` under ``label`` (no-op when None)."""
    token = _CURRENT.set((progress, label) if progress is not None else None)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def report(done: int, total: int) -> None:
    """Batch ``done`` of ``total`` of the current pass, to the callback :func:`reporting` installed; in a web
    session's work, first :func:`gradviz.runtime.ledger.checkpoint` (the pass stops if its tab is gone)."""
    checkpoint()
    current = _CURRENT.get()
    if current is not None:
        current[0](int(done), int(total), current[1])


def format_seconds(seconds: float) -> str:
    """~30 s, ~2 min, ~1 h 5 min (rounded: an estimate)."""
    s = max(0.0, float(seconds))
    if s < 90:
        return f"~{max(1, round(s))} s"
    if s < 3600:
        return f"~{round(s / 60)} min"
    return f"~{int(s // 3600)} h {round((s % 3600) / 60)} min"


class Eta:
    """Text for ``progress(done, total, label)`` calls, with the time left of each pass (per label).

    The estimate is the pass's mean time per step so far times the steps left; it appears once the
    pass has run :data:`SHOW_AFTER_S` seconds (or is expected to), never for quick passes."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started: dict[str, tuple[float, int]] = {}

    def text(self, done: int, total: int, label: str, unit: str = "batches") -> str:
        now = self.clock()
        start, first = self.started.setdefault(label, (now, done))
        if done <= first and done < total:  # a restart of the same pass (e.g. a rerun): time it afresh
            self.started[label] = (start, first) = (now, done)
        base = f"{label}: {done}/{total} {unit}"
        elapsed, steps = now - start, done - first
        if steps <= 0 or done >= total:
            return base
        left = elapsed / steps * (total - done)
        if elapsed + left < SHOW_AFTER_S:
            return base
        return f"{base}, {format_seconds(left)} left"
