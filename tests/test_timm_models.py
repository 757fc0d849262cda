"""timm:<name> — the card from timm's pretrained_cfg, weights from a .safetensors file offline, one clear error
offline without a file, and a timm CNN with random weights through `python -m gradviz score`."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from gradviz.cli import main
from gradviz.errors import ModelError
from gradviz.models import load_model
from gradviz.models.timm_models import build_timm, num_classes_in, timm_card


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test here may reach the Hugging Face Hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_card_comes_from_pretrained_cfg():
    net, card = build_timm("test_resnet", 7)
    cfg = net.pretrained_cfg
    assert card.input_size == tuple(cfg["input_size"]) == (3, 160, 160)
    assert card.mean == tuple(cfg["mean"]) and card.std == tuple(cfg["std"])
    assert card.interpolation == cfg["interpolation"] == "bilinear"
    assert card.num_classes == 7 and card.class_names[0] == "class 0"
    _, vit_card = build_timm("test_vit", 3)
    assert vit_card.interpolation == "bicubic"  # the card follows timm, not a default


def test_imagenet_class_names_where_timm_knows_them():
    net, _ = build_timm("resnet18")  # 1000 classes, an ImageNet-1k pretrained tag
    card = timm_card(net, "resnet18", 1000, pretrained=True)
    assert card.class_names[:2] == ["tench", "goldfish"] and card.num_classes == 1000


def test_offline_without_a_file_is_one_clear_error_at_once():
    started = time.perf_counter()
    with pytest.raises(ModelError, match=r"timm:test_resnet needs its pretrained weights .* offline .*--weights"):
        load_model("timm:test_resnet")
    assert time.perf_counter() - started < 10  # no network retries


def test_unknown_timm_name_suggests_similar():
    with pytest.raises(ModelError, match="unknown timm model 'resnet_nope'"):
        load_model("timm:resnet_nope")


def test_weights_file_offline_sets_the_classes_and_a_card_beside_it(tmp_path):
    torch.manual_seed(0)
    net, _ = build_timm("test_resnet", 4)
    path = tmp_path / "mine.safetensors"
    save_file(net.state_dict(), str(path))
    assert num_classes_in("test_resnet", net.state_dict()) == 4
    model = load_model("timm:test_resnet", path)
    assert model.card.num_classes == 4 and model.card.input_size == (3, 160, 160)
    card = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "class_names": list("abcd")}
    path.with_suffix(".json").write_text(json.dumps(card))
    model = load_model("timm:test_resnet", path)
    assert model.card.class_names == list("abcd") and model.card.input_size == (3, 32, 32)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), net.eval()((x - 0.5) / 0.5), atol=1e-5)


@pytest.mark.slow
def test_timm_cnn_with_random_weights_through_score(tmp_path, capsys, timm_weights):
    """The issue's test: a timm model with random weights, saved to safetensors, scored by the CLI (offline)."""
    weights = timm_weights("test_resnet", [3, 32, 32], 0.25)
    out = tmp_path / "out"
    code = main(["score", "--model", "timm:test_resnet", "--weights", str(weights), "--id", "mnist", "--ood",
                 "noise-uniform", "--methods", "msp,energy,gradnorm,grad_l2", "--limit", "12", "--out", str(out),
                 "--cache", "none"])
    assert code == 0, capsys.readouterr().err[-2000:]
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 24 and set(scores["dataset"]) == {"mnist", "noise-uniform"}
    for method in ("msp", "energy", "gradnorm", "grad_l2"):
        assert scores[method].notna().all()
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics["method"]) == {"msp", "energy", "gradnorm", "grad_l2"}
    assert json.loads((out / "config.json").read_text())["model"] == "timm:test_resnet"
