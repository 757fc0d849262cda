"""AppTest: the Playground page with a synthetic canvas drawing, a camera photo, a dataset sample, paths and a
loaded path step."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gradviz.scoring import RunConfig
from gradviz.ui.canvas import CANVAS_SIZE, canvas_state

METHODS = ["msp", "energy", "mahalanobis", "gradnorm", "gaia_z"]


def drawing(kind: str) -> bytes:
    """A canvas PNG like the browser sends: white strokes on black, RGBA, 280×280."""
    img = Image.new("RGBA", (CANVAS_SIZE, CANVAS_SIZE), (0, 0, 0, 255))
    d = ImageDraw.Draw(img)
    if kind == "three":
        d.arc((90, 40, 190, 140), 200, 90, fill="white", width=22)
        d.arc((80, 130, 190, 240), 270, 160, fill="white", width=22)
    elif kind == "scribble":
        pts = [tuple(int(v) for v in p) for p in np.random.default_rng(1).integers(30, 250, (14, 2))]
        d.line(pts, fill="white", width=22, joint="curve")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def photo() -> bytes:
    """A camera-like JPEG: a dark pen '7' on light grey paper, 320×240, with a little sensor noise."""
    rng = np.random.default_rng(0)
    paper = (200 + rng.normal(0, 6, (240, 320))).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(paper).convert("RGB")
    ImageDraw.Draw(img).line([(120, 50), (200, 50), (150, 200)], fill=(30, 30, 40), width=9)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def app(open_page):
    return open_page("pages/playground.py", RunConfig(limit=100, ood=["noise-uniform"], methods=METHODS))


def offline_models() -> list[str]:
    from gradviz.models import list_models

    return [m.name for m in list_models() if m.offline]


def chart(at, key: str) -> dict:
    return json.loads(next(c for c in at.get("plotly_chart") if c.proto.id.endswith(key) or key in c.proto.id).proto.spec)


def values(v) -> list:
    """A trace's array as plain values (Plotly sends numeric arrays as base64 typed arrays)."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v)


def gauges(at) -> dict[str, float]:
    """Method -> ID percentile as drawn on the gauges chart."""
    out = {}
    for trace in chart(at, "pg_gauges")["data"][1:]:  # trace 0 is the grey 0–100 track
        out.update(dict(zip(values(trace["y"]), values(trace["x"]))))
    return out


def prediction(at) -> str:
    return next(m for m in at.metric if m.label == "Prediction").value


def test_blank_canvas_asks_for_a_drawing(app):
    assert app.radio(key="pg_source").value == "Draw"
    assert any("Draw a digit" in i.value for i in app.info)
    assert not app.error


@pytest.mark.parametrize("model", offline_models())
def test_drawing_then_scribble_changes_prediction_scores_and_path(open_page, model):
    app = open_page("pages/playground.py", RunConfig(model=model, limit=100, ood=["noise-uniform"], methods=METHODS))
    app.session_state["pg_canvas"] = canvas_state(drawing("three"))
    app.run()
    assert not app.exception, app.exception
    assert not app.error
    assert prediction(app) == "3"
    first = gauges(app)
    assert set(first) == set(METHODS) and all(0 <= v <= 100 for v in first.values())
    hist_names = {t["name"] for t in chart(app, "pg_hists")["data"]}
    assert {"mnist (ID)", "noise-uniform (OOD)", "this image"} <= hist_names
    profile = chart(app, "pg_profile")["data"]
    assert profile[-1]["name"] == "this sample" and len(values(profile[-1]["y"])) > 3
    # a stroke scores the drawing alone: its path waits for the button
    assert not [c for c in app.get("plotly_chart") if "pg_path_chart" in c.proto.id]
    app.button(key="pg_walk").click().run()
    assert not app.exception, app.exception
    path = chart(app, "pg_path_chart")["data"]
    assert len(path) == len(METHODS) + 1 and all(len(values(t["x"])) == 31 for t in path)  # default 31 steps, one batch
    assert gauges(app) == first  # asking for the path leaves the drawing's own scores as they were

    app.session_state["pg_canvas"] = canvas_state(drawing("scribble"))
    app.run()
    assert not app.exception, app.exception
    second = gauges(app)
    assert second != first
    # a scribble is far from every digit in feature space
    assert second["mahalanobis"] > first["mahalanobis"] and second["mahalanobis"] >= 90
    # a new drawing: the path of the old one is gone, the button asks again
    assert not [c for c in app.get("plotly_chart") if "pg_path_chart" in c.proto.id]
    assert app.button(key="pg_walk").label == "Score the path"


