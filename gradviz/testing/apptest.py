"""Helpers for the page tests (tests/app, ``streamlit.testing.v1.AppTest``): read what a page shows (texts, a
chart's figure, the Playground's gauges, a prediction) and take the sidebar steps several tests share.

They work on the AppTest a test passes in; this module itself imports no Streamlit.
"""

from __future__ import annotations

import base64
import json

import numpy as np


def texts(elements) -> str:
    """The values of ``elements`` (``at.error``, ``at.warning``, ``at.sidebar.caption``...), one a line."""
    return "\n".join(str(e.value) for e in elements)


def chart_spec(at, key: str) -> dict:
    """The Plotly figure (as a dict) of the chart whose element id holds ``key``."""
    return json.loads(next(c for c in at.get("plotly_chart") if key in c.proto.id).proto.spec)


def trace_values(v) -> list:
    """A trace's array as plain values (Plotly sends numeric arrays as base64 typed arrays)."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v)


def gauges(at) -> dict[str, float]:
    """Method -> ID percentile as drawn on the Playground's gauges chart."""
    out = {}
    for trace in chart_spec(at, "pg_gauges")["data"][1:]:  # trace 0 is the grey 0–100 track
        out.update(dict(zip(trace_values(trace["y"]), trace_values(trace["x"]))))
    return out


def prediction(at) -> str:
    """The value of the "Prediction" metric (Inspect, Playground)."""
    return next(m for m in at.metric if m.label == "Prediction").value


def add_zip(at, data: bytes, name: str):
    """Upload a .zip in the sidebar's "Your own ID set" and press "Use as ID set"; -> ``at``.

    One plain rerun first: AppTest runs a page after ``switch_page`` through app.py's frame on its first run and
    alone (the page draws the sidebar) afterwards, and a widget's id differs between the two."""
    at.run()
    at.toggle(key="gv_id_on").set_value(True).run()
    at.file_uploader(key="gv_id_zip").set_value((name, data, "application/zip"))
    at.run()
    at.button(key="gv_id_add_zip").click()
    at.run()
    assert not at.exception, at.exception
    return at
