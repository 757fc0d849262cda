"""The report command runs end to end on a tiny subset (through the CLI) and writes every section; bad flags are
one error line."""

import pytest

from gradviz.cli import main


@pytest.mark.slow
def test_report_command_writes_every_section_for_the_chosen_corruptions(tmp_path, capsys):
    out = tmp_path / "docs"
    assert main(["report", "--limit", "150", "--corruptions", "gaussian_noise", "--severities", "1,5",
                 "--out", str(out), "--cache", str(tmp_path / "cache")]) == 0
    assert f"wrote {out / 'RESULTS.md'}" in capsys.readouterr().out
    text = (out / "RESULTS.md").read_text()
    assert "`python -m gradviz report --limit 150 --corruptions gaussian_noise --severities 1,5`" in text
    for heading in ["## 1. OOD detection", "## 2. Corrupted-input detection", "## 3. Meta classification",
                    "## 4. Beyond the three papers", "## 5.", "## 6. Can a prediction be trusted?"]:
        assert heading in text
    assert "gaia_z" in text and "confounding_softmax" in text
    assert (out / "results" / "histograms.png").stat().st_size > 1000
    assert (out / "results" / "corruption_severity.png").stat().st_size > 1000
    assert "nan |" not in text.split("## 2.")[0]  # section 1 numbers are all defined
    section2 = text.split("## 2.")[1].split("## 3.")[0]
    assert "| gaussian_noise |" in section2 and "rotate" not in section2  # only the chosen one
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
    assert "| exgrad | norm | l1 | l2sq (paper) |" in choices
    assert "| grood | mixup_layer | auto (paper) | input |" in choices
    trust = text.split("## 6.")[1]
    assert "### `mnist-cnn`" in trust and "### `mnist-vit`" in trust and "| ID | crossfit |" in trust
    assert "Oberdiek et al.'s layerwise gradient norm" in trust
    for flags, message in ((["--corruptions", "fgo"], "unknown corruption(s) ['fgo']"),
                           (["--severities", "0,6"], "--severities takes")):
        assert main(["report", *flags, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