def test_the_path_follows_every_stroke_when_asked_to(app):
    app.session_state["pg_path_live"] = True  # the toggle below the canvas (drawn once there is a drawing)
    app.session_state["pg_canvas"] = canvas_state(drawing("three"))
    app.run()
    first = [values(t["y"]) for t in chart(app, "pg_path_chart")["data"][:-1]]
    app.session_state["pg_canvas"] = canvas_state(drawing("scribble"))
    app.run()
    assert not app.exception, app.exception
    assert [values(t["y"]) for t in chart(app, "pg_path_chart")["data"][:-1]] != first  # the scribble's own path


@pytest.mark.parametrize("data", ["not a data url", "data:image/png;base64,%%%", "data:image/png;base64,aGVsbG8="])
def test_malformed_canvas_data_gives_a_message_not_an_exception(app, data):
    app.session_state["pg_canvas"] = {"drawing": {"raw": {"objects": []}, "data": data}, "backgroundFit": None}
    app.run()
    assert not app.exception, app.exception
    assert app.warning and not app.metric


def test_camera_photo_is_read_as_dark_ink_on_paper(app):
    app.radio(key="pg_source").set_value("Take a picture").run()
    assert any("Draw a digit" in i.value for i in app.info)
    app.camera_input(key="pg_camera").set_value(("shot.jpg", photo(), "image/jpeg")).run()
    assert not app.exception, app.exception
    assert prediction(app) == "7"
    # a broken photo gives a message, not an exception
    app.camera_input(key="pg_camera").set_value(("shot.jpg", b"\xff\xd8\xff not really a jpeg", "image/jpeg")).run()
    assert not app.exception, app.exception
    assert any("camera picture" in w.value for w in app.warning)


def test_dataset_sample_morph_path_and_loading_a_step(app):
    from gradviz.data import load_dataset
    from gradviz.models import load_model
    from gradviz.playground import walk
    from gradviz.scoring import images_digest

    app.radio(key="pg_source").set_value("Dataset sample").run()
    assert not app.exception, app.exception
    app.selectbox(key="pg_path").set_value("to_image").run()
    assert not app.exception, app.exception
    assert app.selectbox(key="pg_target_spec").value == "mnist"
    app.slider(key="pg_steps").set_value(20).run()
    assert all(len(values(t["x"])) == 20 for t in chart(app, "pg_path_chart")["data"])
    start = gauges(app)
    # what the path plot's on_select callback stores when step 19 (the target itself) is clicked
    digits = load_dataset("mnist", load_model("mnist-cnn").card, limit=100).images
    step = walk(digits[0:1], "to_image", 20, target=digits[1:2]).images[19:20]
    app.session_state["pg_loaded"] = {"source": images_digest(digits[0:1]), "image": step, "step": 19,
                                      "kind": "to_image", "label": "step 19 of 'to_image' (100 %)"}
    app.run()
    assert not app.exception, app.exception
    assert any("Showing step 19" in i.value for i in app.info)
    assert gauges(app) != start  # the live panels show the loaded step (another digit)
    app.button(key="pg_back").click().run()
    assert gauges(app) == start
    assert not any("Showing step" in i.value for i in app.info)
