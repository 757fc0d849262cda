"""The per-sample gradient engine agrees with a float64 per-sample autograd loop."""

from __future__ import annotations

import copy
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradviz.errors import GradvizError
from gradviz.gradients import (
    LOSSES, STATS, LayerStats, layer_gradient_stats, layer_sq_l2_norms, parametrised_layers,
)
from gradviz.models.zoo import random_model

# Per-sample losses whose logit gradients LOSSES claims in closed form.
REFERENCE_LOSSES = {
    "nll_pred": lambda z: -z.log_softmax(-1)[z.argmax(-1)],
    "confounding_sigmoid": lambda z: F.softplus(-z).sum(),  # -Σ log σ(z_c)
    "confounding_softmax": lambda z: -z.log_softmax(-1).sum(),  # -Σ log p_c
}


def _randomise_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.3)
            with torch.no_grad():
                m.weight.copy_(torch.randn(c, generator=g) * 0.5 + 1.0)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model


def _mnist_model():
    return _randomise_bn(random_model("mnist-cnn", 10, (1, 28, 28), seed=0))


def _resnet_model():
    return _randomise_bn(random_model("resnet18", 10, (3, 32, 32), seed=0))


def _batch(shape, n, seed=0):
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


# Built once per test session: random ResNet-18 init and float64 reference loops are the slow part.
@lru_cache(maxsize=None)
def _case(kind: str):
    """(float32 model, float64 model, batch) for ``kind`` in {"mnist", "resnet"}."""
    if kind == "mnist":
        model, x = _mnist_model(), _batch((1, 28, 28), 4, seed=1)
    else:
        model, x = _resnet_model(), _batch((3, 32, 32), 3, seed=2)
    model64 = _randomise_bn(random_model(*(("mnist-cnn", 10, (1, 28, 28)) if kind == "mnist"
                                           else ("resnet18", 10, (3, 32, 32))), seed=0)).double()
    return model, model64, x


@lru_cache(maxsize=None)
def _reference(kind: str, loss: str) -> dict:
    model, _, x = _case(kind)
    return reference_stats(model, x, loss)


def reference_stats(model, x, loss: str) -> dict[str, torch.Tensor]:
    """stat -> (B, L) from one float64 autograd backward per sample (the slow, obvious way)."""
    net64 = copy.deepcopy(model.net).double()  # the wrapper holds a lock: copy the network only
    mean, std = model.mean.double(), model.std.double()
    layers = parametrised_layers(net64)
    out = {s: torch.zeros(x.shape[0], len(layers), dtype=torch.float64) for s in STATS}
    for b in range(x.shape[0]):
        z = net64((x[b:b + 1].double() - mean) / std)[0]
        params = [p for _, m in layers for p in m.parameters(recurse=False)]
        grads = torch.autograd.grad(REFERENCE_LOSSES[loss](z), params)
        k = 0
        for i, (_, m) in enumerate(layers):
            n = len(list(m.parameters(recurse=False)))
            v = torch.cat([g.reshape(-1) for g in grads[k:k + n]])
            k += n
            out["l1"][b, i] = v.abs().sum()
            out["l2"][b, i] = v.norm()
            out["max"][b, i] = v.max()
            out["min"][b, i] = v.min()
            out["mean"][b, i] = v.mean()
            out["std"][b, i] = v.std(unbiased=False)
    return out


def assert_stats_close(res: LayerStats, ref: dict[str, torch.Tensor], names: list[str], rtol: float) -> None:
    assert res.layers == names
    rms = ref["l2"] / torch.tensor([float(n) for n in res.numels]).sqrt()  # (B, L)
    for s in res.stats:
        got, want = res.get(s).double(), ref[s]
        scale = rms if s in ("mean", "max", "min") else want.abs()
        err = ((got - want).abs() / scale.clamp_min(1e-30)).max().item()
        assert err < rtol, f"{s}: max relative error {err:.2e}"


