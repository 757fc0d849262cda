"""Explaining an uncertainty score: every differentiable score's gradient agrees with finite differences (float64),
its value is the registered score, and the rest say clearly that they are not differentiable."""

from __future__ import annotations

import pytest
import torch

from gradviz.explain.attributions import attribute
from gradviz.errors import GradvizError, MethodError
from gradviz.explain.scores import differentiable_methods, explain_score, explainability, score_fn
from gradviz.methods.registry import ModelOutputs, get_method, list_methods
from gradviz.models.zoo import random_model

COVERED = differentiable_methods()


@pytest.fixture(scope="module")
def model64():
    """A seeded random mnist-cnn in float64 (finite differences need the precision)."""
    return random_model("mnist-cnn", num_classes=10, input_size=(1, 28, 28), seed=0).double()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 1, 28, 28, generator=g, dtype=torch.float64)


_FITTED: dict = {}


def _runner(name: str, model):
    """The method with default parameters, fitted (on random images and labels) where it must be."""
    if name not in _FITTED:
        info = get_method(name)
        runner = info.create()
        if info.needs_fit:
            g = torch.Generator().manual_seed(2)
            train = torch.rand(120, 1, 28, 28, generator=g, dtype=torch.float64)
            runner.fit(model, train, torch.arange(120) % 10)
        _FITTED[name] = runner
    return _FITTED[name]


def test_the_main_scores_are_covered():
    must = {"msp", "maxlogit", "energy", "entropy", "odin", "mahalanobis", "gradnorm", "exgrad", "grad_l2",
            "grad_l1", "confounding"}
    assert must <= set(COVERED)
    assert "knn" not in COVERED


