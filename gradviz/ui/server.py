"""Server configuration of the dashboard: which models that run the user's own code it may load, and torch's
threads (:func:`apply_torch_threads`).

The person who starts the server chooses them, never a browser::

    streamlit run app.py -- --model path/to/net.py:build [--model other.py:make]
    GRADVIZ_MODELS="path/to/net.py:build;other.py:make" streamlit run app.py

Each appears in the sidebar's Model picker (and as an architecture for weight uploads).

Every session's work runs inside :func:`session_work`: its passes share the server's memory budget
(:mod:`gradviz.runtime.ledger`) and stop once the session's browser tab is gone.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Callable, Iterator, ParamSpec, TypeVar

import streamlit as st
import torch

from gradviz.config import server_torch_threads
from gradviz.models.plugins import is_file_spec, server_model_specs
from gradviz.runtime.ledger import CpuAccount, serving, session_cpu_account

P = ParamSpec("P")
R = TypeVar("R")


def configured_models() -> list[str]:
    """Every model the server configuration names (``--model`` after ``--``, ``GRADVIZ_MODELS``)."""
    return server_model_specs()


def allowed_code_models() -> set[str]:
    """The ``file.py:build`` models among them: the only code-running models the web app loads."""
    return {s for s in configured_models() if is_file_spec(s)}


def apply_torch_threads() -> int:
    """Set torch's threads for the web server (:func:`gradviz.config.server_torch_threads`: 1 unless
    ``GRADVIZ_TORCH_THREADS`` or ``OMP_NUM_THREADS`` says otherwise); the threads torch now uses."""
    n = server_torch_threads()
    if n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def _in_cached_function() -> bool:
    """Whether the caller runs inside an ``st.cache_data`` / ``st.cache_resource`` function (no toasts there)."""
    try:
        from streamlit.runtime.caching.cached_message_replay import in_cached_function
    except ImportError:  # a Streamlit that keeps it elsewhere: draw nothing rather than break a cached call
        return True
    return bool(in_cached_function.get())


def _waiting_notice() -> Callable[[str], None]:
    """A callback that shows the ledger's "waiting: 2 passes ahead, …" as one toast, updated while the pass
    waits and turned into "running now" once it may run."""
    shown: dict = {}

    def notify(text: str) -> None:
        if _in_cached_function():
            return
        if text:
            toast = shown.get("toast")
            if toast is None:
                shown["toast"] = st.toast(text, icon=":material/hourglass_top:", duration="infinite")
            else:
                toast.toast(text, icon=":material/hourglass_top:", duration="infinite")
        elif "toast" in shown:
            shown.pop("toast").toast("Memory is free: running now", icon=":material/play_arrow:", duration="short")

    return notify


def _session_id() -> str | None:
    """The id of the browser session running this script (read in the script's thread), or None outside a server."""
    from streamlit import runtime
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    return ctx.session_id if ctx is not None and runtime.exists() else None


def session_gone_check() -> Callable[[], bool] | None:
    """A check that says whether the browser session running this script is gone, or None outside a server.

    Streamlit keeps a session whose tab was closed (its websocket disconnected) for a while, for a reconnect,
    but takes it out of the runtime's *active* sessions at once: ``Runtime.is_active_session`` then answers
    False. The check captures the session id here, in the script's thread, and can be asked from any thread."""
    from streamlit import runtime

    session_id = _session_id()
    if session_id is None:
        return None
    server = runtime.get_instance()
    return lambda: not server.is_active_session(session_id)


def session_cpu() -> CpuAccount | None:
    """The CPU account of the browser session running this script (``GRADVIZ_SESSION_CPU_S``), or None
    outside a server."""
    session_id = _session_id()
    return session_cpu_account(session_id) if session_id is not None else None


@contextmanager
def session_work() -> Iterator[None]:
    """Run a session's work inside :func:`gradviz.runtime.ledger.serving`: its passes reserve their planned
    memory from the server's budget (a toast says when they wait), stop between batches once the session's
    tab is gone, and stop with a message once the session's CPU time is over its budget."""
    with serving(notify=_waiting_notice(), should_stop=session_gone_check(), cpu=session_cpu()):
        yield


def as_session_work(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` run inside :func:`session_work` (put it below ``st.cache_data``: only a cache miss works)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with session_work():
            return fn(*args, **kwargs)

    return wrapper
