"""AppTest: a torchvision name over the web app's parameter limit ends in a clear refusal with the numbers."""

from __future__ import annotations

from gradviz.scoring import RunConfig


def test_a_model_name_over_the_parameter_limit_is_refused_on_the_page(open_page, monkeypatch):
    monkeypatch.setenv("GRADVIZ_MAX_PARAMS_WEB", "1000000")
    at = open_page("pages/home.py", RunConfig(limit=30, ood=["letters"], methods=["msp"]))
    at.run()
    at.text_input(key="gv_arch").set_value("resnet152")
    at.run()
    assert not at.exception, at.exception
    text = " ".join(e.value for e in at.error)
    assert "torchvision:resnet152 has 60,192,808 parameters" in text and "at most 1,000,000" in text
    assert not at.dataframe  # nothing was scored
