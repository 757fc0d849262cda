"""Shared fixtures: the bundled model (loaded once per session), a tiny random model, and the two
statistics paths of the gradient engine."""

from __future__ import annotations

import pytest

from gradviz.models import GradvizModel, load_model
from gradviz.models.zoo import random_model

from engine_reference import require_kernel


@pytest.fixture(scope="session")
def bundled_model() -> GradvizModel:
    """The committed ``mnist-cnn`` (assets/mnist_cnn.safetensors), eval mode, CPU."""
    return load_model("mnist-cnn")


@pytest.fixture
def tiny_model() -> GradvizModel:
    """A seeded random ``mnist-cnn`` (1×28×28 input, 10 classes): fast, no weights needed."""
    return random_model("mnist-cnn", num_classes=10, input_size=(1, 28, 28), seed=0)


@pytest.fixture(params=["off", "on"])
def mode(request):
    """Both statistics paths: eager PyTorch and the compiled C kernel."""
    if request.param == "on":
        require_kernel()
    return request.param


@pytest.fixture
def fresh_calibration():
    """Forget the engine's calibrated plans before and after a test that watches calibration."""
    from gradviz.engine import CALIBRATION

    CALIBRATION.reset()
    yield CALIBRATION
    CALIBRATION.reset()
