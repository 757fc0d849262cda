"""Contract tests over the WHOLE method registry: a new method is checked without new code.

Every registered method must: return a finite CPU float tensor of shape (B,), be deterministic,
give a sample the same score whatever batch it is in (eval mode), work under ``torch.no_grad()``,
leave the shared model clean (no hooks, no ``.grad``, no requires_grad/train-mode change), carry
everything a person needs to read it (family, paper, link, formula, intuition), and — on the bundled
trained model — do on each OOD set what its registration declares, reversals included.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradviz.errors import MethodError
from gradviz.methods import ModelOutputs, get_method, list_methods
from gradviz.methods.registry import DIRECTIONS, FAMILIES, meets_expectation
from gradviz.analysis.metrics import auroc
from gradviz.models import BUNDLED_WEIGHTS
from gradviz.models.zoo import random_model

METHOD_NAMES = [m.name for m in list_methods()]
# What each method does on the bundled model's OOD sets is declared in its registration (``expected``),
# reversals included (e.g. every confidence-based score ranks uniform noise as MORE certain than digits:
# ReLU networks are overconfident far from the data, Hein et al. 2019; confounding-label gradients rank
# letters below digits). docs/RESULTS.md measures the same on 500+ samples per set. Here each declaration
# is asserted with the AUROC of digits (negative) vs the set (positive) on N_SANITY samples each
# (bounds in gradviz.methods.registry.meets_expectation: higher >= 0.55, lower <= 0.45, chance in (0.4, 0.6)).
REQUIRED_SETS = {"noise-uniform", "letters"}
N_SANITY = 256  # one engine sub-batch: AUROC standard error ≈ 0.02


def _clean(model: nn.Module) -> list[str]:
    """What a method left behind on the model (empty = nothing)."""
    left = []
    for name, m in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            if getattr(m, attr, None):
                left.append(f"{attr} on {name or 'model'}")
        if m.training:
            left.append(f"train mode on {name or 'model'}")
    left += [f".grad on {n}" for n, p in model.named_parameters() if p.grad is not None]
    left += [f"requires_grad off on {n}" for n, p in model.named_parameters() if not p.requires_grad]
    return left


@pytest.fixture(scope="module")
def model():
    return random_model("mnist-cnn", num_classes=10, input_size=(1, 28, 28), seed=0)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))


_RUNNERS: dict = {}


def _runner(name: str, model):
    """A method with default parameters, fitted (once per module) on a small random 'ID' set when needed."""
    key = (name, id(model))
    if key not in _RUNNERS:
        runner = get_method(name).create()
        if runner.info.needs_fit:  # 64 random images labelled with the model's own predictions
            images = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
            runner.fit(model, images, model(images).argmax(-1).numpy())
        _RUNNERS[key] = runner
    return _RUNNERS[key]


def _score(name: str, model, x: torch.Tensor) -> torch.Tensor:
    return _runner(name, model).score(ModelOutputs.from_model(model, x))


_FULL: dict = {}


def _full_score(name: str, model, x: torch.Tensor) -> torch.Tensor:
    """The method's score of the shared 8-image batch, computed once (the suite runs on 2 CPU cores)."""
    if name not in _FULL:
        _FULL[name] = _score(name, model, x)
    return _FULL[name]


