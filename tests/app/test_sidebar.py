"""AppTest: the sidebar's method-parameter widgets write the run configuration; values outside a parameter's
declared range reach the library's check and come back as its message (never a traceback)."""

from __future__ import annotations

from gradviz.scoring import RunConfig


def _config(at) -> RunConfig:
    return at.session_state["gv_config"]


def _settled(at):
    """Run once more: AppTest's first run draws the sidebar under another script hash than later runs, so its
    widget ids change once (a real browser keeps them: checked with Chromium); values set after this stick."""
    at.run()
    assert not at.exception, at.exception
    return at


def test_parameter_widgets_appear_per_chosen_method_and_set_the_run_config(open_page):
    at = _settled(open_page("pages/learn.py", RunConfig(limit=100, ood=["letters"],
                                                        methods=["odin", "mahalanobis", "confounding"])))
    widgets = [*at.sidebar.number_input, *at.sidebar.text_input, *at.sidebar.selectbox]
    keys = {w.key for w in widgets if (w.key or "").startswith("gv_p_")}
    assert keys == {"gv_p_odin_temperature", "gv_p_odin_epsilon", "gv_p_mahalanobis_chunk",
                    "gv_p_mahalanobis_covariance", "gv_p_confounding_reading"}  # msp, gaia_z, ... not chosen: none
    # a parameter registered with choices is a select box of exactly those values, at its default
    assert list(at.selectbox(key="gv_p_mahalanobis_covariance").options) == ["ledoit-wolf", "empirical"]
    assert at.selectbox(key="gv_p_confounding_reading").value == "sigmoid"
    assert _config(at).params == {}  # every widget starts at its default
    assert "from 0.001 to 100000" in at.number_input(key="gv_p_odin_temperature").help

    at.number_input(key="gv_p_odin_temperature").set_value(500.0)
    at.number_input(key="gv_p_mahalanobis_chunk").set_value(256)
    at.selectbox(key="gv_p_confounding_reading").set_value("softmax")
    at.run()
    assert not at.exception, at.exception
    params = _config(at).params
    assert params == {"odin": {"temperature": 500.0}, "mahalanobis": {"chunk": 256}, "confounding": {"reading": "softmax"}}
    assert type(params["mahalanobis"]["chunk"]) is int  # a whole-number parameter stays whole

    at.number_input(key="gv_p_odin_temperature").set_value(1000.0)  # back to the default: no longer an override
    at.run()
    assert "odin" not in _config(at).params and _config(at).params["confounding"] == {"reading": "softmax"}


def test_out_of_range_parameter_from_the_sidebar_is_refused_with_its_range(open_page):
    at = _settled(open_page("pages/home.py", RunConfig(limit=100, ood=["letters"], methods=["msp", "odin"])))
    assert not at.error
    at.number_input(key="gv_p_odin_epsilon").set_value(2.0)
    at.run()
    assert not at.exception, at.exception
    (message,) = [e.value for e in at.error]
    assert "params.odin" in message and "epsilon" in message and "must be from 0 to 1" in message
    assert not at.dataframe  # nothing was scored with the refused value
    at.number_input(key="gv_p_odin_epsilon").set_value(0.0014)  # back in range: the page scores again
    at.run()
    assert not at.exception and not at.error and at.dataframe


def test_a_server_capped_at_100_samples_or_fewer_shows_the_cap_instead_of_a_slider(open_page, monkeypatch):
    """GRADVIZ_MAX_SAMPLES_WEB below the slider's step: no slider (it would need min < max), the cap is the limit."""
    monkeypatch.setenv("GRADVIZ_MAX_SAMPLES_WEB", "60")
    at = _settled(open_page("pages/learn.py", RunConfig(limit=1000, ood=["letters"], methods=["msp"])))
    assert not [s for s in at.sidebar.slider if s.key == "gv_limit"]
    assert any("Samples per set: 60" in c.value for c in at.sidebar.caption) and _config(at).limit == 60
    monkeypatch.setenv("GRADVIZ_MAX_SAMPLES_WEB", "300")
    at.run()
    assert at.slider(key="gv_limit").max == 300 and _config(at).limit == 100  # from 60, up to the slider minimum
