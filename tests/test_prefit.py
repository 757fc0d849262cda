"""Fitted methods shipped with the bundled models (gradviz.methods.prefit): they equal a fresh fit, are used only
for exactly the fit they were made for, and are read without running code from the file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gradviz.cli import main
from gradviz.data import load_dataset
from gradviz.errors import GradvizError
from gradviz.methods import prefit
from gradviz.methods.registry import get_method, list_methods
from gradviz.scoring import _FITTED, make_runner

FITTED = [m.name for m in list_methods() if m.needs_fit]
# the fits that need only one forward of the fit set (the others backpropagate, or forward mixed images): the
# quick lane compares these with the shipped files; the full comparison of every fit is the slow test below
QUICK = ["mahalanobis", "react", "rmds", "knn", "vim"]


@pytest.fixture
def fresh_fits():
    """No fitted runner remembered from another test (make_runner memoises fits per model and parameters)."""
    _FITTED.clear()
    yield
    _FITTED.clear()


def test_every_fitted_method_of_both_bundled_models_is_shipped():
    shipped = prefit.shipped_files()
    for name in prefit.BUNDLED:
        from gradviz.models import load_model

        found = shipped.get(load_model(name).digest)
        assert found is not None, f"no shipped fits for {name}; run `python -m gradviz fits`"
        assert sorted(found[1]) == sorted(FITTED)
        assert found[0].stat().st_size < 3_000_000  # small beside the weights


def test_shipped_fits_equal_a_fresh_fit_quick():
    model, runners, images, labels = prefit.fit_bundled("mnist-cnn", [get_method(m) for m in QUICK])
    for r in runners:
        shipped = prefit.shipped_state(model, r, images, labels)
        assert shipped is not None, r.info.name
        assert type(shipped) is type(r.state)
        assert prefit.compare_states(shipped, r.state, where=r.info.name) == []


@pytest.mark.slow
def test_shipped_fits_equal_a_fresh_fit_for_every_method_and_model(capsys):
    assert main(["fits", "--check"]) == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(prefit.BUNDLED) * len(FITTED) and all(line.endswith(": ok") for line in lines), lines


def test_make_runner_reads_the_shipped_fit_instead_of_fitting(fresh_fits, bundled_model, monkeypatch):
    info = get_method("grood")

    def refuse(*args, **kwargs):
        raise AssertionError("fitted although a shipped fit matches")

    monkeypatch.setattr(info.impl, "fit", refuse)
    runner = make_runner(bundled_model, info, None, "mnist:train", 0)
    assert isinstance(runner.state, info.impl) and runner.state.bank_.shape[0] > 3000


@pytest.mark.parametrize("change", ["parameter", "fit set", "labels", "weights", "code"])
def test_a_shipped_fit_is_refused_when_its_key_does_not_match(change, bundled_model, monkeypatch):
    from gradviz.models.zoo import random_model

    info = get_method("mahalanobis")
    data = load_dataset("mnist:train", bundled_model.card, seed=0)
    model, runner, images, labels = bundled_model, info.create(), data.images, data.labels
    assert prefit.shipped_state(model, runner, images, labels) is not None  # the matching key is found
    if change == "parameter":
        runner = info.create(covariance="empirical")
    elif change == "fit set":
        images = images[:500]
        labels = labels[:500]
    elif change == "labels":
        labels = (labels + 1) % 10
    elif change == "weights":  # the same architecture and card, other weights
        model = random_model("mnist-cnn", num_classes=10, input_size=(1, 28, 28), seed=0)
    else:  # an edited method or fitting code
        monkeypatch.setattr(prefit, "code_digest", lambda info: "edited")
    assert prefit.shipped_state(model, runner, images, labels) is None


def test_the_code_in_the_key_ignores_imports_docstrings_and_decorators_only():
    source = '''"""Doc."""
from a import b


@register("x", intuition="one")
class X:
    """Doc."""

    def fit(self, v):
        from c import d
        return v.mean(0)
'''
    moved = source.replace("from a import b", "from a.b import b").replace("from c import d", "import d")
    described = source.replace('intuition="one"', 'intuition="two"').replace("Doc.", "Other words.")
    edited = source.replace("v.mean(0)", "v.mean(1)")
    assert prefit.code_text(moved) == prefit.code_text(described) == prefit.code_text(source)
    assert prefit.code_text(edited) != prefit.code_text(source)


def test_an_unmatched_key_fits_as_before(fresh_fits, bundled_model):
    runner = make_runner(bundled_model, get_method("knn"), {"k": 7}, "mnist:train", 0)
    data = load_dataset("mnist:train", bundled_model.card, seed=0)
    fresh = get_method("knn").create(k=7).fit(bundled_model, data.images, data.labels)
    assert runner.state.k_ == 7
    assert prefit.compare_states(runner.state, fresh.state) == []


def test_written_fits_round_trip_and_score_the_same(tmp_path, tiny_model):
    data = load_dataset("mnist:train", tiny_model.card, seed=0, limit=300)
    runners = [get_method(m).create().fit(tiny_model, data.images, data.labels) for m in ("mahalanobis", "knn",
                                                                                         "gradient_density")]
    prefit.write_fits(tmp_path / f"tiny{prefit.SUFFIX}", tiny_model, runners, data.images, data.labels)
    from gradviz.methods.registry import ModelOutputs

    batch = ModelOutputs.from_model(tiny_model, data.images[:16])
    for r in runners:
        state = prefit.shipped_state(tiny_model, r, data.images, data.labels, folder=tmp_path)
        assert prefit.compare_states(state, r.state, rtol=0, atol=0) == []
        restored = r.info.create()
        restored.state = state
        torch.testing.assert_close(restored.score(batch), r.score(batch), rtol=0, atol=0)


def test_a_file_naming_a_class_outside_the_method_module_is_refused(tmp_path, tiny_model):
    data = load_dataset("mnist:train", tiny_model.card, seed=0, limit=300)
    runner = get_method("gradient_density").create().fit(tiny_model, data.images, data.labels)
    path = prefit.write_fits(tmp_path / f"tiny{prefit.SUFFIX}", tiny_model, [runner], data.images, data.labels)
    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()["gradviz_fits"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    header["entries"]["gradient_density"]["attrs"]["density_"]["class"] = "MethodError"  # imported there, not its own
    save_file(tensors, str(path), metadata={"gradviz_fits": json.dumps(header)})
    with pytest.raises(GradvizError, match="is not a class of"):
        prefit.shipped_state(tiny_model, runner, data.images, data.labels, folder=tmp_path)


def test_a_damaged_file_is_no_shipped_fit(tmp_path, tiny_model):
    (tmp_path / f"broken{prefit.SUFFIX}").write_bytes(b"\x00" * 64)
    assert prefit.shipped_files(tmp_path) == {}
    runner = get_method("react").create()
    assert prefit.shipped_state(tiny_model, runner, torch.zeros(2, 1, 28, 28), [0, 1], folder=tmp_path) is None
