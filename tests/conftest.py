"""Shared fixtures: the bundled model (loaded once per session) and a tiny random model."""

from __future__ import annotations

import pytest

from gradviz.models import GradvizModel, load_model
from gradviz.models.zoo import random_model


@pytest.fixture(scope="session")
def bundled_model() -> GradvizModel:
    """The committed ``mnist-cnn`` (assets/mnist_cnn.safetensors), eval mode, CPU."""
    return load_model("mnist-cnn")


@pytest.fixture
def tiny_model() -> GradvizModel:
    """A seeded random ``mnist-cnn`` (1×28×28 input, 10 classes): fast, no weights needed."""
    return random_model("mnist-cnn", num_classes=10, input_size=(1, 28, 28), seed=0)
