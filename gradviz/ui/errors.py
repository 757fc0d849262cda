"""How a page reports an error: ``with user_errors("next step"):`` around each step that can fail.

A :class:`~gradviz.errors.GradvizError` is the user's to fix: its message (plain text: it may quote a file or
class name) is shown with ``st.error`` and the page's hint (Markdown). Anything else is a fault in gradviz: the
user sees a short message, never a traceback, and the traceback goes to the log (logger ``gradviz.ui``).
Either way the page stops there (``st.stop``), so nothing below runs on half a result.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import streamlit as st

from gradviz.errors import GradvizError
from gradviz.reporting.plaintext import md_text

__all__ = ["user_errors", "UNEXPECTED"]

log = logging.getLogger("gradviz.ui")

UNEXPECTED = ("Something went wrong inside gradviz (a bug, not your input); the details are in the server log. "
              "Reload the page, or change a choice and try again.")


@contextmanager
def user_errors(hint: str = "") -> Iterator[None]:
    """Run the block; on an exception show it as described in the module docstring and stop the page.

    Streamlit's own control flow (``st.stop``, reruns) derives from BaseException and passes through."""
    try:
        yield
    except GradvizError as exc:
        st.error("\n\n".join(md_text(line) for line in str(exc).splitlines()) + (f"\n\n{hint}" if hint else ""))
        st.stop()
    except Exception:
        log.exception("unexpected error while drawing the page")
        st.error(UNEXPECTED)
        st.stop()
