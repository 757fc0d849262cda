"""The drawing canvas of the playground: ``streamlit-drawable-canvas`` (a Fabric.js canvas on Streamlit's
Components v2 API; no build step here, its compiled frontend ships in the wheel and loads nothing from
the network).

Checked with the pinned Streamlit 1.67 in headless Chromium (tests/browser/test_playground_browser.py): mouse
strokes, the toolbar's undo and its reset each send the canvas back as a PNG within a second.
"""

from __future__ import annotations

import base64
import binascii

import streamlit as st

CANVAS_SIZE = 280  # px, square: ten screen pixels per input pixel of a 28×28 model
INK = "#ffffff"  # white ink on black, like the MNIST digits
PAPER = "#000000"


def available() -> bool:
    """Whether the canvas package is installed (it is pinned in requirements.txt)."""
    try:
        import streamlit_drawable_canvas  # noqa: F401
    except ImportError:
        return False
    return True


def digit_canvas(key: str, stroke_width: int = 22) -> bytes | None:
    """Draw the canvas; returns the drawing as PNG bytes (None before the first stroke).

    Its toolbar has undo, redo and reset (clear); every stroke reruns the page with the new image.
    """
    if not available():
        st.warning("The drawing canvas needs `streamlit-drawable-canvas` (pip install -r requirements.txt); "
                   "take a picture or start from a dataset sample instead.")
        return None
    from streamlit_drawable_canvas import st_canvas

    result = st_canvas(stroke_width=int(stroke_width), stroke_color=INK, background_color=PAPER, height=CANVAS_SIZE,
                       width=CANVAS_SIZE, drawing_mode="freedraw", return_image_data=True, key=key)
    try:  # the browser sends a data URL: untrusted, so a malformed one is a message, not a traceback
        return result.image_bytes
    except (ValueError, TypeError, AttributeError, binascii.Error):
        st.warning("The drawing could not be read; reset the canvas and draw again.")
        return None


def canvas_state(png: bytes) -> dict:
    """The canvas widget's state for a drawing given as PNG bytes (what the browser sends after a stroke).

    Tests put it in ``st.session_state[key]`` to stand in for mouse strokes.
    """
    url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return {"drawing": {"raw": {"objects": [], "background": PAPER}, "data": url}, "backgroundFit": None}
