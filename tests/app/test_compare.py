"""AppTest: the "Compare distributions" page renders, reacts to method/threshold, takes uploads."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from gradviz.scoring import RunConfig

METHODS = ["msp", "energy", "gradnorm"]


@pytest.fixture
def app(open_page):
    return open_page("pages/compare.py", RunConfig(limit=100, ood=["letters", "noise-uniform"], methods=METHODS))


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (32, 32), 200).save(buf, format="PNG")
    return buf.getvalue()


def test_compare_page_draws_charts_and_metrics(app):
    charts = app.get("plotly_chart")
    assert len(charts) == 3  # histogram, strip, and the curve picked (ROC first)
    assert app.segmented_control(key="cmp_curve").value == "ROC"
    assert app.selectbox(key="cmp_method").options[0].startswith("msp")
    assert app.selectbox(key="cmp_ood").options == ["letters", "noise-uniform"]
    frames = app.dataframe
    assert len(frames) >= 3  # counts, flips, metrics
    assert "auroc" in [str(c) for c in frames[-1].value.columns]
    assert len(frames[-1].value) == 2 * len(METHODS)
    assert not app.error


def test_compare_method_and_threshold_change_counts(app):
    app.selectbox(key="cmp_method").set_value("energy").run()
    assert not app.exception, app.exception
    slider = app.slider(key="cmp_thr_energy")
    counts = app.dataframe[0].value.set_index("dataset")
    assert counts.loc["mnist", "accepted"] == 95  # default threshold accepts 95 % of 100 ID samples
    slider.set_value(slider.max).run()
    assert not app.exception, app.exception
    counts = app.dataframe[0].value.set_index("dataset")
    assert (counts["rejected"] == 0).all()
    assert len(app.dataframe[1].value) > 0
    app.selectbox(key="cmp_ood").set_value("noise-uniform").run()
    assert not app.exception, app.exception


def test_compare_curve_picker_switches_roc_and_pr(app):
    import json

    def curve_title() -> str:
        return json.loads(app.get("plotly_chart")[-1].proto.spec)["layout"]["title"]["text"]

    assert curve_title().startswith("ROC")
    for label, positive in (("Precision-recall (ID positive)", "ID"), ("Precision-recall (OOD positive)", "OOD")):
        app.segmented_control(key="cmp_curve").set_value(label).run()
        assert not app.exception, app.exception
        assert curve_title().startswith(f"Precision-recall ({positive} positive)")


def test_compare_upload_adds_ood_set_and_bad_file_warns(app):
    app.file_uploader(key="cmp_upload").set_value([("a.png", _png(), "image/png"), ("x.png", b"not an image", "image/png")])
    app.run()
    assert not app.exception, app.exception
    assert any("x.png" in w.value for w in app.warning)
    assert "upload:1 file" in app.selectbox(key="cmp_ood").options


def test_compare_sends_sample_to_inspect(app):
    spec, index = app.selectbox(key="cmp_pick").value.split(" #")
    app.button(key="cmp_inspect").click().run()
    assert not app.exception, app.exception
    assert app.session_state["gv_selected"] == (spec, int(index))
    assert app.selectbox(key="ins_spec").value == spec  # now on the Inspect page, showing that sample
    assert app.number_input(key="ins_index").value == int(index)
