"""AppTest: the Playground page with a synthetic canvas drawing, a camera photo, a dataset sample, paths and a
loaded path step."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gradviz.scoring import RunConfig
from gradviz.testing.apptest import chart_spec, gauges, prediction, trace_values
from gradviz.ui.canvas import canvas_state

from image_bytes import canvas_png

METHODS = ["msp", "energy", "mahalanobis", "gradnorm", "gaia_z"]


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


def test_blank_canvas_asks_for_a_drawing(app):
    assert app.radio(key="pg_source").value == "Draw"
    assert any("Draw a digit" in i.value for i in app.info)
    assert not app.error


@pytest.mark.parametrize("model", [m if m == "mnist-cnn" else pytest.param(m, marks=pytest.mark.slow)
                                   for m in offline_models()])
def test_drawing_then_scribble_changes_prediction_scores_and_path(open_page, model):
    app = open_page("pages/playground.py", RunConfig(model=model, limit=100, ood=["noise-uniform"], methods=METHODS))
    app.session_state["pg_canvas"] = canvas_state(canvas_png("three"))
    app.run()
    assert not app.exception, app.exception
    assert not app.error
    assert prediction(app) == "3"
    first = gauges(app)
    assert set(first) == set(METHODS) and all(0 <= v <= 100 for v in first.values())
    hist_names = {t["name"] for t in chart_spec(app, "pg_hists")["data"]}
    assert {"mnist (ID)", "noise-uniform (OOD)", "this image"} <= hist_names
    profile = chart_spec(app, "pg_profile")["data"]
    assert profile[-1]["name"] == "this sample" and len(trace_values(profile[-1]["y"])) > 3
    # a stroke scores the drawing alone: its path waits for the button
    assert not [c for c in app.get("plotly_chart") if "pg_path_chart" in c.proto.id]
    app.button(key="pg_walk").click().run()
    assert not app.exception, app.exception
    path = chart_spec(app, "pg_path_chart")["data"]
    # default 31 steps, one batch
    assert len(path) == len(METHODS) + 1 and all(len(trace_values(t["x"])) == 31 for t in path)
    assert gauges(app) == first  # asking for the path leaves the drawing's own scores as they were

    app.session_state["pg_canvas"] = canvas_state(canvas_png("scribble"))
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
    app.session_state["pg_canvas"] = canvas_state(canvas_png("three"))
    app.run()
    first = [trace_values(t["y"]) for t in chart_spec(app, "pg_path_chart")["data"][:-1]]
    app.session_state["pg_canvas"] = canvas_state(canvas_png("scribble"))
    app.run()
    assert not app.exception, app.exception
    assert [trace_values(t["y"]) for t in chart_spec(app, "pg_path_chart")["data"][:-1]] != first  # the scribble's own path


@pytest.mark.parametrize("data, message", [
    ("not a data url", "The drawing could not be read; reset the canvas and draw again."),
    ("data:image/png;base64,%%%", "drawing: empty file (0 bytes). Try again, or start from a dataset sample."),
    ("data:image/png;base64,aGVsbG8=", "drawing: not a supported image (PNG, JPEG, BMP, TIFF, WebP, GIF). Try again, "
                                       "or start from a dataset sample."),
])
def test_malformed_canvas_data_gives_a_message_not_an_exception(app, data, message):
    app.session_state["pg_canvas"] = {"drawing": {"raw": {"objects": []}, "data": data}, "backgroundFit": None}
    app.run()
    assert not app.exception, app.exception
    assert [w.value for w in app.warning] == [message] and not app.metric


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
    assert all(len(trace_values(t["x"])) == 20 for t in chart_spec(app, "pg_path_chart")["data"])
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
