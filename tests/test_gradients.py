"""The per-sample gradient engine agrees with a float64 per-sample autograd loop."""

from __future__ import annotations

import copy
import time
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradviz import gradients as engine
from gradviz import reductions
from gradviz.errors import GradvizError
from gradviz.gradients import (
    LOSSES, STATS, GradientPass, LayerStats, layer_gradient_stats, layer_sq_l2_norms, parametrised_layers,
)
from gradviz.models.zoo import random_model


@pytest.fixture(params=["off", "on"])
def mode(request):
    """Both statistics paths: eager PyTorch and the compiled C kernel (skipped without a compiler)."""
    if request.param == "on" and reductions.warm_up() != "ready":
        pytest.skip(f"compiled kernel unavailable here: {reductions.compiled_status()}")
    return request.param

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
def test_every_stat_of_every_layer_matches_autograd_mnist_cnn(loss, mode):
    _, model, x = _case("mnist")
    ref = _reference("mnist", loss)
    res = layer_gradient_stats(model, x, loss=loss, compile=mode)
    names = [n for n, _ in parametrised_layers(model)]
    assert sorted(res.layers) == sorted(names) and len(res.layers) == 19
    idx = [names.index(n) for n in res.layers]
    assert_stats_close(res, {s: v[:, idx] for s, v in ref.items()}, res.layers, rtol=1e-5)
    assert res.values.dtype == torch.float32 and res.values.shape == (4, 19, 6)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_stat_of_every_layer_matches_autograd_resnet18(loss, mode):
    _, model, x = _case("resnet")
    ref = _reference("resnet", loss)
    res = layer_gradient_stats(model, x, loss=loss, compile=mode)
    names = [n for n, _ in parametrised_layers(model)]
    assert res.layers == _forward_order(model, x.double())
    idx = [names.index(n) for n in res.layers]
    assert_stats_close(res, {s: v[:, idx] for s, v in ref.items()}, res.layers, rtol=1e-5)


def test_float32_model_close_to_float64_reference(mode):
    model, _, x = _case("resnet")
    ref = _reference("resnet", "nll_pred")
    res = layer_gradient_stats(model, x, compile=mode)
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
    # eager: every conv is materialised chunk by chunk (the compiled direct plan needs no chunks)
    tiny = layer_gradient_stats(model, x, chunk_mib=0.01, progress=lambda d, t: calls.append((d, t)), compile="off")
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


def test_conv_variants_match_autograd(mode):
    """Grouped, dilated, strided, biased, reflect-padded convs and a 1x1-output conv."""
    model = _conv_variants_model()
    x = _batch((2, 9, 9), 3, seed=10)
    ref = reference_stats(model, x, "confounding_softmax")
    res = layer_gradient_stats(model, x, loss="confounding_softmax", chunk_mib=0.001, compile=mode)
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


def _conv_variants_model():
    """Grouped, dilated, strided, biased, reflect-padded convs, a 1x1-output conv, in-place ReLUs
    (the first layer's output is modified in place: its gradient comes from a tensor hook)."""
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
    return _randomise_bn(GradvizModel(net, card)).double()


@pytest.mark.parametrize("chunk_mib", [0.002, None])
@pytest.mark.parametrize("strategy", ["bmm", "conv", "gram"])
def test_every_materialisation_strategy_matches_autograd(strategy, chunk_mib, mode, monkeypatch):
    """Calibration may pick any plan: each one alone must give the autograd statistics, with U
    unfolded chunk by chunk (a tiny budget) or once for the layer (bmm's prepared operands)."""
    model = _conv_variants_model()
    x = _batch((2, 9, 9), 5, seed=11)
    ref = reference_stats(model, x, "confounding_sigmoid")
    real = engine._Kernel.plans
    monkeypatch.setattr(engine, "_CHOICE", {})
    monkeypatch.setattr(engine._Kernel, "plans",
                        lambda self: [p for p in real(self) if p[0] == strategy or self.kind != "dense"] or real(self))
    names = [n for n, _ in parametrised_layers(model)]
    if strategy != "gram":  # gram only measures the squared norm
        res = layer_gradient_stats(model, x, loss="confounding_sigmoid", chunk_mib=chunk_mib, compile=mode)
        assert_stats_close(res, ref, names, rtol=1e-5)
    _, sq = layer_sq_l2_norms(model, x, loss="confounding_sigmoid", chunk_mib=chunk_mib)
    assert ((sq.double() - ref["l2"] ** 2).abs() / ref["l2"] ** 2).max() < 1e-5


