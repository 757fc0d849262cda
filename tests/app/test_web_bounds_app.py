"""AppTest: a torchvision name over the web app's parameter limit ends in a clear refusal with the numbers."""

from __future__ import annotations

import pytest

from gradviz.scoring import RunConfig


@pytest.mark.slow
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


def test_the_page_plans_for_the_session_budget_and_says_when_one_image_does_not_fit(open_page, monkeypatch):
    monkeypatch.setenv("GRADVIZ_SESSION_MEMORY_MB", "100")  # below a gradient pass's fixed part on mnist-cnn
    monkeypatch.delenv("GRADVIZ_MEMORY_MB", raising=False)
    at = open_page("pages/home.py", RunConfig(limit=30, ood=["letters"], methods=["msp", "grad_l2"]))
    assert not at.exception, at.exception
    text = " ".join(e.value for e in at.error)
    assert "one image does not fit the memory budget for 'scoring'" in text
    assert "budget is 100 MB (this session's budget (GRADVIZ_SESSION_MEMORY_MB))" in text
    assert not at.dataframe