def test_registry_is_not_empty_and_names_unique():
    assert len(METHOD_NAMES) >= 5
    assert len(set(METHOD_NAMES)) == len(METHOD_NAMES)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_metadata_is_complete(name):
    info = get_method(name)
    assert info.title and info.paper and info.formula and info.summary and info.intuition and info.reading
    assert isinstance(info.year, int) and 1900 < info.year < 2100
    assert info.family in FAMILIES
    assert info.link.startswith("https://")
    assert REQUIRED_SETS <= set(info.expected), f"{name} must declare what it does on {sorted(REQUIRED_SETS)}"
    assert set(info.expected.values()) <= set(DIRECTIONS)
    with pytest.raises(MethodError, match="unknown parameter"):
        info.create(no_such_parameter=1)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_returns_finite_cpu_float_vector(name, model, x):
    s = _full_score(name, model, x)
    assert isinstance(s, torch.Tensor)
    assert s.shape == (8,)
    assert s.dtype == torch.float32 and s.device.type == "cpu"
    assert torch.isfinite(s).all(), s
    assert not s.requires_grad


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_is_deterministic(name, model, x):
    torch.testing.assert_close(_score(name, model, x), _full_score(name, model, x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_score_does_not_depend_on_batch_composition(name, model, x):
    full = _full_score(name, model, x)
    torch.testing.assert_close(_score(name, model, x[:3]), full[:3], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(_score(name, model, x.flip(0)).flip(0), full, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_works_under_no_grad(name, model, x):
    with torch.no_grad():
        inside = _score(name, model, x)
    torch.testing.assert_close(inside, _full_score(name, model, x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_leaves_shared_model_clean(name, model, x):
    _score(name, model, x[:2])
    assert _clean(model) == []


@pytest.mark.parametrize("name", [n for n in METHOD_NAMES if get_method(n).needs_fit])
def test_fitted_method_refuses_to_score_before_fit(name, model, x):
    with pytest.raises(MethodError, match="fitted"):
        get_method(name).create().score(ModelOutputs.from_model(model, x))


# ------------------------------------------------------------------ declared behaviour on the trained model

@pytest.fixture(scope="module")
def trained():
    """(bundled model, shared batches per OOD spec + "mnist", MNIST train images/labels for fitting).

    Batches keep the shared hooked forward, so per-batch memos (the gradient engine's layer tables)
    are computed once for all methods that read them."""
    if not BUNDLED_WEIGHTS.is_file():
        pytest.skip("bundled weights assets/mnist_cnn.safetensors not present")
    from gradviz.data import load_dataset
    from gradviz.models import load_model

    m = load_model("mnist-cnn")
    specs = {"mnist"} | {s for name in METHOD_NAMES for s in get_method(name).expected}
    batches = {s: ModelOutputs.from_model(m, load_dataset(s, m.card, limit=N_SANITY, seed=0).images, keep_graph=True)
               for s in sorted(specs)}
    fit = load_dataset("mnist:train", m.card, limit=1000, seed=0)
    return m, batches, fit.images, fit.labels


def _trained_auroc(name: str, trained, spec: str) -> float:
    m, batches, train_x, train_y = trained
    key = (name, "trained")
    if key not in _RUNNERS:
        _RUNNERS[key] = get_method(name).create().fit(m, train_x, train_y)
    runner = _RUNNERS[key]
    return auroc(runner.score(batches["mnist"]).numpy(), runner.score(batches[spec]).numpy())


@pytest.mark.slow
@pytest.mark.parametrize("name, spec, direction", [
    (name, spec, direction) for name in METHOD_NAMES for spec, direction in get_method(name).expected.items()])
def test_declared_behaviour_on_bundled_model(name, spec, direction, trained):
    """Every declared direction holds, reversals included: a method that starts (or stops) separating a set
    fails here until its registration (and the docs) say so."""
    a = _trained_auroc(name, trained, spec)
    assert meets_expectation(direction, a), f"{name} on {spec}: AUROC {a:.3f} does not match the declared '{direction}'"


def test_registration_rejects_an_unknown_family_or_direction():
    from gradviz.methods.registry import REGISTRY, register

    common = dict(title="t", paper="p", year=2024, formula="f", link="https://x", intuition="i")
    with pytest.raises(MethodError, match="family"):
        register("no_such_family", family="vibes", **common)
    with pytest.raises(MethodError, match="expected"):
        register("no_such_direction", family="output", expected={"letters": "up"}, **common)
    assert "no_such_family" not in REGISTRY and "no_such_direction" not in REGISTRY


def test_declared_directions_have_separate_bounds():
    assert meets_expectation("higher", 0.55) and not meets_expectation("higher", 0.54)
    assert meets_expectation("lower", 0.45) and not meets_expectation("lower", 0.46)
    assert meets_expectation("chance", 0.5) and not meets_expectation("chance", 0.4)
    assert not meets_expectation("chance", 0.97) and not meets_expectation("lower", 0.5)