def test_one_pass_serves_several_losses_and_leaves_the_model_clean():
    model, _, x = _case("mnist")
    gp = GradientPass(model, x)
    for loss in LOSSES:
        shared = gp.layer_stats(loss=loss, compile="off")
        alone = layer_gradient_stats(model, x, loss=loss, compile="off")
        assert shared.layers == alone.layers
        assert torch.allclose(shared.values, alone.values, rtol=1e-6, atol=1e-12)
        names, sq = gp.sq_l2_norms(loss=loss)
        assert torch.allclose(sq, alone.get("l2", names) ** 2, rtol=1e-5)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_compiled_kernel_agrees_with_eager_on_odd_shapes():
    if reductions.warm_up() != "ready":
        pytest.skip(f"compiled kernel unavailable here: {reductions.compiled_status()}")
    kernel = reductions.fused_kernel("on", torch.float32)
    g = torch.Generator().manual_seed(3)
    for shape in [(1, 70_001), (2, 3), (1000, 17), (3, 1)]:  # one long row is split over threads
        x = torch.randn(shape, generator=g)
        got = kernel(x)
        want = reductions.reduce_rows(x.clone(), kernel=None)
        for i, part in enumerate(reductions.PARTS):
            assert torch.allclose(got[:, i], want[part].double(), rtol=1e-5, atol=1e-5), part


