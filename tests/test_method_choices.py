"""Choices that change results: each is a registered parameter with its allowed values, and each
setting computes what it says, against a direct computation (sklearn's EmpiricalCovariance, a per-sample
autograd loop, a hand-written layer mixup)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from sklearn.covariance import EmpiricalCovariance
from torch import nn

from gradviz.errors import MethodError
from gradviz.methods import ModelOutputs, get_method, run_method
from gradviz.methods.registry import register
from gradviz.methods.vim import principal_dim
from gradviz.models import GradvizModel
from gradviz.models.card import ModelCard


@pytest.fixture
def data(tiny_model):
    g = torch.Generator().manual_seed(6)
    images, test = torch.rand(90, 1, 28, 28, generator=g), torch.rand(12, 1, 28, 28, generator=g)
    labels = tiny_model(images).argmax(-1).numpy()
    return tiny_model, images, labels, ModelOutputs.from_model(tiny_model, test)


def _fit(name, data, **params):
    model, images, labels, batch = data
    return get_method(name).create(**params).fit(model, images, labels)


# ------------------------------------------------------------------ the registry's choices mechanism

@pytest.mark.parametrize("name, param, bad", [("mahalanobis", "covariance", "shrunk"), ("exgrad", "norm", "l2"),
                                              ("vim", "rule", "paper"), ("confounding", "reading", "tanh"),
                                              ("gradient_density", "covariance", "oas")])
def test_a_choice_outside_its_list_is_refused_with_the_list(name, param, bad):
    info = get_method(name)
    assert info.defaults[param] in info.choices[param]
    with pytest.raises(MethodError, match=f"{param}.*must be one of .*{info.choices[param][-1]}"):
        info.create(**{param: bad})


def test_registration_refuses_a_default_outside_its_choices():
    with pytest.raises(ValueError, match="choices"):
        @register("bad_choice", title="t", paper="p", year=2024, formula="f", family="output", link="https://x",
                  intuition="i", choices={"mode": ("a", "b")})
        def bad_choice(batch, mode: str = "c"):
            return batch.logits[:, 0]


@pytest.mark.parametrize("name, param", [("mahalanobis", "covariance"), ("rmds", "covariance"),
                                         ("lowdim_grad", "covariance"), ("gradient_density", "covariance"),
                                         ("vim", "rule"), ("exgrad", "norm")])
def test_every_choice_is_stated_where_users_read_the_method(name, param):
    info = get_method(name)
    text = info.intuition + " " + info.reading
    assert f"`{param}`" in text and all(f"`{value}`" in text for value in info.choices[param])


# ------------------------------------------------------------------ covariance: Ledoit-Wolf vs empirical

def test_empirical_mahalanobis_equals_sklearn_empirical_covariance(data):
    model, images, labels, batch = data
    feats = model.logits_and_features(images)[1].double().numpy()
    h = batch.features.double().numpy()
    classes = np.unique(labels)
    means = np.stack([feats[labels == c].mean(0) for c in classes])
    est = EmpiricalCovariance(assume_centered=True).fit(feats - means[np.searchsorted(classes, labels)])
    want = np.min([est.mahalanobis(h - mu) for mu in means], axis=0)
    got = _fit("mahalanobis", data, covariance="empirical").score(batch).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4)
    lw = _fit("mahalanobis", data).score(batch).double().numpy()
    assert not np.allclose(lw, want, rtol=1e-2)  # the default (Ledoit-Wolf) is a different estimate


def test_empirical_rmds_and_lowdim_use_the_empirical_precision(data):
    model, images, labels, batch = data
    feats = model.logits_and_features(images)[1].double().numpy()
    runner = _fit("rmds", data, covariance="empirical")
    mean0 = feats.mean(0)
    np.testing.assert_allclose(runner.state.background_precision_.numpy(),
                               EmpiricalCovariance(assume_centered=True).fit(feats - mean0).precision_, rtol=1e-6)
    low = _fit("lowdim_grad", data, covariance="empirical", components=4)
    gamma = low.state.project(*model.logits_and_features(images)).numpy()
    classes = np.unique(labels)
    centred = gamma - np.stack([gamma[labels == c].mean(0) for c in classes])[np.searchsorted(classes, labels)]
    np.testing.assert_allclose(low.state.precision_.numpy(),
                               EmpiricalCovariance(assume_centered=True).fit(centred).precision_, rtol=1e-6)


def test_empirical_gradient_density_is_the_maximum_likelihood_gaussian(data):
    from scipy.stats import multivariate_normal

    from gradviz.methods.gradient_density import log_layer_norms

    model, images, labels, batch = data
    runner = _fit("gradient_density", data, covariance="empirical")
    v_fit = log_layer_norms(ModelOutputs.from_model(model, images)).numpy()
    gauss = multivariate_normal(v_fit.mean(0), np.cov(v_fit, rowvar=False, bias=True))
    want = -gauss.logpdf(log_layer_norms(batch).numpy())
    np.testing.assert_allclose(runner.score(batch).double().numpy(), want, rtol=1e-4)



def test_ledoit_wolf_precision_is_scikit_learn_s_and_falls_back_to_its_pseudo_inverse_where_cholesky_would_differ():
    from scipy.linalg import pinvh
    from sklearn.covariance import LedoitWolf

    from gradviz.methods._fitting import inverse_pd, precision_of

    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 200)) * rng.uniform(0.01, 10.0, 200)  # fewer rows than features, as on ResNets
    x[:, :5] = 0.0  # dead features
    x -= x.mean(0)
    want = LedoitWolf(assume_centered=True).fit(x).precision_
    np.testing.assert_allclose(precision_of(x, "ledoit-wolf"), want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    # Cholesky succeeds on diag(1, 1e-20) and gives 1e20; pinvh cuts the eigenvalue below D·ε·max: the guard keeps
    # pinvh's answer there, on a singular matrix (Cholesky fails) and on an indefinite one
    for a in (np.diag([1.0, 1e-20]), np.ones((3, 3)), np.array([[1.0, 2.0], [2.0, 1.0]])):
        np.testing.assert_allclose(inverse_pd(a), pinvh(a), atol=1e-12)


# ------------------------------------------------------------------ ViM's principal dimension

@pytest.mark.parametrize("d, rule, want", [(64, "auto", 32), (64, "half", 32), (64, "benchmark", 63),
                                           (768, "auto", 512), (768, "half", 384), (2048, "benchmark", 1000),
                                           (2048, "auto", 1000), (1024, "benchmark", 512), (300, "benchmark", 299)])
def test_vim_principal_dimension_rules(d, rule, want):
    assert principal_dim(d, rule) == want


def test_vim_rule_sets_the_subspace_it_names(data):
    _, _, _, batch = data
    bench, explicit = _fit("vim", data, rule="benchmark"), _fit("vim", data, dim=63)
    assert bench.state.residual_basis_.shape[1] == 64 - 63
    torch.testing.assert_close(bench.score(batch), explicit.score(batch))
    assert not torch.allclose(bench.score(batch), _fit("vim", data, rule="half").score(batch))


# ------------------------------------------------------------------ kNN: k as a share of the fit set

@pytest.mark.parametrize("fraction, k", [(0.1, 9), (0.001, 1), (1.0, 90)])
def test_knn_fraction_resolves_to_that_share_of_the_fit_set(data, fraction, k):
    _, _, _, batch = data
    runner = _fit("knn", data, k_fraction=fraction)
    assert runner.state.k_ == k
    torch.testing.assert_close(runner.score(batch), _fit("knn", data, k=k).score(batch))


def test_knn_fraction_is_bounded():
    with pytest.raises(MethodError, match="k_fraction.*from 0 to 1"):
        get_method("knn").create(k_fraction=1.5)


# ------------------------------------------------------------------ ExGrad's norm

def test_exgrad_l2sq_matches_autograd_expected_squared_norm_of_weight_and_bias(data):
    model, _, _, batch = data
    w0, b0 = model.head.weight.detach().double(), model.head.bias.detach().double()
    want = []
    for h, z in zip(batch.features.double(), batch.logits.double()):
        p, total = z.softmax(-1), 0.0
        for y in range(p.numel()):  # E_{y~p} ‖∇[W|b] log p_y‖², one backward per label
            w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
            gw, gb = torch.autograd.grad((w @ h + b).log_softmax(-1)[y], [w, b])
            total += p[y] * (gw.square().sum() + gb.square().sum())
        want.append(total)
    got = run_method("exgrad", batch, norm="l2sq").double()
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-4, atol=1e-8)
    assert not torch.allclose(got, run_method("exgrad", batch).double(), rtol=1e-2)


# ------------------------------------------------------------------ GROOD: input vs intermediate-layer mixup

def test_grood_layer_mixup_matches_a_hand_written_mix_of_layer2(data):
    model, images, labels, batch = data
    net = model.net
    with torch.no_grad():
        x = model.normalize(images)
        a = net.layer2(net.layer1(net.stem(x)))  # (N, 32, 14, 14)
        logits = net(x)
        classes = np.unique(labels)
        means = torch.stack([a[torch.from_numpy(labels == c)].mean(0) for c in classes])
        runner_up = logits.topk(2, dim=1).indices[:, 1].numpy()
        keep = np.isin(runner_up, classes)
        partner = torch.from_numpy(np.searchsorted(classes, runner_up[keep]))
        mixed = 0.5 * a[torch.from_numpy(keep)] + 0.5 * means[partner]
        want = net.flatten(net.pool(net.layer3(mixed))).mean(0)
    runner = _fit("grood", data, mixup_layer="layer2")
    torch.testing.assert_close(runner.state.ood_prototype_, want, rtol=1e-4, atol=1e-5)
    default = _fit("grood", data).state  # "auto", the paper's layer mixup, picks layer2 on mnist-cnn
    assert default.mixed_layer_ == "layer2"
    torch.testing.assert_close(default.ood_prototype_, want, rtol=1e-4, atol=1e-5)
    input_mix = _fit("grood", data, mixup_layer="input").state
    assert not torch.allclose(runner.state.ood_prototype_, input_mix.ood_prototype_, rtol=1e-2)
    assert not any(m._forward_hooks for m in model.modules())  # the mixing hook is gone



def test_grood_class_means_pass_ends_at_the_mixed_layer(data):
    """The first of layer mixup's two passes only reads the layer's output: what runs after it runs once per
    image (the mixed pass), not twice."""
    from gradviz.methods.grood import layer_mixup_features

    model, images, labels, _ = data
    rows = {"layer2": 0, "layer3": 0}
    handles = [getattr(model.net, name).register_forward_hook(
        lambda _m, _i, out, name=name: rows.__setitem__(name, rows[name] + out.shape[0])) for name in rows]
    classes = np.unique(labels)
    try:
        feats = layer_mixup_features(model, "layer2", images, labels, classes, torch.zeros(len(images), dtype=int),
                                     0.5, chunk=32)
    finally:
        for handle in handles:
            handle.remove()
    assert feats.shape[0] == len(images)
    assert rows["layer2"] - rows["layer3"] == len(images)  # (the planner's probe forward runs through both)
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("build, input_size, want", [
    (lambda: torchvision.models.resnet18(num_classes=3), (3, 32, 32), "layer2"),
    (lambda: torchvision.models.VisionTransformer(32, 8, 4, 2, 16, 32, num_classes=3), (3, 32, 32),
     "encoder.layers.encoder_layer_1"),
    (lambda: torchvision.models.VisionTransformer(32, 8, 5, 2, 16, 32, num_classes=3), (3, 32, 32),
     "encoder.layers.encoder_layer_2"),
])
def test_grood_auto_mixup_layer_is_the_block_before_the_middle(build, input_size, want):
    from gradviz.methods.grood import auto_mixup_layer

    torch.manual_seed(0)
    card = ModelCard("m", "m", input_size, (0.5,) * 3, (0.25,) * 3, ["a", "b", "c"])
    model = GradvizModel(build().eval(), card)
    assert auto_mixup_layer(model) == want
    assert not any(m._forward_hooks for m in model.modules())


def test_grood_auto_mixup_layer_of_a_plain_sequence_and_of_a_model_without_one():
    from gradviz.methods.grood import auto_mixup_layer

    torch.manual_seed(0)
    card = ModelCard("flat", "flat", (1, 8, 8), (0.5,), (0.25,), ["a", "b", "c"])
    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    assert auto_mixup_layer(GradvizModel(seq, card)) == "2"  # layers 0..4 (the head left out): the middle one
    model = GradvizModel(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), card)
    with pytest.raises(MethodError, match="'auto' found no intermediate layer.*'input' or a module name"):
        get_method("grood").create().fit(model, torch.rand(30, 1, 8, 8), np.arange(30) % 3)
    assert get_method("grood").create(mixup_layer="input").fit(model, torch.rand(30, 1, 8, 8), np.arange(30) % 3)


def test_grood_layer_mixup_refuses_an_unknown_or_reused_module(data):
    with pytest.raises(MethodError, match="'layer9' is not a module.*layer2"):
        _fit("grood", data, mixup_layer="layer9")

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.fc = nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.act(self.act(self.conv(x))).mean((2, 3)))

    torch.manual_seed(0)
    card = ModelCard("twice", "twice", (1, 8, 8), (0.5,), (0.25,), ["a", "b", "c"])
    model = GradvizModel(Twice(), card)
    images = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(MethodError, match="'act' runs 2 times per forward"):
        get_method("grood").create(mixup_layer="act").fit(model, images, np.arange(30) % 3)
    assert not model.net.act._forward_hooks


def test_metrics_footnote_states_each_setting_against_the_paper():
    from gradviz.methods.registry import adaptation_notes

    notes = adaptation_notes(["msp", "mahalanobis", "grood", "vim"], {"vim": {"rule": "benchmark"}})
    assert notes == ["`mahalanobis` covariance = ledoit-wolf (paper: empirical)",
                     "`grood` mixup_layer = auto (as the paper)",
                     "`vim` rule = benchmark (as the paper)"]
