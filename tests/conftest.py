"""Shared fixtures: the bundled model (loaded once per session), a tiny random model, and the two
statistics paths of the gradient engine."""

from __future__ import annotations

import os

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


def require_kernel() -> None:
    """Skip a test that needs the compiled statistics kernel where it cannot be built — except where
    ``GRADVIZ_REQUIRE_KERNEL=1`` (CI, which has a compiler): there a missing kernel fails the test."""
    from gradviz.engine.kernels import compiled_status, warm_up

    if warm_up() != "ready":
        reason = f"compiled kernel unavailable here: {compiled_status()}"
        if os.environ.get("GRADVIZ_REQUIRE_KERNEL") == "1":
            pytest.fail(reason + " (GRADVIZ_REQUIRE_KERNEL=1)")
        pytest.skip(reason)


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