def test_without_a_compiler_the_engine_falls_back_to_eager(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADVIZ_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(reductions, "_COMPILED", reductions._Compiled())
    monkeypatch.setattr(reductions, "_compilers", lambda: [])
    monkeypatch.setattr(engine, "_CHOICE", {})
    model, _, x = _case("mnist")
    eager = layer_gradient_stats(model, x, compile="off")
    with pytest.warns(RuntimeWarning, match="unavailable"):
        got = layer_gradient_stats(model, x, compile="on")
    assert torch.allclose(got.values, eager.values, rtol=1e-6, atol=1e-12)
    assert reductions.compiled_status().startswith("failed") and "no C compiler" in reductions.compiled_status()
    monkeypatch.setattr(reductions, "_COMPILED", reductions._Compiled())
    monkeypatch.setattr(reductions, "_compilers", lambda: ["/bin/false"])  # a compiler that fails
    layer_gradient_stats(model, x, compile="auto")  # auto: silent fallback
    assert reductions.compiled_status().startswith("failed: GradvizError: could not compile")


def test_bad_compile_mode_is_a_clear_error():
    model = _mnist_model()
    with pytest.raises(GradvizError, match="compile must be one of"):
        layer_gradient_stats(model, _batch((1, 28, 28), 2), compile="fast")


def test_scratch_buffer_stays_within_the_chunk_budget(monkeypatch):
    """Materialised gradients never exceed the budget (or one sample's gradient, if that is larger)."""
    monkeypatch.setattr(engine, "_SCRATCH", __import__("threading").local())
    monkeypatch.setattr(engine, "_CHOICE", {})
    model, _, x = _case("resnet")
    budget_mib = 0.5
    layer_gradient_stats(model, x, chunk_mib=budget_mib, compile="off")
    biggest = max(m.weight.numel() for _, m in parametrised_layers(model) if isinstance(m, nn.Conv2d))
    held = max(b.numel() for b in engine._SCRATCH.buffers.values()) * 8  # float64 model
    assert held <= max(budget_mib * 2**20, biggest * 8)


def _materialised_parts(x, d, kernel_size, stride, padding, dilation):
    """(b, 5) float64 partial sums of each sample's conv weight gradient, materialised by unfold."""
    u = F.unfold(x.double(), kernel_size, dilation, padding, stride)
    g = torch.matmul(d.double().flatten(2), u.transpose(1, 2)).flatten(1)
    return torch.stack([g.abs().sum(1), (g * g).sum(1), g.amax(1), g.amin(1), g.sum(1)], 1), g


@pytest.mark.parametrize("c_in, c_out, size, kernel_size, stride, padding, dilation", [
    (1, 16, 28, (3, 3), (1, 1), (1, 1), (1, 1)),  # one input channel (the bundled model's stem)
    (3, 20, 9, (3, 3), (1, 1), (1, 1), (1, 1)),  # output channels not a whole number of vectors
    (16, 64, 14, (3, 3), (2, 2), (1, 1), (1, 1)),
    (7, 70, 11, (5, 5), (2, 2), (2, 2), (2, 2)),  # generic path: 5x5, dilated
    (32, 37, 6, (1, 1), (2, 2), (0, 0), (1, 1)),  # 1x1 downsample
    (3, 64, 32, (7, 7), (2, 2), (3, 3), (1, 1)),  # ResNet stem
    (9, 5, 4, (2, 3), (1, 2), (0, 1), (1, 1)),
])
def test_direct_conv_kernel_matches_materialised_gradients(c_in, c_out, size, kernel_size, stride, padding, dilation):
    if reductions.warm_up() != "ready":
        pytest.skip(f"compiled kernel unavailable here: {reductions.compiled_status()}")
    kernel = reductions.fused_kernel("on", torch.float32)
    gen = torch.Generator().manual_seed(c_in * 100 + c_out)
    x = torch.randn(5, c_in, size, size, generator=gen)
    conv = nn.Conv2d(c_in, c_out, kernel_size, stride, padding, dilation, bias=False)
    d = torch.randn(conv(x).shape, generator=gen)
    want, g = _materialised_parts(x, d, kernel_size, stride, padding, dilation)
    got = kernel.conv_parts(x, d, kernel_size, stride, padding, dilation)
    scale = torch.stack([want[:, 0], want[:, 1], g.abs().amax(1), g.abs().amax(1), want[:, 0]], 1)
    assert ((got - want).abs() / scale).max() < 1e-5
    only = kernel.conv_parts(x, d, kernel_size, stride, padding, dilation, only_s2=True)
    assert torch.allclose(only[:, 1], want[:, 1], rtol=1e-5)
    # per-channel scale (a folded BatchNorm's γ/σ) on the statistics, dot products with W on the unscaled G
    s, w = torch.randn(c_out, generator=gen), torch.randn(c_out, c_in, *kernel_size, generator=gen)
    z, shift = torch.randn(d.shape, generator=gen), torch.randn(c_out, generator=gen)
    got, dots, sums, zdots = kernel.conv_parts(x, d, kernel_size, stride, padding, dilation, scale=s,
                                               weight_t=reductions.transposed_weight(w), z=z, z_shift=shift)
    assert torch.allclose(sums, d.double().flatten(2).sum(-1), rtol=1e-5, atol=1e-5)
    want_z = (d.double() * (z.double() - shift.double().view(1, -1, 1, 1))).flatten(2).sum(-1)
    assert torch.allclose(zdots, want_z, rtol=1e-5, atol=1e-6)
    g3 = g.view(5, c_out, -1)
    want_s, _ = _materialised_parts(x, d * s.view(1, -1, 1, 1), kernel_size, stride, padding, dilation)
    assert ((got - want_s).abs() / (scale * s.abs().max())).max() < 1e-5
    want_dots = (g3 * w.double().flatten(1)).sum(-1)
    assert ((dots - want_dots).abs() / (g3.abs() * w.double().flatten(1).abs()).sum(-1)).max() < 1e-5


def test_direct_conv_kernel_rejects_other_dtypes():
    if reductions.warm_up() != "ready":
        pytest.skip(f"compiled kernel unavailable here: {reductions.compiled_status()}")
    kernel = reductions.fused_kernel("on", torch.float32)
    x, d = torch.randn(2, 3, 5, 5, dtype=torch.float64), torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with pytest.raises(GradvizError, match="float32"):
        kernel.conv_parts(x, d, (3, 3), (1, 1), (1, 1), (1, 1))


@pytest.mark.parametrize("kind", ["mnist", "variants"])
def test_direct_plan_matches_autograd_in_float32(kind, monkeypatch):
    """The compiled direct plan (float32 only) alone, on every conv it supports, vs the float64 loop."""
    if reductions.warm_up() != "ready":
        pytest.skip(f"compiled kernel unavailable here: {reductions.compiled_status()}")
    if kind == "mnist":
        model, _, x = _case("mnist")
    else:
        model, x = _conv_variants_model().float(), _batch((2, 9, 9), 5, seed=11)
    ref = reference_stats(model, x, "confounding_sigmoid")
    real, real_parts, used = engine._Kernel.plans, engine._Kernel.parts, set()
    monkeypatch.setattr(engine, "_CHOICE", {})
    monkeypatch.setattr(engine._Kernel, "plans",
                        lambda self: [p for p in real(self) if p[0] == "direct" or self.kind != "dense"] or real(self))
    monkeypatch.setattr(engine._Kernel, "parts",
                        lambda self, strategy, *a: used.add(strategy) or real_parts(self, strategy, *a))
    res = layer_gradient_stats(model, x, loss="confounding_sigmoid", compile="on")
    assert "direct" in used
    names = [n for n, _ in parametrised_layers(model)]
    idx = [names.index(n) for n in res.layers]
    assert_stats_close(res, {s: v[:, idx] for s, v in ref.items()}, res.layers, rtol=1e-4)
    _, sq = layer_sq_l2_norms(model, x, loss="confounding_sigmoid", compile="on")
    assert ((sq.double() - ref["l2"][:, idx] ** 2).abs() / ref["l2"][:, idx] ** 2).max() < 1e-4


class _SmallMaps(nn.Module):
    """Convs on 2×2 and 3×3 maps, where some kernel taps see one output position only (or none)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 20, 3, stride=2, padding=1)  # 4x4 -> 2x2, biased; one single tap
        self.conv2 = nn.Conv2d(20, 33, 3, padding=1, bias=False)  # 2x2 -> 2x2
        self.conv3 = nn.Conv2d(33, 17, 3, padding=2, dilation=2, bias=False)  # dilated: taps hit padding only
        self.conv4 = nn.Conv2d(17, 8, 2, padding=1)  # 2x2 -> 3x3
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.head(self.conv4(x).mean((2, 3)))


@pytest.mark.parametrize("strategy, dtype", [("bmm", torch.float64), ("direct", torch.float32)])
def test_single_position_taps_in_closed_form_match_autograd(strategy, dtype, monkeypatch):
    if strategy == "direct" and reductions.warm_up() != "ready":
        pytest.skip(f"compiled kernel unavailable here: {reductions.compiled_status()}")
    from gradviz.models import GradvizModel
    from gradviz.models.card import ModelCard

    torch.manual_seed(3)
    card = ModelCard(name="t", architecture="t", input_size=(3, 4, 4), mean=(0.5,) * 3, std=(0.25,) * 3,
                     class_names=[str(i) for i in range(4)])
    model = GradvizModel(_SmallMaps(), card).eval().to(dtype)
    x = _batch((3, 4, 4), 5, seed=12)
    ref = reference_stats(model, x, "nll_pred")
    names = [n for n, _ in parametrised_layers(model)]
    real, real_single, calls = engine._Kernel.plans, engine._Kernel._single_tap_parts, []
    monkeypatch.setattr(engine, "_CHOICE", {})
    monkeypatch.setattr(engine._Kernel, "plans",
                        lambda self: [p for p in real(self) if p[0] == strategy or self.kind != "dense"] or real(self))
    monkeypatch.setattr(engine._Kernel, "_single_tap_parts",  # the eager closed form (bmm)
                        lambda self, *a: calls.append(self.name) or real_single(self, *a))
    real_conv = reductions.FusedKernel.conv_parts  # the compiled kernel's closed form (direct)

    def conv_parts(self, x, d, *args, **kwargs):
        if kwargs.get("single") is not None:
            calls.append({20: "conv2", 33: "conv3"}[x.shape[1]])  # input channels name the layer
        return real_conv(self, x, d, *args, **kwargs)

    monkeypatch.setattr(reductions.FusedKernel, "conv_parts", conv_parts)
    for mode in (("off", "on") if strategy == "bmm" else ("on",)):
        calls.clear()
        res = layer_gradient_stats(model, x, compile=mode)
        assert set(calls) == {"conv2", "conv3"}, calls  # conv1 has one such tap only, conv4 none
        assert_stats_close(res, ref, names, rtol=1e-5 if dtype == torch.float64 else 1e-4)
        _, sq = layer_sq_l2_norms(model, x, loss="nll_pred", compile=mode)
        assert ((sq.double() - ref["l2"] ** 2).abs() / ref["l2"] ** 2).max() < 1e-4


@pytest.mark.parametrize("compile_mode", ["off", "on"])
def test_head_closed_form_equals_the_engine_on_the_head(compile_mode, monkeypatch):
    """head_gradient_stats (logits and features only, bias column included) = the engine's fc row."""
    if compile_mode == "on" and reductions.warm_up() != "ready":
        pytest.skip(f"compiled kernel unavailable here: {reductions.compiled_status()}")
    monkeypatch.setenv("GRADVIZ_COMPILE", compile_mode)
    model, model64, x = _case("mnist")
    for m in (model, model64):
        logits, h = m.logits_and_features(x.to(next(m.parameters()).dtype))
        for loss in LOSSES:
            got = engine.head_gradient_stats(m.head, logits, h, loss=loss)
            want = layer_gradient_stats(m, x, loss=loss, layers=["fc"], compile="off").values[:, 0]
            assert torch.allclose(got.double(), want.double(), rtol=1e-5, atol=1e-6), loss  # mean may be 0 ± rounding


@pytest.mark.parametrize("fold", [True, False])
def test_backward_stops_at_the_first_layer_output_even_if_an_inplace_op_follows_it(fold):
    """ResNet-18's stem: conv (+ folded BN) then ReLU(inplace). The pass hands a copy downstream, so
    the stem's output stays as produced: the statistics' backward stops there (the input gradient,
    a whole extra conv backward, is never computed), and an input gradient asked for still flows."""
    _, model, x = _case("resnet")  # float64
    gp = GradientPass(model, x, fold_bn=fold)
    assert not gp.captures[0].modified
    reached = []
    gp.x_in.register_hook(lambda g: reached.append(g))
    res = gp.layer_stats("nll_pred")
    assert reached == []
    ref, names = _reference("resnet", "nll_pred"), [n for n, _ in parametrised_layers(model)]
    idx = [names.index(n) for n in res.layers]
    assert_stats_close(res, {s: v[:, idx] for s, v in ref.items()}, res.layers, rtol=1e-5)
    x64 = x.double()
    logits = model(x64)
    assert torch.allclose(gp.logits, logits, atol=1e-10)  # the copy changes nothing downstream
    _, dx = gp.output_grads(gp.logits, torch.ones_like(gp.logits), [], input_grad=True)
    want = torch.autograd.functional.vjp(lambda v: model(v), x64, torch.ones_like(logits))[1]
    assert reached and torch.allclose(dx, want, atol=1e-10, rtol=1e-8)


def test_output_grads_of_later_layers_stop_at_the_earliest_one_asked_for():
    """Asking for the last stage's outputs only (GAIA-A's "auto" rule) runs the backward down to the
    earliest of them, not to the stem: no hook of an earlier layer fires, and every gradient asked
    for equals autograd's w.r.t. that output."""
    _, model, x = _case("resnet")  # float64, stock ResNet-18 (in-place ReLU, residual adds)
    gp = GradientPass(model, x)
    late = [c for c in gp.captures if c.name.startswith("layer4") and not c.modified]
    assert len(late) >= 3
    earlier = [c for c in gp.captures if c.index < min(c.index for c in late) and not c.modified]
    reached = []
    for c in earlier:
        c.out.register_hook(lambda g, name=c.name: reached.append(name))
    gp.x_in.register_hook(lambda g: reached.append("input"))
    cot = torch.randn_like(gp.logits)
    got, _ = gp.output_grads(gp.logits, cot, late)
    assert reached == []
    want = torch.autograd.grad(gp.logits, [c.out for c in late], cot, retain_graph=True)
    for c, g, w in zip(late, got, want):
        assert torch.allclose(g, w, rtol=1e-10, atol=1e-12), c.name
    # an output the root does not depend on (after it in the forward): zero, and no second backward
    root, after = late[0].out, late[-1]
    unrelated, _ = gp.output_grads(root, torch.ones_like(root), [late[1], after])
    assert reached == [] and not unrelated[1].any() and unrelated[1].shape == after.out.shape
    got_all, _ = gp.output_grads(gp.logits, cot, gp.captures)  # everything: the full backward still runs
    assert set(reached) >= {c.name for c in earlier}
    for c, g in zip(late, (got_all[c.index] for c in late)):
        assert torch.allclose(g, got[late.index(c)], rtol=1e-10, atol=1e-12), c.name


def test_calibration_stops_timing_a_plan_that_is_clearly_slower(monkeypatch):
    """A plan far slower than the best after its warm-up run gets no third run, and its strategy is
    not tried at the other chunk sizes; the fastest plan is the one kept."""
    from gradviz.models import GradvizModel
    from gradviz.models.card import ModelCard

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Flatten(), nn.Linear(64 * 8 * 8, 3))
    card = ModelCard(name="t", architecture="t", input_size=(64, 8, 8), mean=(0.5,) * 64, std=(0.25,) * 64,
                     class_names=["a", "b", "c"])
    model = GradvizModel(net, card).eval()
    x = _batch((64, 8, 8), 128, seed=4)
    real_plans, real_parts, calls = engine._Kernel.plans, engine._Kernel.parts, []

    def plans(self):  # this layer's materialising plans, at three chunk sizes each
        return [p for p in real_plans(self) if p[0] in ("bmm", "conv")] if self.kind == "dense" else real_plans(self)

    def parts(self, strategy, sl, buf):
        if self.kind == "dense":
            calls.append((strategy, sl.stop - sl.start))
            if strategy == "conv":
                time.sleep(0.05)  # far slower than bmm on this layer
        return real_parts(self, strategy, sl, buf)

    monkeypatch.setattr(engine, "_CHOICE", {})
    monkeypatch.setattr(engine._Kernel, "plans", plans)
    monkeypatch.setattr(engine._Kernel, "parts", parts)
    layer_gradient_stats(model, x, compile="off")
    sizes = {n for s, n in calls if s == "bmm"}
    assert len(sizes) == 3, calls  # every bmm chunk size was timed
    conv = [n for s, n in calls if s == "conv"]
    assert len(conv) == 2 and len(set(conv)) == 1, calls  # warm-up and one run, one chunk size
    chosen = [p for k, p in engine._CHOICE.items() if k[0] == "Conv2d"]
    assert len(chosen) == 1 and chosen[0][0] == "bmm" and chosen[0][1] in sizes


