"""AppTest: the "Inspect a sample" page with dataset samples, uploads (good and bad) and samples sent from Compare."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from gradviz.scoring import RunConfig
from gradviz.testing.apptest import prediction

from image_bytes import paper_photo



ASK = "Upload one or more images, or switch to a dataset sample."


@pytest.fixture
def app(open_page):
    # the layer table is exercised once, in the first test
    return open_page("pages/inspect.py", RunConfig(limit=100, ood=["noise-uniform"], methods=["msp", "energy", "gradnorm"]),
                     ins_layers=False)


def _png() -> bytes:
    buf = io.BytesIO()
    img = Image.new("L", (40, 40), 0)
    img.paste(255, (15, 5, 25, 35))  # a bright vertical bar, a "1"-like digit
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_inspect_upload_prompt_then_dataset_sample_renders(app):
    assert [i.value for i in app.info] == [ASK]  # no upload yet: asks for one, no error
    app.radio(key="ins_source").set_value("A dataset sample")
    app.session_state["ins_layers"] = True
    app.run()
    assert not app.exception, app.exception
    scores = app.dataframe[0].value
    assert list(scores["method"]) == ["msp", "energy", "gradnorm"]
    assert scores["percentile"].between(0, 100).all()
    assert [c.key for c in app.get("plotly_chart")] == ["ins_probs", "ins_map_chart", "ins_gaia", "ins_profile"]
    assert len(app.get("image")) == 1 + 3 * 4  # the input + (original, heat map, colour bar, overlay) × 3 methods
    app.number_input(key="ins_index").set_value(7).run()
    app.button(key="ins_random").click().run()
    app.selectbox(key="ins_stat").set_value("max").run()
    app.radio(key="ins_mode").set_value("signed").run()
    assert not app.exception, app.exception
    assert not app.error


def test_inspect_uploaded_png_works_and_bad_upload_warns(app):
    app.file_uploader(key="ins_upload").set_value([("digit.png", _png(), "image/png")]).run()
    assert not app.exception, app.exception
    assert len(app.dataframe[0].value) == 3
    app.file_uploader(key="ins_upload").set_value([("x.png", b"hello, I am text", "image/png")]).run()
    assert not app.exception, app.exception
    assert any("x.png" in w.value for w in app.warning)
    assert [i.value for i in app.info] == [ASK]  # nothing usable: asks again


def test_inspect_opens_sample_sent_from_compare(app):
    app.session_state["gv_selected"] = ("noise-uniform", 5)
    app.run()
    assert not app.exception, app.exception
    assert app.radio(key="ins_source").value == "A dataset sample"
    assert app.selectbox(key="ins_spec").value == "noise-uniform"
    assert app.number_input(key="ins_index").value == 5


def test_inspect_flags_a_photo_of_ink_on_paper_and_cleans_it_up(app):

    app.file_uploader(key="ins_upload").set_value([("two.jpg", paper_photo("2"), "image/jpeg")]).run()
    assert not app.exception, app.exception
    warned = " ".join(w.value for w in app.warning)
    assert "two.jpg looks unlike the ID set: it is dark on a light background" in warned, warned
    toggle = next(t for t in app.toggle if t.key.startswith("ins_clean_"))
    assert toggle.value is True  # on by default for an upload unlike the ID set
    assert prediction(app).startswith("2 ")
    toggle.set_value(False).run()
    assert not app.exception, app.exception
    assert not prediction(app).startswith("2 ")  # as-is, the photo is misread (the bug)
    # an MNIST-like upload gets no note and the clean-up starts off
    app.file_uploader(key="ins_upload").set_value([("digit.png", _png(), "image/png")]).run()
    assert not any("looks unlike" in w.value for w in app.warning)
    assert next(t for t in app.toggle if t.key.startswith("ins_clean_")).value is False