@pytest.mark.slow
@pytest.mark.parametrize("name", COVERED)
def test_score_fn_value_is_the_registered_score(name, model64, images):
    runner = _runner(name, model64)
    shown = runner.info.impl(ModelOutputs.from_model(model64, images), **runner.params) if not runner.info.needs_fit \
        else runner.state.score(ModelOutputs.from_model(model64, images))
    u = score_fn(model64, runner)(images.clone().requires_grad_())
    assert u.shape == (3,) and u.requires_grad
    torch.testing.assert_close(u.detach(), shown.detach().to(u.dtype), rtol=1e-6, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("name", COVERED)
def test_score_gradient_matches_finite_differences(name, model64, images):
    f = score_fn(model64, _runner(name, model64))
    x = images.clone().requires_grad_()
    (grad,) = torch.autograd.grad(f(x).sum(), x)  # (3, 1, 28, 28)
    assert grad.abs().amax() > 0, f"{name}: the score's gradient is identically zero"
    eps = 1e-6
    for b in range(images.shape[0]):
        flat = grad[b].reshape(-1).abs()
        for k in flat.topk(3).indices.tolist():  # the pixels that matter most for this sample
            idx = (b, 0, k // 28, k % 28)
            plus, minus = images.clone(), images.clone()
            plus[idx] += eps
            minus[idx] -= eps
            with torch.no_grad():
                fd = (f(plus)[b] - f(minus)[b]).item() / (2 * eps)
            assert fd == pytest.approx(grad[idx].item(), rel=1e-4, abs=1e-4 * flat.max().item()), (name, idx)


def test_saliency_of_a_score_is_the_abs_gradient_of_that_score(model64, images):
    x = images[:2]
    f = score_fn(model64, "energy")
    xr = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(f(xr).sum(), xr)
    att = explain_score(model64, x.float(), "saliency", "energy")
    assert "energy" in att.note
    torch.testing.assert_close(att.maps.double(), grad.abs().sum(1), rtol=1e-4, atol=1e-7)
    assert not torch.allclose(attribute(model64, x.float(), "saliency").maps, att.maps)  # the class's map differs


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad", "gradcam"])
def test_every_map_runs_on_a_score(method, model64, images):
    att = explain_score(model64, images[:1], method, "energy")
    assert att.maps.shape == (1, 28, 28) and torch.isfinite(att.maps).all()


def test_integrated_gradients_of_a_score_are_complete(model64, images):
    att = explain_score(model64, images[:1], "integrated_gradients", "msp", n_steps=64)
    f = score_fn(model64, "msp")
    with torch.no_grad():
        gap = f(images[:1]) - f(torch.zeros_like(images[:1]))
    assert att.raw.sum().item() == pytest.approx(gap.item(), rel=2e-2, abs=1e-4)


def test_gradcam_refuses_a_double_backprop_score(model64, images):
    with pytest.raises(MethodError, match="Grad-CAM reads one layer's activations"):
        explain_score(model64, images[:1], "gradcam", "grad_l2")
    with pytest.raises(MethodError, match="guided_backprop"):
        explain_score(model64, images[:1], "guided_backprop", "energy")


@pytest.mark.parametrize("name", ["knn", "gaia_z"])
def test_a_non_differentiable_score_says_so(name, model64):
    runner = _runner(name, model64)
    with pytest.raises(GradvizError, match=rf"^{name}'s score is not a differentiable function of the input: "):
        score_fn(model64, runner)


def test_every_method_either_explains_or_says_why(model64):
    for info in list_methods():
        if info.input_form is None:
            with pytest.raises(GradvizError, match="not a differentiable function of the input: .+Explain the class"):
                score_fn(model64, info.name)


def test_unfitted_runner_is_refused(model64):
    with pytest.raises(MethodError, match="must be fitted"):
        score_fn(model64, "mahalanobis")


def test_explaining_leaves_no_grad_or_hook_on_the_shared_model(model64, images):
    f = score_fn(model64, "confounding")
    f(images[:1].clone().requires_grad_()).sum().backward()
    for p in model64.parameters():
        p.grad = None  # .backward() above may set them; explain_score must not
    explain_score(model64, images[:1], "saliency", "grad_l2")
    assert all(p.grad is None for p in model64.parameters())
    assert all(type(p) is torch.nn.Parameter for p in model64.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model64.modules())


def test_double_backprop_through_attention_matches_finite_differences():
    """A transformer (the bundled mnist-vit): fused attention kernels have no second derivative; the math one does."""
    from gradviz.models import load_model

    vit = load_model("mnist-vit").double()
    x = torch.rand(1, *vit.card.input_size, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    f = score_fn(vit, "grad_l2")
    xr = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(f(xr).sum(), xr)
    k = int(grad.abs().reshape(-1).argmax())
    idx = (0, 0, k // x.shape[-1], k % x.shape[-1])
    plus, minus = x.clone(), x.clone()
    plus[idx] += 1e-6
    minus[idx] -= 1e-6
    with torch.no_grad():
        fd = (f(plus) - f(minus)).item() / 2e-6
    assert fd == pytest.approx(grad[idx].item(), rel=1e-4)


def test_explainability_is_read_from_the_registrations():
    rows = {r["method"]: r for r in explainability()}
    assert set(rows) == {info.name for info in list_methods()}
    assert [n for n, r in rows.items() if r["explainable"]] == differentiable_methods()
    assert rows["energy"]["how"].startswith("directly")
    assert rows["mahalanobis"]["how"].endswith("(the fitted state held fixed)")
    assert rows["grad_l2"]["how"].startswith("by double backprop") and "Grad-CAM" in rows["grad_l2"]["how"]
    assert rows["odin"]["how"].startswith("through its input step")
    assert rows["knn"]["how"] == "not explainable: " + get_method("knn").not_differentiable
    # the route also decides what the score function offers: one pass (layer maps) unless double backprop
    assert score_fn_route("grad_l2") == ("double backprop", False) and score_fn_route("odin") == ("input step", True)


def score_fn_route(name: str) -> tuple[str, bool]:
    f = score_fn(random_model("mnist-cnn"), name)
    return f.route, f.layer_maps


def test_a_form_must_name_its_route():
    from gradviz.methods.registry import differentiable

    with pytest.raises(ValueError, match="route"):
        differentiable(lambda batch: batch.logits.sum(-1))
    with pytest.raises(ValueError, match="route"):
        differentiable(route="double backprop")


def test_attribution_passes_are_planned_for_what_they_explain(monkeypatch):
    from gradviz.runtime import budget

    kinds = []
    real = budget.plan_batch
    monkeypatch.setattr(budget, "plan_batch",
                        lambda model, kind, *a, **k: kinds.append(kind) or real(model, kind, *a, **k))
    model = random_model("mnist-cnn")
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    attribute(model, x, "saliency")
    explain_score(model, x, "saliency", "energy")
    assert kinds == ["backward", "backward"]
    whole = explain_score(model, x, "saliency", "grad_l2")
    assert kinds[-1] == "second_order"
    with budget.session_budget(80):  # ~6 MB per image + ~65 MB fixed: a few images per pass
        assert budget.plan_batch(model, "second_order", n=5).batch < 5
        chunked = explain_score(model, x, "saliency", "grad_l2")
    torch.testing.assert_close(chunked.maps, whole.maps, rtol=1e-4, atol=1e-7)
    cam = attribute(model, x, "gradcam")
    with budget.session_budget(68):
        assert budget.plan_batch(model, "backward", n=5).batch < 5
        torch.testing.assert_close(attribute(model, x, "gradcam").maps, cam.maps, rtol=1e-4, atol=1e-6)
