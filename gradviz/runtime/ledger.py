"""The server's memory ledger: what the passes of every web session may use together.

Each web session plans its passes for its own budget (``GRADVIZ_SESSION_MEMORY_MB``); the
ledger bounds them all together. A :class:`Ledger` holds the server's budget
(``GRADVIZ_SERVER_MEMORY_MB``; unset, :data:`SERVER_SHARE` of the memory the machine has
available when the first pass asks) and the reservations of the passes running now. A pass
reserves its planned bytes before it allocates anything (:meth:`Ledger.reserve`, a context
manager that releases them afterwards, also on an exception). When the budget is taken the
pass waits in order of arrival, saying so ("waiting: 2 passes ahead, 3.1 GB in use of 4 GB");
a pass larger than the whole budget is refused at once, with the numbers.

The web app does not call :meth:`~Ledger.reserve` pass by pass. It runs a session's work inside
:func:`serving` (a scope in the calling thread or task, with a callback that shows the waiting
message and one that says whether the session is gone); every pass planned inside the scope
(:func:`gradviz.runtime.budget.batch_size_for`) calls :func:`admit`, which reserves the plan's
bytes for the scope until it ends. A scope holds the largest plan made in it; it never waits while
holding memory (to grow, it gives back what it holds and queues again), a nested scope gives
back its parent's reservation first, and work that blocks on another thread's passes (a page waiting
for the server's warm-up, :mod:`gradviz.ui.warmup`) calls :func:`give_back` before it blocks, so no two
scopes can wait on each other forever. A wait longer than ``max_wait_s`` ends in a refusal that states
the numbers.

:func:`checkpoint` (called between batches by the progress reports) raises :class:`PassStopped`
when the scope's session is gone, e.g. its browser tab was closed, so its work stops at the next
batch instead of running on for minutes.

CPU time is a budget too: a scope given a :class:`CpuAccount` (the web app gives each browser session
one, ``GRADVIZ_SESSION_CPU_S`` seconds in any :data:`CPU_WINDOW_S`) charges it the CPU time its thread
spent (``time.thread_time``: the web server runs torch with one thread, in the session's own) at every
checkpoint, and stops the work with :class:`CpuBudgetExceeded` once the window holds more than the
budget, so that one heavy session cannot keep a core from the others for long; the message says when the
session may go on. Outside any scope (the command line) all of this is a no-op.
"""

from __future__ import annotations

import contextvars
import itertools
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from gradviz.errors import GradvizError

__all__ = ["Ledger", "Ticket", "PassStopped", "CpuAccount", "CpuBudgetExceeded", "session_cpu_account",
           "server_ledger", "server_budget_mb", "serving", "admit", "give_back", "checkpoint", "SERVER_SHARE",
           "CUDA_SHARE", "CPU_WINDOW_S", "MAX_WAITING"]

SERVER_SHARE = 0.5  # of MemAvailable when GRADVIZ_SERVER_MEMORY_MB is not set
CUDA_SHARE = 0.8  # of the GPU memory free when the first pass on that GPU asks
FALLBACK_MB = 4096  # where the available memory cannot be read
MAX_WAIT_S = 600.0  # a pass waiting longer than this is refused (the server stays busy that long)
MAX_WAITING = 64  # passes that may wait at once; one more is refused at once (the queue is bounded)
POLL_S = 0.25  # how often a waiting pass checks whether its session is gone
CPU_WINDOW_S = 900.0  # a session's CPU time is counted over the last 15 minutes

Notify = Callable[[str], None]
StopCheck = Callable[[], bool]


class PassStopped(GradvizError):
    """The session that started a pass is gone (its browser tab was closed): the pass stops."""


class CpuBudgetExceeded(GradvizError):
    """A session's work took more CPU time in the window than its budget: the work stops."""


