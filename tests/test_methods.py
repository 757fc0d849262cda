"""Each method against a hand or per-sample autograd computation (the reference loops live only here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradviz.errors import MethodError
from gradviz.methods import ModelOutputs, get_method, run_method
from gradviz.methods.gaia import gaia_abnormality_map
from gradviz.methods.mahalanobis import Mahalanobis
from gradviz.methods.odin import odin_perturb
from gradviz.models import GradvizModel
from gradviz.models.card import ModelCard
from gradviz.models.zoo import random_model


def _no_hooks_or_grads(model: nn.Module) -> bool:
    for m in model.modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None):
            return False
    return all(p.grad is None and p.requires_grad for p in model.parameters())


@pytest.fixture
def x8() -> torch.Tensor:
    return torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- output baselines and gradnorm

def _outputs(logits) -> ModelOutputs:
    logits = torch.tensor(logits, dtype=torch.float32)
    return ModelOutputs(model=None, x=torch.zeros(len(logits), 1), logits=logits, features=torch.ones(len(logits), 4))


def test_output_baselines_known_values():
    b = _outputs([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    e2 = math.exp(2.0)
    torch.testing.assert_close(run_method("msp", b), torch.tensor([-e2 / (e2 + 2), -1 / 3]))
    torch.testing.assert_close(run_method("maxlogit", b), torch.tensor([-2.0, 0.0]))
    torch.testing.assert_close(run_method("energy", b), torch.tensor([-math.log(e2 + 2), -math.log(3.0)]))
    p = torch.tensor([e2, 1.0, 1.0]) / (e2 + 2)
    torch.testing.assert_close(run_method("entropy", b), torch.tensor([float(-(p * p.log()).sum()), math.log(3.0)]))
    # temperature 2 on msp: softmax([1, 0, 0])
    torch.testing.assert_close(run_method("msp", b, temperature=2.0)[:1], torch.tensor([-math.e / (math.e + 2)]))


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_gradnorm_matches_autograd_of_kl_wrt_head_weight(tiny_model, x8, temperature):
    batch = ModelOutputs.from_model(tiny_model, x8)
    head = tiny_model.head
    ref = []
    for h in batch.features:  # reference: one backward per sample
        W = head.weight.detach().clone().requires_grad_(True)
        z = (W @ h + head.bias.detach()) / temperature
        u = torch.full_like(z, 1.0 / z.numel())
        kl = (u * (u.log() - z.log_softmax(-1))).sum()
        (g,) = torch.autograd.grad(kl, W)
        ref.append(-g.abs().sum())
    torch.testing.assert_close(run_method("gradnorm", batch, temperature=temperature), torch.stack(ref), rtol=1e-5,
                               atol=1e-7)


# ---------------------------------------------------------------- ODIN

@pytest.mark.parametrize("temperature,epsilon", [(1000.0, 0.0014), (1.0, 0.05)])
def test_odin_matches_per_sample_loop(tiny_model, x8, temperature, epsilon):
    ref_x, ref_s = [], []
    for xi in x8:  # reference: one backward per sample
        xi = xi[None].clone().requires_grad_(True)
        z = tiny_model(xi) / temperature
        loss = F.cross_entropy(z, z.argmax(-1))
        (g,) = torch.autograd.grad(loss, xi)
        xt = (xi - epsilon * g.sign()).detach()
        ref_x.append(xt)
        with torch.no_grad():
            ref_s.append(-(tiny_model(xt) / temperature).softmax(-1).amax())
    torch.testing.assert_close(odin_perturb(tiny_model, x8, temperature, epsilon), torch.cat(ref_x))
    batch = ModelOutputs.from_model(tiny_model, x8)
    got = run_method("odin", batch, temperature=temperature, epsilon=epsilon)
    torch.testing.assert_close(got, torch.stack(ref_s), rtol=1e-5, atol=1e-7)
    assert _no_hooks_or_grads(tiny_model)


def test_odin_perturbation_raises_confidence_and_rejects_bad_params(tiny_model, x8):
    batch = ModelOutputs.from_model(tiny_model, x8)
    plain = run_method("odin", batch, epsilon=0.0)
    perturbed = run_method("odin", batch, epsilon=0.01)
    assert (perturbed < plain).float().mean() >= 0.75  # x̃ moves towards higher softmax = lower uncertainty
    with pytest.raises(MethodError):
        run_method("odin", batch, temperature=0.0)
    with pytest.raises(MethodError):
        run_method("odin", batch, epsilon=-1.0)


# ---------------------------------------------------------------- Mahalanobis

def test_mahalanobis_matches_numpy_formula(tiny_model):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(160, 1, 28, 28, generator=g)
    labels = np.arange(160) % 3
    test = torch.rand(6, 1, 28, 28, generator=g)
    det = get_method("mahalanobis").create(covariance="empirical", chunk=128).fit(tiny_model, images, labels)
    got = det.score(ModelOutputs.from_model(tiny_model, test)).double()

    _, feats = tiny_model.logits_and_features(images)
    f = feats.double().numpy()
    means = np.stack([f[labels == c].mean(0) for c in range(3)])
    centred = f - means[labels]
    prec = np.linalg.inv(centred.T @ centred / len(f))
    _, ht = tiny_model.logits_and_features(test)
    d = ht.double().numpy()[:, None, :] - means[None]  # (B, C, D)
    ref = np.einsum("bcd,de,bce->bc", d, prec, d).min(1)
    np.testing.assert_allclose(got.numpy(), ref, rtol=2e-4)


def test_mahalanobis_ledoit_wolf_uses_sklearn_precision_and_survives_few_samples(tiny_model):
    from sklearn.covariance import LedoitWolf

    g = torch.Generator().manual_seed(2)
    images, labels = torch.rand(20, 1, 28, 28, generator=g), np.arange(20) % 2  # N < D = 64
    det = Mahalanobis().fit(tiny_model, images, labels)
    _, f = tiny_model.logits_and_features(images)
    f = f.double().numpy()
    centred = f - np.stack([f[labels == c].mean(0) for c in range(2)])[labels]
    np.testing.assert_allclose(det.precision_.numpy(), LedoitWolf(assume_centered=True).fit(centred).precision_,
                               rtol=1e-6)
    assert torch.isfinite(det.score(ModelOutputs.from_model(tiny_model, images[:4]))).all()


def test_mahalanobis_rejects_bad_use(tiny_model, x8):
    batch = ModelOutputs.from_model(tiny_model, x8)
    with pytest.raises(MethodError, match="fitted"):
        get_method("mahalanobis").create().score(batch)
    with pytest.raises(MethodError):
        Mahalanobis(covariance="shrunk")
    with pytest.raises(MethodError):
        Mahalanobis().fit(tiny_model, x8, np.zeros(3, dtype=int))
    with pytest.raises(MethodError):
        Mahalanobis().fit(tiny_model, x8, -np.ones(8, dtype=int))


# ---------------------------------------------------------------- GAIA

class _TinyBNNet(nn.Module):
    """conv-BN-ReLU ×3 at 8², 4², 2² then GAP + linear: BN outputs are easy to reach by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 4, 3, 1, 1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 6, 3, 2, 1), nn.BatchNorm2d(6)
        self.c3, self.b3 = nn.Conv2d(6, 5, 3, 2, 1), nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 3)

    def stages(self, x):
        a1 = self.b1(self.c1(x))
        a2 = self.b2(self.c2(a1.relu()))
        a3 = self.b3(self.c3(a2.relu()))
        return a1, a2, a3

    def forward(self, x):
        a3 = self.stages(x)[-1]
        return self.fc(a3.relu().mean((2, 3)))


