"""Scores stay exact where the softmax saturates: a tiny CNN whose logit gap is 34 to 52, so 1 − p_ŷ is 1e-22 to
3e-15 and p_ŷ rounds to 1 in float32 (and in float64 for most inputs), against float64 references written with
cancellation-free formulas (1 − p_ŷ = Σ_{c≠ŷ} p_c through logsumexp). Each method's float32 score must rank the
inputs as the reference does (Spearman ≥ 0.99) and agree with it to a small relative error; none may collapse to one
value (ExGrad's old 2(1 − Σp²) was exactly 0 for all of them)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from gradviz.methods import ModelOutputs, get_method
from gradviz.models import GradvizModel
from gradviz.models.card import ModelCard

RTOL = 1e-3  # the engine's float32 per-sample statistics are within 4e-4 of float64 on saturated inputs


@pytest.fixture(scope="module")
def saturated():
    """(model, test batch, fit images, fit labels, float64 reference outputs of the test images)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 1.5)
        net[7].weight.mul_(20)
        net[7].bias.zero_()
        net[7].bias[3] = 56.0  # class 3 wins by 34 to 52 logits: 1 − p_ŷ from 7e-23 to 3e-15
    card = ModelCard("saturated", "tiny", (1, 12, 12), (0.5,), (0.25,), [str(i) for i in range(10)])
    model = GradvizModel(net, card)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 1, 12, 12, generator=g) * torch.rand(40, 1, 1, 1, generator=g)
    fit = torch.rand(60, 1, 12, 12, generator=g) * torch.rand(60, 1, 1, 1, generator=g)
    labels = np.arange(60) % 10  # every class present; the predicted class 3 correct for a tenth
    batch = ModelOutputs.from_model(model, x)
    assert bool((batch.logits.softmax(-1).amax(-1) == 1).all()), "the inputs must saturate float32's softmax"
    net64 = copy.deepcopy(net).double()
    feats = {}
    net64[7].register_forward_hook(lambda m, inp, out: feats.__setitem__("h", inp[0]))
    xn = (x.double() - 0.5) / 0.25
    with torch.no_grad():
        z = net64(xn)
    return model, batch, fit, labels, {"net": net64, "xn": xn, "z": z, "h": feats["h"]}


def _softmax_parts(z: torch.Tensor):
    """float64 (p, ŷ (B, 1), q = Σ_{c≠ŷ} p_c (B,)) without cancellation."""
    lse = torch.logsumexp(z, -1, keepdim=True)
    top = z.argmax(-1, keepdim=True)
    q = (torch.logsumexp(z.scatter(-1, top, -torch.inf), -1) - lse[:, 0]).exp()
    return (z - lse).exp(), top, q


def _gini(z):  # 1 − Σp² = p_ŷ q + Σ_{c≠ŷ} p_c (1 − p_c)
    p, top, q = _softmax_parts(z)
    rest = p.scatter(-1, top, 0.0)
    return (1 - q) * q + (rest * (1 - rest)).sum(-1)


def _param_grads(ref, dz_of_z) -> list[torch.Tensor]:
    """Per sample, the float64 gradient of every parameter for a loss given by ∂ℓ/∂z (one backward per sample)."""
    net, out = ref["net"], []
    for b in range(ref["xn"].shape[0]):
        z = net(ref["xn"][b:b + 1])
        grads = torch.autograd.grad(z, list(net.parameters()), grad_outputs=dz_of_z(z.detach()))
        out.append(torch.cat([gr.reshape(-1) for gr in grads]))
    return out


def _nll_pred_dz(z):  # p − e_ŷ with p_ŷ − 1 = −q
    p, top, q = _softmax_parts(z)
    return p.scatter(-1, top, -q[:, None])


