"""examples/score_and_plot.py runs as written (a small limit) and writes its figures as HTML files."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "score_and_plot.py"


def test_score_and_plot_example_writes_every_figure(tmp_path, monkeypatch, capsys):
    out = tmp_path / "figures"
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--limit", "40", "--out", str(out)])
    namespace = runpy.run_path(str(EXAMPLE), run_name="__main__")
    written = sorted(p.name for p in out.glob("*.html"))
    assert written == sorted(f"{name}.html" for name in namespace["figures"]) and len(written) == 4
    roc = (out / "roc_letters.html").read_text()
    assert "AUROC" in roc and all(m in roc for m in ("msp", "energy", "gradnorm"))
    scores = namespace["scores"]
    assert len(scores) == 3 * 40 and set(scores["dataset"]) == {"mnist", "letters", "noise-uniform"}
    assert "wrote 4 figures" in capsys.readouterr().out