@pytest.fixture
def tiny_bn_model() -> GradvizModel:
    torch.manual_seed(3)
    net = _TinyBNNet()
    for bn in (net.b1, net.b2, net.b3):  # non-trivial eval statistics
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.3, 0.3)
    card = ModelCard(name="tiny", architecture="tiny", input_size=(1, 8, 8), mean=(0.5,), std=(0.25,),
                     class_names=["a", "b", "c"])
    return GradvizModel(net, card)


def _gaia_reference(model: GradvizModel, x: torch.Tensor):
    """Per-sample autograd: (GAIA-Z over b1..b3, GAIA-A over b2, b3 with o from autograd at the last map)."""
    net = model.net
    z_scores, a_scores = [], []
    for xi in x:
        maps = net.stages(model.normalize(xi[None]))
        last = maps[-1].relu()
        h = last.mean((2, 3))
        logits = net.fc(h)
        grads = torch.autograd.grad(logits.max(), maps, retain_graph=True)
        r = torch.cat([(g != 0).float().mean((2, 3)) for g in grads], 1)
        z_scores.append(r.pow(2).mean())
        ga = torch.autograd.grad(h.sum(), maps[1:], retain_graph=True)
        a = torch.cat([g.mean((2, 3)) for g in ga], 1)
        (g_last,) = torch.autograd.grad(logits.log_softmax(-1).sum(), last)
        o = g_last.mean((2, 3)).abs().mean().sqrt()
        a_scores.append((a.abs() / o).pow(2).mean())
    return torch.stack(z_scores), torch.stack(a_scores)


