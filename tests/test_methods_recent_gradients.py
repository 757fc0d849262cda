"""ExGrad (+ the last-layer decomposition), GradOrth, low-dimensional gradients, GROOD and the layerwise
gradient-norm density, each against a direct per-sample autograd implementation (one backward per sample
here, never in gradviz)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradviz.errors import MethodError
from gradviz.methods import ModelOutputs, get_method, run_method
from gradviz.methods.exgrad import LAST_LAYER_SCORES, last_layer_factors


@pytest.fixture
def data(tiny_model):
    g = torch.Generator().manual_seed(6)
    images, test = torch.rand(90, 1, 28, 28, generator=g), torch.rand(6, 1, 28, 28, generator=g)
    labels = tiny_model(images).argmax(-1).numpy()  # the model's own predictions: every class seen is predicted
    return tiny_model, images, labels, ModelOutputs.from_model(tiny_model, test)


def _head_grad(model, h: torch.Tensor, loss_of_logits) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂loss/∂W, ∂loss/∂b) of the head for ONE feature vector, by autograd (float64)."""
    w = model.head.weight.detach().double().clone().requires_grad_(True)
    b = model.head.bias.detach().double().clone().requires_grad_(True)
    return torch.autograd.grad(loss_of_logits(w @ h.double() + b), [w, b])


def test_exgrad_matches_per_sample_expectation_over_labels(data):
    model, _, _, batch = data
    want = []
    for h in batch.features:
        p = (model.head.weight.double() @ h.double() + model.head.bias.double()).softmax(-1).detach()
        total = 0.0
        for y in range(p.numel()):  # E_{y~p} ‖∇W log p_y‖₁, one backward per label
            gw, _ = _head_grad(model, h, lambda z, y=y: z.log_softmax(-1)[y])
            total += p[y] * gw.abs().sum()
        want.append(total)
    torch.testing.assert_close(run_method("exgrad", batch).double(), torch.stack(want), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(LAST_LAYER_SCORES))
def test_last_layer_scores_are_exactly_feature_times_output_factor(data, name):
    _, _, _, batch = data
    f = LAST_LAYER_SCORES[name]
    parts = last_layer_factors(batch)
    assert (parts[f.feature] >= 0).all() and (parts[f.output] >= 0).all()
    torch.testing.assert_close(run_method(name, batch, **f.params), f.sign * parts[f.feature] * parts[f.output],
                               rtol=1e-4, atol=1e-6)


def test_gradorth_matches_per_sample_projected_autograd(data):
    model, images, labels, batch = data
    feats = model.logits_and_features(images)[1].double()
    u, s, _ = torch.linalg.svd(feats.T, full_matrices=False)
    energy = (s.square().cumsum(0) / s.square().sum()).numpy()
    k = int(np.argmax(energy >= 0.9) + 1)
    proj = u[:, :k] @ u[:, :k].T  # (D, D) projector on the important subspace
    want = []
    for h in batch.features:
        gw, _ = _head_grad(model, h, lambda z: (-(z.log_softmax(-1)).mean()))  # KL(u‖softmax) up to a constant
        want.append(-(gw @ proj).norm())
    got = get_method("gradorth").create(energy=0.9).fit(model, images, labels).score(batch)
    torch.testing.assert_close(got.double(), torch.stack(want), rtol=1e-4, atol=1e-6)


def test_lowdim_gradient_matches_per_sample_autograd_pca_and_mahalanobis(data):
    model, images, labels, batch = data

    def grads(x):  # per-sample ∇[W | b] logsumexp(z), one backward each
        out = []
        for h in model.logits_and_features(x)[1]:
            gw, gb = _head_grad(model, h, lambda z: torch.logsumexp(z, -1))
            out.append(torch.cat([gw.reshape(-1), gb]).numpy())
        return np.stack(out)

    fit_g, test_g = grads(images), grads(batch.x)
    mean, std = fit_g.mean(0), fit_g.std(0)
    std[std <= 1e-12 * std.max()] = 1.0
    _, _, vt = np.linalg.svd((fit_g - mean) / std, full_matrices=False)
    v = vt[:5].T
    gam_fit, gam_test = (fit_g - mean) / std @ v, (test_g - mean) / std @ v
    classes = np.unique(labels)
    means = np.stack([gam_fit[labels == c].mean(0) for c in classes])
    prec = np.linalg.pinv(np.cov((gam_fit - means[np.searchsorted(classes, labels)]).T, bias=True))
    want = [min((g - m) @ prec @ (g - m) for m in means) for g in gam_test]
    det = get_method("lowdim_grad").create(components=5, covariance="empirical").fit(model, images, labels)
    np.testing.assert_allclose(det.score(batch).numpy(), want, rtol=2e-3, atol=1e-3)
    # a subset fit (max_entries) still projects with the same bilinear form
    small = get_method("lowdim_grad").create(components=5, max_entries=40 * 650).fit(model, images, labels)
    assert torch.isfinite(small.score(batch)).all()


