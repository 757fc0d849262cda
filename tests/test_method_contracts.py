"""Contract tests over the WHOLE method registry: a new method is checked without new code.

Every registered method must: return a finite CPU float tensor of shape (B,), be deterministic,
give a sample the same score whatever batch it is in (eval mode), work under ``torch.no_grad()``,
leave the shared model clean (no hooks, no ``.grad``, no requires_grad/train-mode change), carry
its paper/formula metadata, and — on the bundled trained model — rank clearly-OOD inputs above
clean MNIST on average (explicit, documented exceptions below).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradviz.errors import MethodError
from gradviz.methods import ModelOutputs, get_method, list_methods
from gradviz.models import BUNDLED_WEIGHTS
from gradviz.models.zoo import random_model

METHOD_NAMES = [m.name for m in list_methods()]
KINDS = {"output", "feature", "gradient", "input-gradient"}

# Methods whose score is expected to rank uniform noise as *more certain* than digits on the bundled
# model. ReLU networks are provably overconfident far from the training data (Hein, Andriushchenko &
# Bitterwolf, CVPR 2019): logits grow linearly along a ray, and uniform noise on a 28×28 digit model
# is far away (the bundled model gives it max logit ≈ 53 vs ≈ 9 on digits, softmax ≈ 1.0). Every score
# that is a monotone function of softmax confidence or of logit scale then reverses on noise.
NOISE_REVERSED = {
    "msp": "softmax confidence: ReLU nets are overconfident far from the data (Hein et al. 2019)",
    "maxlogit": "logit scale grows far from the data (Hein et al. 2019)",
    "energy": "logsumexp of logits grows far from the data (Hein et al. 2019)",
    "entropy": "softmax saturates to one-hot far from the data (Hein et al. 2019)",
    "odin": "temperature-scaled softmax confidence; same far-from-data overconfidence (Hein et al. 2019)",
    "gradnorm": "‖h‖₁·‖p−u‖₁ grows with feature scale and confidence far from the data; GradNorm's "
                "paper evaluates natural-image OOD sets, not noise",
}
# Oberdiek et al.'s predicted-label loss −log p_ŷ has ∂ℓ/∂z = p − e_ŷ, whose size is ∝ (1 − p_ŷ):
# every statistic of its gradient shrinks with confidence, so it inherits the same reversal.
NOISE_REVERSED.update({
    f"grad_{stat}": "predicted-label gradient ∝ (1 − p_ŷ) vanishes on overconfident far-away inputs (Hein et al. 2019)"
    for stat in ("l1", "l2", "max", "min", "std")
})
# Observed on the bundled model and reported, not hidden: kept as non-strict xfail so a fix shows as XPASS.
LETTERS_REVERSED = {
    "confounding": "observed: rendered letters score below MNIST digits on average with the bundled model "
                   "(sigmoid reading; gradient norms grow with the feature scale of confident digits)",
}
N_SANITY = 64


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
        if runner.info.needs_fit:
            g = torch.Generator().manual_seed(1)
            runner.fit(model, torch.rand(40, 1, 28, 28, generator=g), np.arange(40) % 10)
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
    assert info.title and info.paper and info.formula and info.summary
    assert isinstance(info.year, int) and 1900 < info.year < 2100
    assert info.kind in KINDS
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


# ------------------------------------------------------------------ sanity sign on the trained model

@pytest.fixture(scope="module")
def trained():
    """(bundled model, shared batches {digits, noise, letters?}, MNIST train images/labels for fitting).

    Batches are shared between methods so per-batch memos (the gradient engine's layer table)
    are computed once for all ``grad_*`` scores.
    """
    if not BUNDLED_WEIGHTS.is_file():
        pytest.skip("bundled weights assets/mnist_cnn.safetensors not present")
    from gradviz.data.mnist import mnist_split
    from gradviz.models import load_model

    m = load_model("mnist-cnn")
    test_x, _ = mnist_split("test")
    train_x, train_y = mnist_split("train")
    sets = {
        "digits": test_x[:N_SANITY],
        "noise": torch.rand(N_SANITY, 1, 28, 28, generator=torch.Generator().manual_seed(7)),
    }
    try:
        from gradviz.data.letters import render_letters

        sets["letters"] = render_letters(N_SANITY, 0)[0]
    except Exception as exc:  # module or fonts missing: only the letters check skips
        sets["letters_error"] = f"{type(exc).__name__}: {exc}"
    batches = {k: (ModelOutputs.from_model(m, v) if isinstance(v, torch.Tensor) else v) for k, v in sets.items()}
    return m, batches, train_x[:1000], train_y[:1000]


def _trained_scores(name: str, trained, ood: str) -> tuple[torch.Tensor, torch.Tensor]:
    m, batches, train_x, train_y = trained
    key = (name, "trained")
    if key not in _RUNNERS:
        _RUNNERS[key] = get_method(name).create().fit(m, train_x, train_y)
    runner = _RUNNERS[key]
    return runner.score(batches["digits"]), runner.score(batches[ood])


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_uniform_noise_scores_above_mnist_on_bundled_model(name, trained):
    if name in NOISE_REVERSED:
        pytest.skip(f"{name}: expected to reverse on uniform noise — {NOISE_REVERSED[name]}")
    id_s, ood_s = _trained_scores(name, trained, "noise")
    assert ood_s.mean() > id_s.mean(), f"{name}: noise {ood_s.mean():.4g} <= digits {id_s.mean():.4g}"


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=LETTERS_REVERSED[n], strict=False)) if n in LETTERS_REVERSED else n
    for n in METHOD_NAMES
])
def test_letters_score_above_mnist_on_bundled_model(name, trained):
    if "letters" not in trained[1]:
        pytest.skip(f"letters not available: {trained[1]['letters_error']}")
    id_s, ood_s = _trained_scores(name, trained, "letters")
    assert ood_s.mean() > id_s.mean(), f"{name}: letters {ood_s.mean():.4g} <= digits {id_s.mean():.4g}"
