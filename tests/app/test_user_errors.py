"""``with user_errors(hint):``: a GradvizError is shown with its message and the hint, anything else as a short
message with the traceback in the log; either way the page stops there; Streamlit's own st.stop passes."""

from __future__ import annotations

import logging

import pytest
from streamlit.testing.v1 import AppTest

from gradviz.ui import errors


def _page():
    import streamlit as st

    from gradviz.errors import DatasetError
    from gradviz.ui.errors import user_errors

    kind = st.session_state["kind"]
    with user_errors("Pick *another* set."):
        st.write("before")
        if kind == "user":
            raise DatasetError("no such set: my_set*")
        if kind == "bug":
            raise KeyError("internal detail 42")
        if kind == "stop":
            st.stop()
    st.write("after")


@pytest.fixture
def page_log(monkeypatch):
    """The records user_errors logs, kept off the root logger (the app tests fail on a logged page bug)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("gradviz.ui.test_user_errors")
    logger.propagate = False
    logger.addHandler(handler)
    monkeypatch.setattr(errors, "log", logger)
    yield records
    logger.removeHandler(handler)


def _run(kind: str) -> AppTest:
    at = AppTest.from_function(_page)
    at.session_state["kind"] = kind
    return at.run()


def _texts(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown]


def test_a_user_error_shows_its_message_and_the_hint_then_stops(page_log):
    at = _run("user")
    assert not at.exception
    assert [e.value for e in at.error] == ["no such set: my_set\\*\n\nPick *another* set."]  # message as plain text
    assert _texts(at) == ["before"] and not page_log


def test_a_bug_shows_a_short_message_and_logs_the_traceback(page_log):
    at = _run("bug")
    assert not at.exception
    assert [e.value for e in at.error] == [errors.UNEXPECTED] and "internal detail" not in errors.UNEXPECTED
    assert _texts(at) == ["before"]
    assert len(page_log) == 1 and page_log[0].levelno == logging.ERROR
    assert page_log[0].exc_info[0] is KeyError and "internal detail 42" in str(page_log[0].exc_info[1])


def test_streamlit_control_flow_and_success_pass_through(page_log):
    stopped = _run("stop")
    assert not stopped.exception and not stopped.error and _texts(stopped) == ["before"]
    fine = _run("none")
    assert not fine.exception and not fine.error and _texts(fine) == ["before", "after"]
    assert not page_log
