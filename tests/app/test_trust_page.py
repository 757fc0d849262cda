"""AppTest: the Trust page on the bundled model: risk–coverage of a chosen score, the stated outcome that follows the
coverage slider, galleries, every method's AURC, reliability diagram before/after temperature scaling."""

from __future__ import annotations

import json
import re

import pytest

from gradviz.scoring import RunConfig
from gradviz.testing.apptest import chart_spec

METHODS = ["msp", "energy", "gradnorm"]
SHIFT = "corrupt:gaussian_noise:4"
pytestmark = pytest.mark.slow  # the page's first run scores three sets and fits temperatures


@pytest.fixture
def app(open_page):
    return open_page("pages/trust.py", RunConfig(limit=120, ood=["letters", SHIFT], methods=METHODS))


def _kept(app) -> float:
    text = next(m.value for m in app.markdown if "of images kept" in m.value)
    return float(re.search(r"([\d.]+) % of images kept", text).group(1))


def test_trust_page_shows_curves_table_and_calibration(app):
    assert not app.error
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in app.get("plotly_chart")]
    assert titles == ["Risk–coverage: msp (lower = better)", "Reliability diagram"]
    table = app.dataframe[0].value
    assert sorted(table["method"]) == sorted(METHODS) and table["aurc"].between(0, 1).all()
    assert table["aurc"].is_monotonic_increasing  # best first
    assert app.selectbox(key="trust_set").options == ["mnist (ID test set)", f"mnist + {SHIFT}"]  # letters: no labels
    calibration = app.dataframe[1].value
    assert len(calibration) == 2 and calibration["temperature"].iloc[0] == 1.0
    assert any("fit split mnist:train" in c.value for c in app.caption)
    app.radio(key="trust_fit").set_value("crossfit").run()
    assert not app.exception, app.exception
    assert any("mean of the two halves' temperatures" in c.value for c in app.caption)
    assert app.dataframe[1].value["temperature"].iloc[1] != calibration["temperature"].iloc[1]
    labels = {b.proto.label for b in app.get("download_button")}
    assert {"⬇ risk_coverage.csv", "⬇ misclassification.csv", "⬇ calibration.csv", "⬇ config.json"} <= labels


def test_moving_the_coverage_slider_changes_the_kept_share_and_galleries(app):
    app.selectbox(key="trust_set").set_value(SHIFT).run()
    assert not app.exception, app.exception
    kept_before = _kept(app)
    headers_before = [h.value for h in app.subheader]
    app.slider(key="trust_coverage").set_value(0.5).run()
    assert not app.exception, app.exception
    kept_after = _kept(app)
    assert kept_before == pytest.approx(90, abs=1) and kept_after == pytest.approx(50, abs=1)
    rejected = [h.value for h in app.subheader if h.value.startswith("Rejected")]
    assert rejected != [h for h in headers_before if h.startswith("Rejected")]
    assert rejected == ["Rejected (most uncertain first): 120"]  # half of 240 labelled images
    assert len(app.get("image")) >= 16  # the rejected gallery (16 shown) and the accepted-but-wrong one


def test_choosing_another_score_redraws_its_curve(app):
    app.selectbox(key="trust_method").set_value("gradnorm").run()
    assert not app.exception, app.exception
    title = json.loads(app.get("plotly_chart")[0].proto.spec)["layout"]["title"]["text"]
    assert title == "Risk–coverage: gradnorm (lower = better)"
    equal_width = chart_spec(app, "trust_reliability")["data"]
    app.segmented_control(key="trust_strategy").set_value("quantile").run()
    assert not app.exception, app.exception
    assert chart_spec(app, "trust_reliability")["data"] != equal_width  # equal-mass bins: other points


def test_trust_sends_a_gallery_sample_to_inspect(app):
    spec, index = app.selectbox(key="trust_pick").value.split(" #")
    app.button(key="trust_inspect").click().run()
    assert not app.exception, app.exception
    assert app.session_state["gv_selected"] == (spec, int(index))
    assert app.selectbox(key="ins_spec").value == spec  # now on the Inspect page, showing that sample