def test_gaia_z_and_a_match_per_sample_autograd(tiny_bn_model):
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    ref_z, ref_a = _gaia_reference(tiny_bn_model, x)
    batch = ModelOutputs.from_model(tiny_bn_model, x)
    torch.testing.assert_close(run_method("gaia_z", batch), ref_z.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(run_method("gaia_a", batch), ref_a.detach(), rtol=1e-4, atol=1e-7)
    assert _no_hooks_or_grads(tiny_bn_model)


def test_gaia_a_auto_layers_are_last_two_spatial_sizes(tiny_bn_model):
    x = torch.rand(2, 1, 8, 8)
    assert list(gaia_abnormality_map(tiny_bn_model, x, "a")) == ["b2", "b3"]
    assert list(gaia_abnormality_map(tiny_bn_model, x, "z")) == ["b1", "b2", "b3"]
    assert list(gaia_abnormality_map(tiny_bn_model, x, "z", layers="b3, net.b1")) == ["b1", "b3"]


def test_gaia_abnormality_map_mean_square_equals_score(tiny_model, x8):
    batch = ModelOutputs.from_model(tiny_model, x8)
    for variant in ("z", "a"):
        maps = gaia_abnormality_map(tiny_model, x8, variant)
        assert all(v.shape == (8, tiny_model.net.get_submodule(k).num_features) for k, v in maps.items())
        torch.testing.assert_close(torch.cat(list(maps.values()), 1).pow(2).mean(1),
                                   run_method(f"gaia_{variant}", batch))
    assert _no_hooks_or_grads(tiny_model)


def test_gaia_identical_with_inplace_and_out_of_place_relu_resnet18():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    inplace = random_model("resnet18", num_classes=10, input_size=(3, 32, 32), seed=0)
    plain = random_model("resnet18", num_classes=10, input_size=(3, 32, 32), seed=0)
    for m in plain.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in inplace.modules())
    for variant in ("z", "a"):
        a = gaia_abnormality_map(inplace, x, variant)
        b = gaia_abnormality_map(plain, x, variant)
        assert list(a) == list(b)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    # the gradient at a BN output followed by a ReLU is masked by that ReLU: many zeros
    r = gaia_abnormality_map(inplace, x, "z")["layer1.0.bn1"]
    assert r.mean() < 0.9
    assert _no_hooks_or_grads(inplace)


def test_gaia_errors_are_clear(tiny_model, x8):
    batch = ModelOutputs.from_model(tiny_model, x8)
    with pytest.raises(MethodError, match="unknown layer"):
        run_method("gaia_z", batch, layers="nope")
    with pytest.raises(MethodError, match="feature map"):
        run_method("gaia_z", batch, layers="fc")
    with pytest.raises(MethodError):
        gaia_abnormality_map(tiny_model, x8, "q")
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    card = ModelCard(name="nobn", architecture="nobn", input_size=(1, 8, 8), mean=(0.5,), std=(0.25,),
                     class_names=["a", "b"])
    no_bn = GradvizModel(net, card)
    with pytest.raises(MethodError, match="BatchNorm"):
        run_method("gaia_z", ModelOutputs.from_model(no_bn, torch.rand(2, 1, 8, 8)))
    assert _no_hooks_or_grads(tiny_model)
