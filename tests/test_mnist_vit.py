"""The bundled vision transformer mnist-vit: held-out accuracy, card, size, head and features, reproducible training."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from gradviz.config import ASSETS
from gradviz.data.mnist import mnist_split
from gradviz.models import load_model
from gradviz.models.card import ModelCard
from gradviz.models.train import RECIPES, train_mnist_vit


@pytest.fixture(scope="module")
def vit():
    return load_model("mnist-vit")


def test_bundled_vit_reaches_96_percent_on_the_held_out_digits(vit):
    images, labels = mnist_split("test")
    with torch.no_grad():
        pred = torch.cat([vit(images[i:i + 500]).argmax(1) for i in range(0, len(images), 500)])
    accuracy = float((pred == torch.from_numpy(labels)).float().mean())
    assert len(images) == 1000 and accuracy >= 0.96
    assert accuracy == pytest.approx(vit.card.test_accuracy, abs=1e-3)  # the card states what the weights do


def test_weights_and_card_are_committed_small_and_consistent():
    weights = ASSETS / "mnist_vit.safetensors"
    assert weights.stat().st_size < 2 * 2**20
    card = ModelCard.from_json(ASSETS / "mnist_vit.json")
    assert card.name == "mnist-vit" and card.input_size == (1, 28, 28) and card.num_classes == 10
    assert card.training_command == "python -m gradviz train --arch vit"
    assert card.extra["epochs"] == RECIPES["vit"].epochs and card.extra["seed"] == 0
    assert card.extra["train_images"] == 4000 and card.extra["test_images"] == 1000
    state = load_file(str(weights))
    assert state["heads.head.weight"].shape == (10, 64) and state["conv_proj.weight"].shape == (64, 1, 7, 7)


def test_head_is_heads_head_and_features_are_the_class_token_after_the_final_layernorm(vit):
    assert vit.head is vit.net.heads.head
    x = torch.rand(3, 1, 28, 28)
    logits, features = vit.logits_and_features(x)
    net = vit.net
    with torch.no_grad():
        tokens = net._process_input(vit.normalize(x))  # (B, 16, 64)
        tokens = torch.cat([net.class_token.expand(3, -1, -1), tokens], 1)  # (B, 17, 64)
        cls = net.encoder(tokens)[:, 0]  # the encoder ends with its LayerNorm
    assert features.shape == (3, 64) and torch.allclose(features, cls, atol=1e-5)
    assert torch.allclose(logits, net.heads.head(cls), atol=1e-5)


def test_vit_training_smoke_run_is_reproducible(tmp_path):
    first = train_mnist_vit(epochs=1, seed=5, out_dir=tmp_path / "a", progress=False, limit=128)
    second = train_mnist_vit(epochs=1, seed=5, out_dir=tmp_path / "b", progress=False, limit=128)
    a, b = load_file(str(first["weights"])), load_file(str(second["weights"]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first["weights"].name == "mnist_vit.safetensors" and first["card"].name == "mnist_vit.json"
    model = load_model("mnist-vit", first["weights"])
    assert model.card.name == "mnist-vit" and model(torch.rand(1, 1, 28, 28)).shape == (1, 10)
