"""Your own architecture: a plugin registered through a test distribution's entry point (group gradviz.models),
and path/to/file.py:build — allowed from the command line and the server configuration, never from a browser."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from gradviz.cli import main
from gradviz.errors import ModelError
from gradviz.models import list_models, load_model
from gradviz.models.plugins import server_model_specs

NET_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn
    from pathlib import Path

    MARKER = Path(__file__).with_name("imported.marker")
    MARKER.write_text("this file ran")  # lets a test prove whether the web app executed it

    def build():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(4, 3))
        card = {"name": "tiny-net", "architecture": "conv-bn-relu-pool-linear", "input_size": [1, 28, 28],
                "mean": [0.5], "std": [0.5], "class_names": ["a", "b", "c"]}
        return net.eval(), card

    def no_card():
        return nn.Linear(2, 2)
''')


def make_distribution(root: Path, name: str = "tiny-net", target: str = "gv_test_plugin:build") -> Path:
    """An installed-looking distribution: a package plus its .dist-info with entry_points.txt."""
    pkg = root / "gv_test_plugin"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(NET_SOURCE)
    info = root / "gv_test_plugin-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gv-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[gradviz.models]\n{name} = {target}\n")
    return root


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    root = make_distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    yield root
    sys.modules.pop("gv_test_plugin", None)


def test_plugin_is_listed_and_loads_with_its_card(plugin_path):
    entry = {m.name: m for m in list_models()}["tiny-net"]
    assert entry.source == "plugin"
    assert "gv_test_plugin:build" in entry.description and "gv-test-plugin 0.1" in entry.description
    model = load_model("tiny-net")
    assert model.card.class_names == ["a", "b", "c"] and model.head.out_features == 3
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 3)


def test_plugin_without_a_card_is_a_clear_error(tmp_path, monkeypatch):
    root = make_distribution(tmp_path / "site", name="bare-net", target="gv_test_plugin:no_card")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    try:
        with pytest.raises(ModelError, match="bare-net: the builder returned a network without a card"):
            load_model("bare-net")
    finally:
        sys.modules.pop("gv_test_plugin", None)


def test_plugin_in_cli_list_and_score(plugin_path, tmp_path, capsys):
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "tiny-net" in listed and "plugin gv_test_plugin:build" in listed and "timm:<name>" in listed
    assert "mnist-vit" in listed
    out = tmp_path / "out"
    assert main(["score", "--model", "tiny-net", "--ood", "letters", "--methods", "msp,gradnorm,grad_l2",
                 "--limit", "8", "--out", str(out), "--cache", "none"]) == 0
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 16 and scores["prediction"].between(0, 2).all() and scores["grad_l2"].notna().all()


def test_file_builder_runs_from_the_command_line_only(tmp_path, capsys):
    net_file = tmp_path / "my_net.py"
    net_file.write_text(NET_SOURCE)
    marker = tmp_path / "imported.marker"
    with pytest.raises(ModelError, match="runs a Python file"):
        load_model(f"{net_file}:build")
    assert not marker.exists()  # refused before the file was opened
    out = tmp_path / "out"
    assert main(["score", "--model", f"{net_file}:build", "--ood", "noise-uniform", "--methods", "msp,energy",
                 "--limit", "8", "--out", str(out), "--cache", "none"]) == 0
    assert marker.exists() and len(pd.read_csv(out / "scores.csv")) == 16
    capsys.readouterr()
    assert main(["score", "--model", f"{net_file}:no_card", "--out", str(out), "--cache", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "without a card" in err and "Traceback" not in err


def test_server_model_specs_from_argv_and_environment():
    specs = server_model_specs(["--model", "a.py:build", "--other", "--model=b.py:make"],
                               {"GRADVIZ_MODELS": "c.py:f; d.py:g"})
    assert specs == ["c.py:f", "d.py:g", "a.py:build", "b.py:make"]
    assert server_model_specs([], {}) == []
