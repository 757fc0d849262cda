"""AppTest: the "Compare distributions" page renders its open tab only, reacts to method/threshold/view, takes uploads."""

from __future__ import annotations

import pytest

from gradviz.scoring import RunConfig

from image_bytes import png_bytes

METHODS = ["msp", "energy", "gradnorm"]


@pytest.fixture
def app(open_page):
    return open_page("pages/compare.py", RunConfig(limit=100, ood=["letters", "noise-uniform"], methods=METHODS))


def _open_tab(app, label: str):
    app.session_state["cmp_tab"] = label  # what clicking the tab does (lazy tabs keep their state under the key)
    app.run()
    assert not app.exception, app.exception
    return app


def _title(chart) -> str:
    import json

    return json.loads(chart.proto.spec)["layout"]["title"]["text"]


def test_compare_page_runs_only_the_open_tab(app):
    assert [t.label for t in app.tabs] == ["Score distributions", "ROC & precision-recall", "Detection metrics & exports",
                                           "Map of the data"]
    charts = app.get("plotly_chart")
    assert len(charts) == 1 and "uncertainty by dataset" in _title(charts[0])  # the histogram; no ROC drawn yet
    assert app.selectbox(key="cmp_method").options[0].startswith("msp")  # by family: output first
    last = app.selectbox(key="cmp_method").options[-1]
    assert last.startswith("gradnorm") and last.endswith("· gradient")
    assert "AUROC" in app.caption[1].value and "`letters`" in app.caption[1].value  # the method's metrics in one line
    assert len(app.dataframe) == 2  # counts, flips
    _open_tab(app, "ROC & precision-recall")
    charts = app.get("plotly_chart")
    assert len(charts) == 1 and _title(charts[0]).startswith("ROC")
    assert app.segmented_control(key="cmp_curve").value == "ROC"
    assert app.selectbox(key="cmp_ood").options == ["letters", "noise-uniform"]
    _open_tab(app, "Detection metrics & exports")
    assert len(app.get("plotly_chart")) == 0
    frames = app.dataframe
    assert len(frames) == 2 and "auroc" in [str(c) for c in frames[0].value.columns]
    metrics = frames[0].value
    assert len(metrics) == 2 * len(METHODS)
    assert list(metrics["family"][:3]) == ["output", "output", "gradient"]  # grouped by family per OOD set
    decomposition = frames[1].value  # gradnorm is a last-layer gradient: feature norm × output factor
    assert set(decomposition["method"]) == {"gradnorm"} and len(decomposition) == 2
    assert decomposition[["auroc", "auroc_feature_only", "auroc_output_only"]].stack().between(0, 1).all()
    assert not app.error


def test_compare_every_sample_view_draws_the_selectable_strip(app):
    app.segmented_control(key="cmp_view").set_value("Every sample").run()
    assert not app.exception, app.exception
    import json

    (chart,) = app.get("plotly_chart")
    spec = json.loads(chart.proto.spec)
    assert spec["layout"]["title"]["text"].startswith("msp: every sample")
    assert sum(len(t["customdata"]["bdata"] if isinstance(t["customdata"], dict) else t["customdata"])
               for t in spec["data"] if t.get("name") != "threshold") > 0  # the threshold line: a trace too
    assert chart.proto.selection_mode  # points, box, lasso
    assert any("Select points" in c.value for c in app.caption)


def test_compare_method_and_threshold_change_counts(app):
    app.selectbox(key="cmp_method").set_value("energy").run()
    assert not app.exception, app.exception
    slider = app.slider(key="cmp_accept_energy")
    assert (slider.min, slider.max, slider.value) == (1.0, 100.0, 95.0)  # a share of ID, not raw scores
    counts = app.dataframe[0].value.set_index("dataset")
    assert counts.loc["mnist", "accepted"] == 95  # default threshold accepts 95 % of 100 ID samples
    slider.set_value(100.0).run()
    assert not app.exception, app.exception
    counts = app.dataframe[0].value.set_index("dataset")
    assert counts.loc["mnist", "rejected"] == 0 and counts.loc["mnist", "accepted"] == 100
    assert len(app.dataframe[1].value) > 0  # samples between the 95 % and the 100 % threshold flip
    assert any(m.label.startswith("Threshold (energy)") for m in app.metric)  # the raw value beside the slider
    _open_tab(app, "ROC & precision-recall")
    app.selectbox(key="cmp_ood").set_value("noise-uniform").run()
    assert not app.exception, app.exception


def test_compare_curve_picker_switches_roc_and_pr(app):
    _open_tab(app, "ROC & precision-recall")
    assert _title(app.get("plotly_chart")[-1]).startswith("ROC")
    for label, positive in (("Precision-recall (ID positive)", "ID"), ("Precision-recall (OOD positive)", "OOD")):
        app.segmented_control(key="cmp_curve").set_value(label).run()
        assert not app.exception, app.exception
        assert _title(app.get("plotly_chart")[-1]).startswith(f"Precision-recall ({positive} positive)")


def test_compare_upload_adds_ood_set_and_bad_file_warns(app):
    app.file_uploader(key="cmp_upload").set_value([("a.png", png_bytes(200, 32), "image/png"), ("x.png", b"not an image", "image/png")])
    app.run()
    assert not app.exception, app.exception
    assert any("x.png" in w.value for w in app.warning)
    assert any("upload:1 file" in c.value for c in app.caption)  # joins the OOD sets
    _open_tab(app, "ROC & precision-recall")
    assert "upload:1 file" in app.selectbox(key="cmp_ood").options


def test_compare_sends_sample_to_inspect(app):
    spec, index = app.selectbox(key="cmp_pick").value.split(" #")
    app.button(key="cmp_inspect").click().run()
    assert not app.exception, app.exception
    assert app.session_state["gv_selected"] == (spec, int(index))
    assert app.selectbox(key="ins_spec").value == spec  # now on the Inspect page, showing that sample
    assert app.number_input(key="ins_index").value == int(index)