def test_a_small_budget_never_unfolds_the_whole_batch(monkeypatch):
    """Where U of a layer does not fit the budget it is unfolded chunk by chunk only (the folded
    convs' scaled δ included), and the statistics stay exact."""
    _, model, x = _case("resnet")
    x = torch.cat([x, x.flip(0), x * 0.5])  # 9 samples
    ref = reference_stats(model, x, "nll_pred")
    real_plans, real_unfold, sizes = engine._Kernel.plans, engine._Kernel._unfold, []
    monkeypatch.setattr(engine, "_CHOICE", {})
    monkeypatch.setattr(engine._Kernel, "plans",
                        lambda self: [p for p in real_plans(self) if p[0] == "bmm"] if self.kind == "dense"
                        else real_plans(self))

    def unfold(self, v):
        if self.kind == "dense":
            sizes.append((self.unfold_once, v.shape[0]))
        return real_unfold(self, v)

    monkeypatch.setattr(engine._Kernel, "_unfold", unfold)
    res = layer_gradient_stats(model, x, chunk_mib=0.05, compile="off")
    per_chunk = [n for once, n in sizes if not once]
    assert per_chunk and max(per_chunk) < x.shape[0], sizes
    names = [n for n, _ in parametrised_layers(model)]
    idx = [names.index(n) for n in res.layers]
    assert_stats_close(res, {s: v[:, idx] for s, v in ref.items()}, res.layers, rtol=1e-5)


