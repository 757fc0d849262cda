"""Shared fixtures: the bundled model (loaded once per session), a tiny random model, and the two
statistics paths of the gradient engine."""

from __future__ import annotations

import json
import os

import pytest
import torch

from gradviz.models import GradvizModel, load_model
from gradviz.models.zoo import random_model

from engine_reference import require_kernel

# The dashboard computes the quick start's default results in background threads (gradviz/ui/warmup.py). In the
# tests that would only take CPU from the test itself: a test (or a browser test's server) that wants it sets
# GRADVIZ_WARM_MODELS itself.
os.environ.setdefault("GRADVIZ_WARM_MODELS", "none")


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


@pytest.fixture
def timm_weights(tmp_path):
    """``timm_weights(name, input_size, std)`` -> a seeded random 10-class timm ``name`` saved as
    ``<name>.safetensors`` with its card (``<name>.json``) beside it, in a tmp dir."""
    from safetensors.torch import save_file

    from gradviz.models.timm_models import build_timm

    def _save(name: str, input_size: list[int], std: float):
        torch.manual_seed(0)
        net, _ = build_timm(name, 10)
        path = tmp_path / f"{name}.safetensors"
        save_file(net.state_dict(), str(path))
        card = {"input_size": input_size, "mean": [0.5] * 3, "std": [std] * 3,
                "class_names": [str(i) for i in range(10)]}
        path.with_suffix(".json").write_text(json.dumps(card))
        return path

    return _save