class CpuAccount:
    """The CPU seconds one session's work took, over a sliding window of ``window_s`` seconds.

    ``clock``: wall-clock seconds (monotonic) at which charges are stamped; tests pass their own."""

    def __init__(self, budget_s: float, source: str = "GRADVIZ_SESSION_CPU_S", *,
                 window_s: float = CPU_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s, self.source, self.window_s, self.clock = float(budget_s), source, float(window_s), clock
        self._charges: deque[tuple[float, float]] = deque()  # (when, CPU seconds)
        self._lock = threading.Lock()

    def _used_locked(self, now: float) -> float:
        """CPU seconds within the window ending ``now``, older charges dropped (the caller holds the lock)."""
        while self._charges and self._charges[0][0] <= now - self.window_s:
            self._charges.popleft()
        return sum(s for _, s in self._charges)

    def charge(self, seconds: float) -> None:
        if seconds > 0:
            with self._lock:
                now = self.clock()
                self._used_locked(now)
                self._charges.append((now, float(seconds)))

    def used_s(self) -> float:
        """CPU seconds charged within the window."""
        with self._lock:
            return self._used_locked(self.clock())

    def check(self) -> None:
        """:class:`CpuBudgetExceeded`, with the numbers and when to go on, if the window holds more than the budget."""
        with self._lock:
            now = self.clock()
            used = self._used_locked(now)
            if used <= self.budget_s:
                return
            # the work may go on once enough of the oldest charges have left the window
            over, wait = used - self.budget_s, 0.0
            for when, seconds in self._charges:
                over -= seconds
                wait = when + self.window_s - now
                if over < 0:
                    break
        raise CpuBudgetExceeded(
            f"stopped: this session's work took {used:,.0f} s of CPU time in the last {self.window_s / 60:.0f} "
            f"minutes, more than its {self.budget_s:,.0f} s ({self.source}), so that other sessions get their share. "
            f"Try again in about {max(1, round(wait / 60))} min, or with fewer images or methods.")


_CPU_ACCOUNTS: dict[str, CpuAccount] = {}
_CPU_LOCK = threading.Lock()


def session_cpu_account(session_id: str) -> CpuAccount:
    """The CPU account of the browser session ``session_id`` (made on first use, ``GRADVIZ_SESSION_CPU_S``).
    Accounts idle for a whole window are dropped when many are held."""
    from gradviz.config import settings

    with _CPU_LOCK:
        account = _CPU_ACCOUNTS.get(session_id)
        if account is None:
            if len(_CPU_ACCOUNTS) > 1000:
                for key in [k for k, a in _CPU_ACCOUNTS.items() if a.used_s() == 0]:
                    del _CPU_ACCOUNTS[key]
            account = _CPU_ACCOUNTS[session_id] = CpuAccount(settings().session_cpu_s)
        return account


def _gb(mb: float) -> str:
    """4096 -> "4", 3174 -> "3.1" (GB, one decimal, no trailing zero)."""
    return f"{mb / 1024:.1f}".removesuffix(".0")


@dataclass
class Ticket:
    """One reservation: ``mb`` MiB for the pass ``label``."""

    id: int
    mb: float
    label: str


class Ledger:
    """A memory budget shared by threads: passes reserve MiB from it, wait in order when it is taken."""

    def __init__(self, budget_mb: float, source: str, *, max_wait_s: float = MAX_WAIT_S, poll_s: float = POLL_S,
                 max_waiting: int = MAX_WAITING, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_mb = float(budget_mb)
        self.source = source
        self.max_wait_s = float(max_wait_s)
        self.max_waiting = int(max_waiting)
        self.poll_s = float(poll_s)
        self.clock = clock
        self._cond = threading.Condition()
        self._held: dict[int, Ticket] = {}
        self._queue: deque[Ticket] = deque()
        self._ids = itertools.count(1)
        self.peak_mb = 0.0  # the most ever reserved at once

    @property
    def in_use_mb(self) -> float:
        """MiB reserved by the passes running now."""
        with self._cond:
            return self._in_use()

    @property
    def waiting(self) -> int:
        """Passes waiting for memory now."""
        with self._cond:
            return len(self._queue)

    def _in_use(self) -> float:
        return sum(t.mb for t in self._held.values())

    def _admit_locked(self, ticket: Ticket) -> bool:
        if self._queue[0] is not ticket:
            return False
        if self._held and self._in_use() + ticket.mb > self.budget_mb:
            return False
        self._queue.popleft()
        self._held[ticket.id] = ticket
        self.peak_mb = max(self.peak_mb, self._in_use())
        self._cond.notify_all()
        return True

    def _wait_text(self, ticket: Ticket) -> str:
        ahead = next(i for i, t in enumerate(self._queue) if t is ticket)
        return (f"waiting: {ahead} pass{'' if ahead == 1 else 'es'} ahead, {_gb(self._in_use())} GB in use of "
                f"{_gb(self.budget_mb)} GB (this server's memory budget; '{ticket.label}' needs {_gb(ticket.mb)} GB)")

    def refuse_if_too_large(self, mb: float, label: str) -> None:
        """:class:`GradvizError` with the numbers when ``mb`` exceeds the whole budget (it could never run)."""
        if mb > self.budget_mb:
            raise GradvizError(f"'{label}' needs ~{mb:,.0f} MB, more than this server's whole memory budget of "
                               f"{self.budget_mb:,.0f} MB ({self.source}): it could never run here. Use a smaller "
                               "model or input size, or ask whoever runs the server to raise GRADVIZ_SERVER_MEMORY_MB")

    def acquire(self, mb: float, label: str, *, notify: Notify | None = None,
                should_stop: StopCheck | None = None) -> Ticket:
        """Reserve ``mb`` MiB, waiting in order while the budget is taken; call :meth:`release` afterwards.

        ``notify(text)`` is told why the pass waits (and ``""`` once it may run); ``should_stop()`` is asked
        while it waits (True: :class:`PassStopped`). Refused at once when ``mb`` exceeds the whole budget, or when
        it would have to wait behind ``max_waiting`` passes already waiting."""
        self.refuse_if_too_large(mb, label)
        ticket = Ticket(next(self._ids), max(0.0, float(mb)), label)
        deadline = self.clock() + self.max_wait_s
        shown = ""
        with self._cond:
            if len(self._queue) >= self.max_waiting and (self._queue or self._held):
                n = len(self._queue)
                line = f"{n} pass{'es' if n != 1 else ''} wait{'s' if n == 1 else ''} for memory"
                raise GradvizError(f"'{label}' was refused: the server is busy ({line}, {_gb(self._in_use())} GB in "
                                   f"use of {_gb(self.budget_mb)} GB). Try again in a minute")
            self._queue.append(ticket)
        try:
            while True:
                with self._cond:
                    if self._admit_locked(ticket):
                        break
                    text = self._wait_text(ticket)
                if should_stop is not None and should_stop():
                    raise PassStopped(f"'{label}' stopped while it waited for memory: its session is gone")
                if notify is not None and text != shown:
                    notify(text)  # outside the lock: the callback may draw on a page
                    shown = text
                if self.clock() >= deadline:
                    raise GradvizError(f"'{label}' waited {self.max_wait_s:,.0f} s for memory and was refused: "
                                       f"{text.removeprefix('waiting: ')}. Try again when the server is less busy")
                with self._cond:
                    if self._admit_locked(ticket):
                        break
                    self._cond.wait(self.poll_s)
        except BaseException:
            with self._cond:
                if ticket in self._queue:
                    self._queue.remove(ticket)
                    self._cond.notify_all()  # the pass behind this one may be the head now
            raise
        if shown and notify is not None:
            notify("")
        return ticket

    def release(self, ticket: Ticket) -> None:
        """Give back what ``ticket`` reserved (a second call is a no-op)."""
        with self._cond:
            if self._held.pop(ticket.id, None) is not None:
                self._cond.notify_all()

    @contextmanager
    def reserve(self, mb: float, label: str, *, notify: Notify | None = None,
                should_stop: StopCheck | None = None) -> Iterator[Ticket]:
        """Within the block ``mb`` MiB are reserved for the pass ``label`` (see :meth:`acquire`)."""
        ticket = self.acquire(mb, label, notify=notify, should_stop=should_stop)
        try:
            yield ticket
        finally:
            self.release(ticket)


# --- the server's ledgers (one per memory: the machine's, each GPU's) ------------------------------------

_LEDGERS: dict[tuple, Ledger] = {}
_LEDGERS_LOCK = threading.Lock()


def _memory_key(device) -> str:
    text = str(device) if device is not None else "cpu"
    if text.startswith("cuda"):
        return text if ":" in text else "cuda:0"
    return "cpu"


def server_budget_mb(device=None) -> tuple[float, str]:
    """(MiB all web sessions' passes on ``device`` may use together, where that number comes from)."""
    from gradviz.config import settings

    key = _memory_key(device)
    if key.startswith("cuda"):
        from gradviz.runtime.budget import cuda_free_mb

        free_mb = cuda_free_mb(key)
        budget = int(free_mb * CUDA_SHARE)
        configured = settings().server_memory_mb
        if configured is not None and configured < budget:
            return configured, "GRADVIZ_SERVER_MEMORY_MB"
        return budget, f"{CUDA_SHARE:.0%} of the {free_mb:,} MB free on {key}"
    configured = settings().server_memory_mb
    if configured is not None:
        return configured, "GRADVIZ_SERVER_MEMORY_MB"
    from gradviz.runtime.budget import available_mb

    free = available_mb()
    if free is None:
        return FALLBACK_MB, "default (available memory unknown)"
    return max(64, int(free * SERVER_SHARE)), (f"{SERVER_SHARE:.0%} of the {free:,} MB available at the server's "
                                                "first pass")


def server_ledger(device=None) -> Ledger:
    """The process-wide ledger of ``device``'s memory (made once per memory and setting)."""
    from gradviz.config import settings

    key = (_memory_key(device), settings().server_memory_mb)
    with _LEDGERS_LOCK:
        ledger = _LEDGERS.get(key)
        if ledger is None:
            ledger = _LEDGERS[key] = Ledger(*server_budget_mb(device))
        return ledger


# --- a session's work: the scope its passes reserve in ---------------------------------------------------

@dataclass
class _Scope:
    notify: Notify | None
    should_stop: StopCheck | None
    cpu: CpuAccount | None = None
    cpu_mark: float = 0.0  # the thread's CPU time when last charged
    ledger: Ledger | None = None
    ticket: Ticket | None = None

    def charge_cpu(self) -> None:
        if self.cpu is not None:
            now = time.thread_time()
            self.cpu.charge(now - self.cpu_mark)
            self.cpu_mark = now

    def give_back(self) -> None:
        if self.ledger is not None and self.ticket is not None:
            self.ledger.release(self.ticket)
        self.ledger = self.ticket = None


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("gradviz_serving", default=None)


@contextmanager
def serving(notify: Notify | None = None, should_stop: StopCheck | None = None,
            cpu: CpuAccount | None = None) -> Iterator[None]:
    """Within the block, passes reserve their planned memory from the server's ledger (:func:`admit`) and
    stop between batches when ``should_stop()`` says their session is gone, or when ``cpu`` (the session's
    account) is over its budget (:func:`checkpoint`; an account already over it refuses the block at once).

    Nested: the inner block inherits the callbacks and the account it is not given, and its parent's
    reservation is given back first (the parent's passes have finished: one thread runs one pass at a time)."""
    outer = _SCOPE.get()
    if outer is not None:
        outer.give_back()
        outer.charge_cpu()
        notify = notify or outer.notify
        should_stop = should_stop or outer.should_stop
        cpu = cpu or outer.cpu
    if cpu is not None:
        cpu.check()
    scope = _Scope(notify, should_stop, cpu, time.thread_time())
    token = _SCOPE.set(scope)
    try:
        yield
    finally:
        _SCOPE.reset(token)
        scope.give_back()
        scope.charge_cpu()
        if outer is not None:
            outer.cpu_mark = time.thread_time()  # the inner block's CPU time is charged once


def admit(mb: float, label: str, device=None) -> None:
    """Reserve ``mb`` MiB for the pass ``label`` in the current :func:`serving` scope (no-op outside one).

    The scope then holds the largest plan made in it: a smaller pass needs nothing new; a larger one gives
    back what the scope holds and queues for the whole amount. A pass that could never fit is refused."""
    scope = _SCOPE.get()
    if scope is None:
        return
    checkpoint()
    ledger = server_ledger(device)
    if scope.ledger is ledger and scope.ticket is not None and scope.ticket.mb >= mb:
        return
    ledger.refuse_if_too_large(mb, label)  # before anything held is given back
    scope.give_back()
    scope.ticket = ledger.acquire(mb, label, notify=scope.notify, should_stop=scope.should_stop)
    scope.ledger = ledger


def give_back() -> None:
    """Release the current :func:`serving` scope's reservation (no-op outside one, or when it holds none).

    Call it before blocking on work of another thread that may need memory (e.g. a page waiting for a warm-up
    job): a scope never waits while holding memory. The scope's next pass reserves again (:func:`admit`)."""
    scope = _SCOPE.get()
    if scope is not None:
        scope.give_back()


def checkpoint() -> None:
    """Between batches: :class:`PassStopped` when the current scope's session is gone, :class:`CpuBudgetExceeded`
    when its CPU account is over budget (no-op outside a scope)."""
    scope = _SCOPE.get()
    if scope is None:
        return
    if scope.should_stop is not None and scope.should_stop():
        raise PassStopped("stopped: the browser tab that started this work was closed")
    if scope.cpu is not None:
        scope.charge_cpu()
        scope.cpu.check()


def in_scope() -> bool:
    """Whether the caller runs inside a :func:`serving` scope (a web session's work)."""
    return _SCOPE.get() is not None
