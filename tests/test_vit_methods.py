"""Every method on transformers: the bundled mnist-vit and a timm ViT with random weights.

These need the gradient engine that covers attention projections, LayerNorm, the class token and
bare parameters (gradviz/engine/), and GAIA on LayerNorm outputs; with the previous engine the
gradient methods refuse ViTs with a MethodError.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from gradviz.cli import main
from gradviz.data import load_dataset
from gradviz.methods import ModelOutputs, list_methods
from gradviz.methods.registry import needs_graph
from gradviz.analysis.model_compare import supported_methods
from gradviz.models import load_model
from gradviz.scoring import make_runner

METHODS = [m.name for m in list_methods()]


@pytest.fixture(scope="module")
def vit_batch():
    model = load_model("mnist-vit")
    x = load_dataset("mnist", model.card, limit=6).images
    return model, x


@pytest.mark.parametrize("name", METHODS)
def test_every_method_runs_on_mnist_vit(vit_batch, name):
    model, x = vit_batch
    info = next(m for m in list_methods() if m.name == name)
    runner = make_runner(model, info)
    with model.lock:
        values = runner.score(ModelOutputs.from_model(model, x, keep_graph=needs_graph([runner])))
    assert values.shape == (6,) and torch.isfinite(values).all()
    assert not any(p.grad is not None for p in model.parameters())  # the shared model is left clean


def test_compare_models_finds_no_unsupported_method_on_mnist_vit(vit_batch):
    model, x = vit_batch
    ok, refused = supported_methods(model, x, "all")
    assert refused == {} and ok == METHODS


@pytest.mark.slow
def test_timm_vit_with_random_weights_through_score_with_gradient_methods(tmp_path, monkeypatch, capsys, timm_weights):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = timm_weights("test_vit", [3, 160, 160], 0.5)
    methods = "msp,gradnorm,grad_l2,confounding,gaia_z,mahalanobis"
    code = main(["score", "--model", "timm:test_vit", "--weights", str(weights), "--ood", "noise-uniform", "--methods",
                 methods, "--limit", "6", "--out", str(tmp_path / "out"), "--cache", "none"])
    assert code == 0, capsys.readouterr().err[-2000:]
    scores = pd.read_csv(tmp_path / "out" / "scores.csv")
    assert len(scores) == 12 and scores[methods.split(",")].notna().all().all()
