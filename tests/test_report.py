"""The report command runs end to end on a tiny subset and writes every section."""

import pytest

from gradviz.reporting.report import ReportConfig, build_report


@pytest.mark.slow
def test_report_end_to_end_tiny(tmp_path):
    cfg = ReportConfig(limit=150, corruptions=["gaussian_noise"], severities=(1, 5))
    path = build_report(cfg, tmp_path)
    text = path.read_text()
    for heading in ["## 1. OOD detection", "## 2. Corrupted-input detection", "## 3. Meta classification",
                    "## 4. Beyond the three papers", "## 5.", "## 6. Can a prediction be trusted?"]:
        assert heading in text
    assert "gaia_z" in text and "confounding_softmax" in text
    assert (tmp_path / "results" / "histograms.png").stat().st_size > 1000
    assert (tmp_path / "results" / "corruption_severity.png").stat().st_size > 1000
    assert "nan |" not in text.split("## 2.")[0]  # section 1 numbers are all defined
    new = text.split("## 4.")[1].split("## 5.")[0]
    for family in ("| output |", "| feature |", "| gradient |"):
        assert family in new
    assert "On letters (near-OOD)" in new and "feature norm" in new
    for name in ("exgrad", "gradorth", "lowdim_grad", "grood", "gradient_density", "knn", "vim", "rmds", "react", "gsc",
                 "pro"):
        assert f"- `{name}` " in new  # one measured sentence per method added beyond the three papers
    assert "nan |" not in new
    vit = new.split("### Every method on the other bundled model, `mnist-vit`")[1].split("###")[0]
    assert "| gradient | gsc |" in vit and "| feature | vim |" in vit
    choices = new.split("### Choices that change results")[1]
    assert "| exgrad | norm | l1 | l2sq |" in choices and "| grood | mixup_layer | input |" in choices
    trust = text.split("## 6.")[1]
    assert "### `mnist-cnn`" in trust and "### `mnist-vit`" in trust and "| ID | crossfit |" in trust
    assert "Oberdiek et al.'s layerwise gradient norm" in trust