def test_grood_gradient_matches_autograd_and_scores_nearest_reference(data):
    model, images, labels, batch = data
    det = get_method("grood").create(k=2).fit(model, images, labels).state
    protos, ood = det.prototypes_.double(), det.ood_prototype_.double()
    feats = model.logits_and_features(images)[1].double()
    classes = np.unique(labels)
    torch.testing.assert_close(protos, torch.stack([feats[labels == c].mean(0) for c in classes]), rtol=1e-5, atol=1e-6)

    def grad_wrt_ood(h, pred):  # one backward per sample: CE of the nearest-prototype logits w.r.t. o
        o = ood.clone().requires_grad_(True)
        s = -torch.cat([protos, o[None]]).sub(h.double()).norm(dim=-1)
        return torch.autograd.grad(F.cross_entropy(s[None], torch.tensor([pred])), o)[0]

    pred_of = {int(c): i for i, c in enumerate(classes)}
    test_h, test_z = batch.features, batch.logits
    got = det.gradients(test_h).double()
    for h, z, g in zip(test_h, test_z, got):
        torch.testing.assert_close(g, grad_wrt_ood(h, pred_of.get(int(z.argmax()), 0)), rtol=1e-4, atol=1e-7)
    correct = labels == model(images).argmax(-1).numpy()
    bank = torch.stack([grad_wrt_ood(h, pred_of[int(c)]) for h, c in zip(feats[correct], labels[correct])]).numpy()
    want = [np.sort(np.linalg.norm(bank - g.numpy(), axis=1))[1] for g in got]
    np.testing.assert_allclose(det.score(batch).numpy(), want, rtol=1e-4, atol=1e-6)


def test_grood_rejects_bad_parameters():
    with pytest.raises(MethodError, match="mixup"):
        get_method("grood").impl(mixup=1.0)


def test_gradient_density_matches_per_sample_layer_norms_and_gaussian(data):
    from scipy.stats import multivariate_normal
    from sklearn.covariance import LedoitWolf

    from gradviz.engine import parametrised_layers

    model, images, labels, batch = data
    net = copy.deepcopy(model.net).double()
    layers = [(n, list(m.parameters(recurse=False))) for n, m in parametrised_layers(net)]

    def log_norms(x):  # one float64 backward per sample, ‖∇θ_l (−log p_ŷ)‖² per layer
        rows = []
        for xb in x:
            z = net(((xb[None].double() - model.mean.double()) / model.std.double()))[0]
            loss = -z.log_softmax(-1)[z.argmax()]
            g = torch.autograd.grad(loss, [p for _, ps in layers for p in ps])
            it, row = iter(g), []
            for _, ps in layers:
                row.append(sum(next(it).square().sum() for _ in ps))
            rows.append(torch.stack(row).clamp_min(torch.finfo(torch.float32).tiny).log())
        return torch.stack(rows).detach().numpy()

    fit_v, test_v = log_norms(images[:40]), log_norms(batch.x)
    lw = LedoitWolf().fit(fit_v)
    want = -multivariate_normal(fit_v.mean(0), lw.covariance_).logpdf(test_v)
    det = get_method("gradient_density").create(fit_samples=40).fit(model, images[:40], labels[:40])
    np.testing.assert_allclose(det.score(batch).numpy(), want, rtol=1e-3, atol=1e-3)


def test_gradient_density_fit_reads_the_scale_off_its_gradient_pass_s_forward(data, monkeypatch):
    """One forward per fit image: the logits that set the norms' scale come from the captured forward the
    gradient pass runs anyway, not from a second no-grad forward."""
    import gradviz.methods.gradient_density as gd

    model, images, labels, _ = data
    seen = {"pass": 0, "no_grad": 0}
    plain_forward, plain_pass = type(model).forward, gd.GradientPass

    def forward(self, x):
        if not torch.is_grad_enabled():
            seen["no_grad"] += int(x.shape[0])
        return plain_forward(self, x)

    def gradient_pass(net, x, *args, **kwargs):
        seen["pass"] += int(x.shape[0])
        return plain_pass(net, x, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", forward)
    monkeypatch.setattr(gd, "GradientPass", gradient_pass)
    gd.GradientDensity(fit_samples=30).fit(model, images, labels)
    assert seen["pass"] == 30
    assert seen["no_grad"] <= 1  # at most the memory planner's one-image probe (30 more before)