def test_kernel_builds_once_in_the_background_and_a_caller_waits_for_it(monkeypatch):
    """build_in_background starts one build in a thread; a get() meanwhile waits for it (no second build),
    a failure is remembered and reported, and GRADVIZ_COMPILE=off starts nothing."""
    import threading

    release, builds = threading.Event(), []

    def slow_build():
        builds.append(threading.current_thread().name)
        release.wait(10)
        return "kernel"

    monkeypatch.setattr(reductions, "_build", slow_build)
    fresh = reductions._Compiled()
    monkeypatch.setattr(reductions, "_COMPILED", fresh)
    monkeypatch.setenv("GRADVIZ_COMPILE", "off")
    reductions.build_in_background()
    assert fresh.thread is None and reductions.compiled_status() == "not built"
    monkeypatch.setenv("GRADVIZ_COMPILE", "auto")
    reductions.build_in_background()
    reductions.build_in_background()  # already building: no second thread
    assert reductions.compiled_status() == "building"  # the second call returned at once, not after the build
    got = []
    waiter = threading.Thread(target=lambda: got.append(reductions.fused_kernel("auto")))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and got == []  # waits for the background build
    release.set()
    waiter.join(10)
    assert got == ["kernel"] and builds == ["gradviz-kernel-build"]
    assert reductions.compiled_status() == "ready"

    failing = reductions._Compiled()
    monkeypatch.setattr(reductions, "_COMPILED", failing)
    monkeypatch.setattr(reductions, "_build", lambda: (_ for _ in ()).throw(GradvizError("no C compiler found")))
    reductions.build_in_background()
    failing.thread.join(10)
    assert reductions.compiled_status().startswith("failed: GradvizError: no C compiler")
    with pytest.warns(RuntimeWarning, match="using eager PyTorch"):
        assert reductions.fused_kernel("on") is None