def _reference(name: str, params: dict, ref: dict, runner) -> torch.Tensor:
    z, h = ref["z"], ref["h"]
    p, top, q = _softmax_parts(z)
    if name == "maxlogit":
        return -z.amax(-1)
    if name == "energy":
        return -torch.logsumexp(z, -1)
    if name == "entropy":
        logp = z.log_softmax(-1).scatter(-1, top, torch.log1p(-q)[:, None])
        return -(p * logp).sum(-1)
    if name == "exgrad":
        if params["norm"] == "l2sq":
            return (h.square().sum(-1) + 1) * _gini(z)
        return h.abs().sum(-1) * 2 * _gini(z)
    if name == "gradnorm":
        u = 1.0 / z.shape[-1]
        dev = (p - u).abs().scatter(-1, top, ((1 - u) - q)[:, None])
        return -h.abs().sum(-1) * dev.sum(-1)
    if name == "gradorth":
        basis = runner.state.basis_.double()
        return -(p - 1.0 / z.shape[-1]).norm(dim=-1) * (h @ basis).norm(dim=-1)
    if name in ("grood", "knn"):
        from gradviz.methods.grood import prototype_gradient

        st = runner.state
        if name == "grood":
            v = prototype_gradient(h, st.prototypes_.double(), st.ood_prototype_.double())
        else:
            v = h / h.norm(dim=-1, keepdim=True)
        bank = st.bank_.double()
        d = (v[:, None, :] - bank[None]).norm(dim=-1)  # exact, no ‖a‖² + ‖b‖² − 2a·b
        return d.kthvalue(st.k_ if name == "knn" else st.k, dim=1).values
    if name == "mahalanobis":
        diff = h[:, None, :] - runner.state.means_[None]  # (B, C, D)
        return torch.einsum("bcd,de,bce->bc", diff, runner.state.precision_, diff).amin(-1)
    if name == "rmds":
        st = runner.state

        def md(means, precision):
            diff = h[:, None, :] - means[None]
            return torch.einsum("bcd,de,bce->bc", diff, precision, diff)

        return (md(st.means_, st.precision_) - md(st.background_mean_, st.background_precision_)).amin(-1)
    if name == "vim":
        st = runner.state
        return st.alpha_ * ((h - st.origin_) @ st.residual_basis_).norm(dim=-1) - torch.logsumexp(z, -1)
    if name == "react":
        w, b = ref["net"][7].weight, ref["net"][7].bias
        return -torch.logsumexp(h.clamp_max(runner.state.threshold_) @ w.T + b, -1)
    if name == "gradient_density":  # log ‖∇θ_l ℓ‖² per layer (conv, BN, conv, linear; weight and bias together)
        grads = torch.stack(_param_grads(ref, _nll_pred_dz))
        sizes = [sum(p.numel() for p in m.parameters()) for m in ref["net"] if any(True for _ in m.parameters())]
        v = torch.stack([part.square().sum(-1) for part in grads.split(sizes, dim=1)], 1).log()
        return torch.from_numpy(runner.state.density_.neg_log_density(v.numpy()))
    if name == "confounding":
        c = z.shape[-1]
        dz = (lambda zz: -torch.sigmoid(-zz)) if params["reading"] == "sigmoid" else (
            lambda zz: c * zz.softmax(-1) - 1.0)
        return torch.stack([gr.square().sum() for gr in _param_grads(ref, dz)])
    if name == "gsc":  # a second float64 forward of the head on the short-circuited features
        w = ref["net"][7].weight
        rank = w[top[:, 0]].abs() if params["rank_by"] == "gradient" else (w[top[:, 0]] * h).abs()
        keep = torch.ones_like(h).scatter(-1, rank.topk(round(params["ratio"] * h.shape[-1]), -1).indices, 0.0)
        return -torch.logsumexp(ref["net"][7](h * keep), -1)
    if name == "pro":  # per sample: signed steps on the normalised input, the minimum confidence kept
        def conf(zz):
            pp, tt, qq = _softmax_parts(zz)
            if params["score"] == "energy":
                return torch.logsumexp(zz, -1)
            return (pp * zz.log_softmax(-1).scatter(-1, tt, torch.log1p(-qq)[:, None])).sum(-1)
        out = []
        for b in range(ref["xn"].shape[0]):
            xn, confs = ref["xn"][b:b + 1], []
            for _ in range(params["steps"]):
                xn = xn.detach().requires_grad_(True)
                g = conf(ref["net"](xn))
                confs.append(g.detach())
                xn = xn - params["epsilon"] * torch.autograd.grad(g.sum(), xn)[0].sign()
            confs.append(conf(ref["net"](xn)).detach())
            out.append(-torch.cat(confs).min())
        return torch.stack(out)
    if name.startswith("grad_"):
        grads = torch.stack(_param_grads(ref, _nll_pred_dz))  # (B, P)
        stat = name[5:]
        return {"l1": grads.abs().sum(-1), "l2": grads.norm(dim=-1), "max": grads.amax(-1), "min": -grads.amin(-1),
                "std": grads.std(-1, unbiased=False)}[stat]
    raise AssertionError(f"no reference for {name}")


CASES = [("maxlogit", {}), ("energy", {}), ("entropy", {}), ("exgrad", {"norm": "l1"}), ("exgrad", {"norm": "l2sq"}),
         ("gradnorm", {}), ("gradorth", {}), ("grood", {}), ("knn", {"k": 5}), ("mahalanobis", {}), ("rmds", {}),
         ("vim", {"dim": 8}), ("react", {}), ("gradient_density", {}),
         ("confounding", {"reading": "sigmoid"}), ("confounding", {"reading": "softmax"}),
         ("grad_l1", {}), ("grad_l2", {}), ("grad_max", {}), ("grad_min", {}), ("grad_std", {}),
         ("gsc", {}), ("gsc", {"rank_by": "contribution"}), ("pro", {"score": "energy", "steps": 2}),
         ("pro", {"score": "entropy", "steps": 2})]


@pytest.mark.parametrize("name, params", CASES, ids=[f"{n}-{'-'.join(map(str, p.values()))}" for n, p in CASES])
def test_float32_score_matches_float64_reference_at_saturation(saturated, name, params):
    model, batch, fit, labels, ref = saturated
    runner = get_method(name).create(**params).fit(model, fit, labels)
    got = runner.score(ModelOutputs(model, batch.x, batch.logits, batch.features)).double()
    want = _reference(name, runner.params, ref, runner).detach()
    assert torch.isfinite(got).all()
    assert got.unique().numel() > len(got) // 2, f"{name}: float32 scores collapse to {got.unique().numel()} values"
    assert spearmanr(got.numpy(), want.numpy()).statistic >= 0.99
    torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-30)


def test_msp_ties_only_where_its_float64_value_rounds_to_one(saturated):
    """MSP keeps its registered convention −p_max: at saturation that value is −1 in float32 by definition
    (stated in its reading text), so it must equal the float64 value rounded, nothing worse."""
    model, batch, _, _, ref = saturated
    got = get_method("msp").create().score(batch)
    want = -_softmax_parts(ref["z"])[0].amax(-1)
    assert torch.equal(got, want.float())


def test_saturation_really_loses_one_minus_sum_of_squares_in_float32(saturated):
    """The reason for the formulas above: the textbook 1 − Σp² is 0 for every test input, the true value is not."""
    _, batch, _, _, ref = saturated
    assert bool((1 - batch.logits.softmax(-1).square().sum(-1) == 0).all())
    assert bool((_gini(ref["z"]) > 0).all()) and float(_gini(ref["z"]).max() / _gini(ref["z"]).min()) > 1e4
