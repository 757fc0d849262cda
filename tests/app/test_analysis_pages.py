"""AppTest: Layer profiles, Meta classifier, Corruption lab and Learn render and react to their controls."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from gradviz.methods import list_methods
from gradviz.scoring import RunConfig

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def _open(monkeypatch, tmp_path, page: str, **config) -> AppTest:
    monkeypatch.setenv("GRADVIZ_CACHE_DIR", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=240)
    # AppTest.switch_page runs only the page script (not app.py's sidebar), so the shared choices
    # go straight into the session state the sidebar would have written.
    cfg = dict(limit=100, ood=["letters", "noise-uniform"], methods=["msp", "energy"])
    at.session_state["gv_config"] = RunConfig(**{**cfg, **config})
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


@pytest.mark.slow
def test_layers_page_calls_out_best_layer_and_reacts(monkeypatch, tmp_path):
    at = _open(monkeypatch, tmp_path, "pages/layers.py")
    _ok(at)
    assert len(at.get("plotly_chart")) == 3  # AUROC heat map, profile, entropy correlation
    assert "Best single metric" in at.success[0].value and "AUROC" in at.success[0].value
    assert at.selectbox(key="ly_ood").options == ["letters", "noise-uniform"]
    assert at.selectbox(key="ly_stat").value == "l2"
    assert at.selectbox(key="ly_loss").value == "nll_pred"
    coverage = at.dataframe[0].value  # the engine's coverage report of the bundled model
    assert coverage["entries"].sum() == 77_754 and set(coverage["status"]) == {"covered"}
    assert coverage["group"].iloc[0] == "stem.0" and coverage["group"].iloc[-1] == "fc"  # forward order
    at.selectbox(key="ly_ood").set_value("noise-uniform").run()
    _ok(at)
    assert "noise-uniform" in at.subheader[0].value
    at.selectbox(key="ly_stat").set_value("min").run()  # min is ≤ 0: the log toggle switches off
    _ok(at)
    assert at.toggle(key="ly_log").disabled
    at.selectbox(key="ly_loss").set_value("confounding_sigmoid").run()
    _ok(at)
    assert len(at.get("plotly_chart")) == 3


@pytest.mark.slow
def test_meta_page_explains_too_few_errors(monkeypatch, tmp_path):
    at = _open(monkeypatch, tmp_path, "pages/meta.py")
    assert not at.exception, at.exception
    # The bundled model makes ~1–2 % errors: 100 MNIST digits hold too few to cross-validate.
    assert any("Cannot cross-validate" in i.value for i in at.info)
    assert not at.get("plotly_chart")


@pytest.mark.slow
def test_meta_page_reports_feature_sets_and_ood_settings(monkeypatch, tmp_path):
    # A harder ID set (low-contrast digits) gives the model enough errors to learn from.
    at = _open(monkeypatch, tmp_path, "pages/meta.py", id="corrupt:contrast:3")
    _ok(at)
    table = at.dataframe[0].value
    assert {"entropy", "gradient", "gradient+entropy"} <= set(table["feature_set"])
    assert table["auroc"].between(0, 1).all()
    assert len(at.get("plotly_chart")) == 3  # bars, ROC, importances
    at.radio(key="mc_task").set_value("ood").run()
    _ok(at)
    density = at.dataframe[0].value.query("model == 'density'")  # the unsupervised twin, beside the classifiers
    assert len(density) and set(density["feature_set"]) == {"gradient norms"}
    assert density["auroc"].between(0, 1).all()
    at.multiselect(key="mc_known").set_value(["noise-uniform"]).run()
    _ok(at)
    assert at.radio(key="mc_setting").options == ["unknown", "known"]
    at.radio(key="mc_setting").set_value("known").run()
    _ok(at)
    evaluations = at.selectbox(key="mc_eval").options
    assert "seen:noise-uniform" in evaluations and "unseen:letters" in evaluations
    at.selectbox(key="mc_eval").set_value("unseen:letters").run()
    _ok(at)
    assert len(at.get("plotly_chart")) == 3


@pytest.mark.slow
def test_corruption_lab_sweeps_severities(monkeypatch, tmp_path):
    at = _open(monkeypatch, tmp_path, "pages/corruptions.py")
    _ok(at)
    assert at.selectbox(key="cl_corruption").value == "gaussian_noise"
    charts = at.get("plotly_chart")  # example row, severity histogram, AUROC vs severity, calibration vs severity
    assert len(charts) == 4 and "Calibration vs severity: gaussian_noise" in charts[3].proto.spec
    table = at.dataframe[0].value
    assert sorted(table["severity"].unique()) == [1, 2, 3, 4, 5]
    assert set(table["method"]) == {"msp", "energy"}
    at.selectbox(key="cl_corruption").set_value("inverse").run()
    _ok(at)
    at.slider(key="cl_severity").set_value(5).run()
    _ok(at)
    at.selectbox(key="cl_method").set_value("energy").run()
    _ok(at)
    assert "Severity 5" in " ".join(m.value for m in at.markdown)
    assert len(at.dataframe[0].value) == 10


def test_learn_page_explains_every_registered_method(monkeypatch, tmp_path):
    at = _open(monkeypatch, tmp_path, "pages/learn.py")
    _ok(at)
    infos = list_methods()
    from gradviz.trust.terms import TRUST_TERMS

    assert len(at.main.expander) == len(infos) + len(TRUST_TERMS)  # + what each Trust curve means
    assert len(at.main.latex) == len(infos) + len(TRUST_TERMS)
    text = " ".join(m.value for m in at.markdown)
    assert all(t.meaning in text and t.reading in text for t in TRUST_TERMS)
    for info in infos:  # every paper link comes from the registry
        assert info.link in text and info.intuition in text
    for arxiv in ("1805.08440", "2008.08030", "2311.09620", "2110.00218", "2205.10439", "2204.06507", "2507.01417",
                  "2503.18784"):
        assert arxiv in text
    assert [h.value.split(" ")[0] for h in at.subheader] == ["Output", "Feature", "Gradient"]
    assert "scores BELOW the digits (reversed)" in text  # the declared reversals are taught, not hidden
    assert "docs/RESULTS.md" in text
    assert "not uniformly better" in text
    # which scores can be explained, and how: one row per registered method, from the registrations
    table = next(d.value for d in at.dataframe if "how" in d.value.columns)
    assert list(table["method"]) == [info.name for info in infos]
    assert set(table.loc[table["explainable"], "method"]) == {i.name for i in infos if i.input_form is not None}
    assert table.set_index("method").loc["knn", "how"].startswith("not explainable: ")
    captions = " ".join(c.value for c in at.caption)
    assert "Explain this score (Inspect, Playground → explain: this score): by double backprop" in captions