def _forward_order(model, x):
    """Names of the parametrised layers in the order their forward runs."""
    order, handles = [], []
    for name, m in parametrised_layers(model):
        handles.append(m.register_forward_hook(lambda *_a, name=name: order.append(name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order


@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_stat_of_every_layer_matches_autograd_mnist_cnn(loss):
    _, model, x = _case("mnist")
    ref = _reference("mnist", loss)
    res = layer_gradient_stats(model, x, loss=loss)
    names = [n for n, _ in parametrised_layers(model)]
    assert sorted(res.layers) == sorted(names) and len(res.layers) == 19
    idx = [names.index(n) for n in res.layers]
    assert_stats_close(res, {s: v[:, idx] for s, v in ref.items()}, res.layers, rtol=1e-5)
    assert res.values.dtype == torch.float32 and res.values.shape == (4, 19, 6)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_stat_of_every_layer_matches_autograd_resnet18(loss):
    _, model, x = _case("resnet")
    ref = _reference("resnet", loss)
    res = layer_gradient_stats(model, x, loss=loss)
    names = [n for n, _ in parametrised_layers(model)]
    assert res.layers == _forward_order(model, x.double())
    idx = [names.index(n) for n in res.layers]
    assert_stats_close(res, {s: v[:, idx] for s, v in ref.items()}, res.layers, rtol=1e-5)


def test_float32_model_close_to_float64_reference():
    model, _, x = _case("resnet")
    ref = _reference("resnet", "nll_pred")
    res = layer_gradient_stats(model, x)
    names = [n for n, _ in parametrised_layers(model)]
    idx = [names.index(n) for n in res.layers]
    assert_stats_close(res, {s: v[:, idx] for s, v in ref.items()}, res.layers, rtol=1e-3)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_sq_l2_norms_match_autograd(loss):
    _, model, x = _case("resnet")
    ref = _reference("resnet", loss)
    names, sq = layer_sq_l2_norms(model, x, loss=loss)
    idx = [[n for n, _ in parametrised_layers(model)].index(n) for n in names]
    want = ref["l2"][:, idx] ** 2
    assert ((sq.double() - want).abs() / want).max() < 1e-5


def test_losses_are_gradients_of_reference_losses():
    z = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    for name, fn in REFERENCE_LOSSES.items():
        want = torch.stack([torch.autograd.grad(fn(z[b]), z)[0][b] for b in range(5)])
        assert torch.allclose(LOSSES[name](z.detach()), want, atol=1e-12), name


def test_results_independent_of_chunk_size_and_batch():
    model = _mnist_model()
    x = _batch((1, 28, 28), 6, seed=5)
    big = layer_gradient_stats(model, x, chunk_mib=256)
    calls = []
    tiny = layer_gradient_stats(model, x, chunk_mib=0.01, progress=lambda d, t: calls.append((d, t)))
    assert torch.allclose(big.values, tiny.values, rtol=1e-5, atol=1e-7)
    assert calls[-1][0] == calls[-1][1] and len(calls) > len(big.layers)  # one call per chunk
    part = layer_gradient_stats(model, x[2:4])
    assert torch.allclose(big.values[2:4], part.values, rtol=1e-4, atol=1e-6)
    _, sq_big = layer_sq_l2_norms(model, x, loss="nll_pred", chunk_mib=256)
    _, sq_tiny = layer_sq_l2_norms(model, x, loss="nll_pred", chunk_mib=0.01)
    assert torch.allclose(sq_big, sq_tiny, rtol=1e-5)
    assert torch.allclose(sq_big, big.get("l2") ** 2, rtol=1e-4)


def test_sub_batches_concatenate(monkeypatch):
    import gradviz.gradients as gr

    model = _mnist_model()
    x = _batch((1, 28, 28), 5, seed=6)
    whole = layer_gradient_stats(model, x, stats=("l2", "max"))
    monkeypatch.setattr(gr, "FORWARD_BATCH", 2)
    split = layer_gradient_stats(model, x, stats=("l2", "max"))
    assert torch.allclose(whole.values, split.values, rtol=1e-4, atol=1e-7)


def test_model_left_clean_no_hooks_no_grad_eval():
    model, _, x = _case("resnet")
    layer_gradient_stats(model, x)
    layer_sq_l2_norms(model, x)
    assert not model.training
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    for p in model.parameters():
        assert p.grad is None and p.requires_grad


def test_layer_subset_and_frame():
    model = _mnist_model()
    x = _batch((1, 28, 28), 3, seed=8)
    full = layer_gradient_stats(model, x)
    some = layer_gradient_stats(model, x, layers=["fc", "layer2.conv1"], stats=("l1", "std"))
    assert set(some.layers) == {"fc", "layer2.conv1"}
    for name in some.layers:
        i = full.layers.index(name)
        assert torch.allclose(some.get("l1", [name])[:, 0], full.values[:, i, 0], rtol=1e-5)
    df = full.to_frame()
    assert df.shape == (3, 19 * 6) and df.columns.names == ["layer", "stat"]
    assert df[("fc", "l2")].to_numpy() == pytest.approx(full.get("l2", ["fc"])[:, 0].numpy(), rel=1e-6)


def test_last_layer_closed_form_matches_methods_md():
    model = _mnist_model()
    x = _batch((1, 28, 28), 4, seed=9)
    res = layer_gradient_stats(model, x, layers=["fc"])
    logits, h = model.logits_and_features(x)
    p = logits.softmax(-1)
    g = p - F.one_hot(p.argmax(-1), 10)
    # [W | b] gradient = g [h, 1]^T: L1 = 2(1 - p_max)(||h||_1 + 1); mean = 0 exactly
    assert torch.allclose(res.get("l1")[:, 0], 2 * (1 - p.amax(-1)) * (h.abs().sum(-1) + 1), rtol=1e-5)
    assert torch.allclose(res.get("l2")[:, 0], g.norm(dim=-1) * (h.square().sum(-1) + 1).sqrt(), rtol=1e-5)
    assert res.get("mean").abs().max() < 1e-7


def test_conv_variants_match_autograd():
    """Grouped, dilated, strided, biased, reflect-padded convs and a 1x1-output conv."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=True), nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, stride=2, dilation=2, padding=2, groups=2), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
        nn.Conv2d(6, 6, 3, padding="same", padding_mode="reflect", bias=False),
        nn.Conv2d(6, 8, 5),  # 5x5 input -> 1x1 output: rank-one path
        nn.Flatten(), nn.Linear(8, 5),
    )
    from gradviz.models import GradvizModel
    from gradviz.models.card import ModelCard

    card = ModelCard(name="t", architecture="t", input_size=(2, 9, 9), mean=(0.5, 0.5), std=(0.25, 0.25),
                     class_names=[str(i) for i in range(5)])
    model = _randomise_bn(GradvizModel(net, card)).double()
    x = _batch((2, 9, 9), 3, seed=10)
    ref = reference_stats(model, x, "confounding_softmax")
    res = layer_gradient_stats(model, x, loss="confounding_softmax", chunk_mib=0.001)
    assert_stats_close(res, ref, [n for n, _ in parametrised_layers(model)], rtol=1e-5)
    _, sq = layer_sq_l2_norms(model, x, loss="confounding_softmax")
    assert ((sq.double() - ref["l2"] ** 2).abs() / ref["l2"] ** 2).max() < 1e-5


def test_bad_inputs_raise_clear_errors():
    model = _mnist_model()
    x = _batch((1, 28, 28), 2)
    with pytest.raises(GradvizError, match="unknown loss"):
        layer_gradient_stats(model, x, loss="hinge")
    with pytest.raises(GradvizError, match="unknown statistic"):
        layer_gradient_stats(model, x, stats=("l3",))
    with pytest.raises(GradvizError, match="unknown layer"):
        layer_gradient_stats(model, x, layers=["nope"])
    with pytest.raises(GradvizError, match="chunk_mib"):
        layer_gradient_stats(model, x, chunk_mib=0)
    with pytest.raises(GradvizError, match="non-empty"):
        layer_gradient_stats(model, x[:0])
    res = layer_gradient_stats(model, x, stats=("l2",))
    with pytest.raises(GradvizError, match="not computed"):
        res.get("max")
    model.train()
    try:
        with pytest.raises(GradvizError, match="eval"):
            layer_gradient_stats(model, x)
    finally:
        model.eval()
