"""confounding and grad_* scores: registered, and equal to a per-sample autograd computation."""

from __future__ import annotations

import copy
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F

from gradviz.errors import MethodError
from gradviz.methods import get_method, run_method
from gradviz.methods.registry import ModelOutputs
from gradviz.models.zoo import random_model


@lru_cache(maxsize=None)
def _model():
    model = random_model("mnist-cnn", 10, (1, 28, 28), seed=3)
    g = torch.Generator().manual_seed(4)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def _x(n=4, seed=0):
    return torch.rand((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))


def _per_sample_grads(model, x, loss_fn, only=None) -> list[torch.Tensor]:
    """One float64 backward per sample: the gradient of all (or ``only``'s) parameters as one vector."""
    net = copy.deepcopy(model.net).double()
    mods = dict(net.named_modules())
    params = list(mods[only].parameters()) if only else list(net.parameters())
    out = []
    for b in range(x.shape[0]):
        z = net((x[b:b + 1].double() - model.mean.double()) / model.std.double())[0]
        out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_fn(z), params)]))
    return out


def _close(got, want, rtol=1e-4):
    want = torch.as_tensor(want, dtype=torch.float64)
    assert torch.allclose(got.double(), want, rtol=rtol, atol=1e-7 * want.abs().max()), (got, want)


@pytest.mark.parametrize("reading, loss_fn", [
    ("sigmoid", lambda z: F.softplus(-z).sum()),      # BCE(σ(z), 1) = -Σ log σ(z_c)
    ("softmax", lambda z: -z.log_softmax(-1).sum()),  # -Σ log p_c
])
def test_confounding_matches_autograd(reading, loss_fn):
    model, x = _model(), _x()
    batch = ModelOutputs.from_model(model, x)
    score = run_method("confounding", batch, reading=reading)
    want = [g.square().sum() for g in _per_sample_grads(model, x, loss_fn)]
    _close(score, want)


NLL_PRED = lambda z: -z.log_softmax(-1)[z.argmax()]  # noqa: E731
REDUCE = {
    "grad_l1": lambda v: v.abs().sum(), "grad_l2": lambda v: v.norm(), "grad_max": lambda v: v.max(),
    "grad_min": lambda v: -v.min(), "grad_std": lambda v: v.std(unbiased=False),
}


@pytest.mark.parametrize("layer", ["all", "last", "layer2.conv1", "layer3.bn2"])
def test_grad_scores_match_autograd(layer):
    model, x = _model(), _x(seed=1)
    batch = ModelOutputs.from_model(model, x)
    only = {"all": None, "last": "fc"}.get(layer, layer)
    grads = _per_sample_grads(model, x, NLL_PRED, only=only)
    for name, reduce in REDUCE.items():
        _close(run_method(name, batch, layer=layer), [reduce(g) for g in grads])


def test_grad_scores_share_one_engine_pass(monkeypatch):
    from gradviz.engine import GradientPass

    calls = []
    real = GradientPass.layer_stats
    monkeypatch.setattr(GradientPass, "layer_stats", lambda self, **k: calls.append(k) or real(self, **k))
    batch = ModelOutputs.from_model(_model(), _x(3))
    for name in REDUCE:
        run_method(name, batch)
        run_method(name, batch, layer="last")  # read from the full table already there
    assert len(calls) == 1


def test_gradient_methods_of_a_batch_share_one_forward():
    """keep_graph: the logits, every gradient method's backward and ODIN's and PRO's input gradients all come
    from ONE hooked forward; only ODIN's perturbed input and PRO's step need a forward of their own."""
    from gradviz.methods import list_methods

    from gradviz.engine.folding import twin_of

    model, x = _model(), _x(4)
    runs = []
    twin = twin_of(model.net)  # the shared pass runs on the BatchNorm-folded twin of the network
    assert twin is not None
    handles = [net.register_forward_hook(lambda *_: runs.append(1)) for net in (model.net, twin.net)]
    try:
        batch = ModelOutputs.from_model(model, x, keep_graph=True)
        for info in list_methods():
            if not info.needs_fit:
                run_method(info.name, batch)
    finally:
        for handle in handles:
            handle.remove()
    assert len(runs) == 3  # the shared pass + ODIN's x̃ + PRO's x₁
    plain = ModelOutputs.from_model(model, x)
    for name in ("gaia_z", "gaia_a", "confounding", "odin", "pro", "grad_l2", "msp"):
        _close(run_method(name, batch), run_method(name, plain))


def test_methods_registered_with_paper_and_params():
    conf = get_method("confounding")
    assert conf.family == "gradient" and conf.year == 2020 and conf.defaults == {"reading": "sigmoid"}
    for name in REDUCE:
        info = get_method(name)
        assert info.family == "gradient" and "Oberdiek" in info.paper and info.defaults == {"layer": "all"}


def test_bad_parameters_raise_method_error():
    batch = ModelOutputs.from_model(_model(), _x(2))
    with pytest.raises(MethodError, match="reading"):
        run_method("confounding", batch, reading="tanh")
    with pytest.raises(MethodError, match="unknown layer"):
        run_method("grad_l2", batch, layer="conv99")


def test_closed_form_methods_keep_no_graph():
    """gradnorm and grad_* layer='last' read logits and features only: no hooked forward is kept."""
    from gradviz.methods import get_method
    from gradviz.methods.registry import needs_graph

    assert not needs_graph([get_method("gradnorm").create(), get_method("msp").create(),
                            get_method("grad_l2").create(layer="last")])
    assert needs_graph([get_method("gradnorm").create(), get_method("grad_l2").create()])
    assert needs_graph([get_method("odin").create()]) and needs_graph([get_method("gaia_z").create()])
    batch = ModelOutputs.from_model(_model(), _x(2))
    run_method("gradnorm", batch)
    run_method("grad_max", batch, layer="last")
    assert "gradient_pass" not in batch.cache
