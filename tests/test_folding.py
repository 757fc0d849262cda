"""BatchNorm folded into the conv before it (gradviz.engine.folding): same statistics, untouched model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradviz.engine.folding import twin_of
from gradviz.engine.plans.conv import DOT_PRODUCTS, RECOMPUTED, ConvPlan
from gradviz.engine import STATS, GradientPass, LOSSES, parametrised_layers
from gradviz.methods.gaia import gaia_a_channels, gaia_z_channels
from gradviz.models.zoo import random_model

from engine_reference import require_kernel
from engine_reference import assert_stats_close, conv_variants_model, reference_stats, wrap as _wrap_model
from engine_reference import batch as _batch, randomise_bn as _randomise_bn


def _mnist64():
    return _randomise_bn(random_model("mnist-cnn", 10, (1, 28, 28), seed=0)).double()


def _wrap(net: nn.Module, input_size, classes: int):
    return _wrap_model(net, input_size, classes)


def _both(model, x, loss="nll_pred", stats=STATS, layers=None):
    """(folded, unfolded) LayerStats of one batch."""
    return tuple(GradientPass(model, x, layers, fold_bn=fold).layer_stats(loss=loss, stats=stats, layers=layers)
                 for fold in (True, False))


def test_bundled_architectures_fold_every_conv_bn_pair_and_keep_the_model():
    for arch, size, pairs in (("mnist-cnn", (1, 28, 28), 9), ("resnet18", (3, 32, 32), 20)):
        model = _randomise_bn(random_model(arch, 10, size, seed=0))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        grads = [p.requires_grad for p in model.parameters()]
        twin = twin_of(model.net)
        assert twin is not None and len(twin.folds) == pairs
        assert not any(isinstance(m, nn.BatchNorm2d) for m in twin.net.modules())
        x = _batch(size, 3)
        gp = GradientPass(model, x)
        assert gp.twin is twin and twin_of(model.net) is twin  # cached
        with torch.no_grad():
            assert torch.allclose(gp.logits, model(x), rtol=1e-4, atol=1e-5)
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert grads == [p.requires_grad for p in model.parameters()]
        assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mnist", "resnet", "variants"])
def test_folded_pass_gives_the_unfolded_statistics(kind):
    if kind == "mnist":
        model, x = _mnist64(), _batch((1, 28, 28), 4, seed=1)
    elif kind == "resnet":
        model, x = _randomise_bn(random_model("resnet18", 10, (3, 32, 32), seed=0)).double(), _batch((3, 32, 32), 3)
    else:  # the BN follows a grouped, dilated, strided conv with an in-place ReLU after it
        model, x = conv_variants_model(), _batch((2, 9, 9), 5, seed=11)
    assert twin_of(model.net) is not None
    for loss in LOSSES:
        folded, plain = _both(model, x, loss)
        assert folded.layers == plain.layers
        assert torch.allclose(folded.values.double(), plain.values.double(), rtol=1e-5, atol=1e-9), loss
    names_f, sq_f = GradientPass(model, x, fold_bn=True).sq_l2_norms()
    names_p, sq_p = GradientPass(model, x, fold_bn=False).sq_l2_norms()
    assert names_f == names_p and torch.allclose(sq_f, sq_p, rtol=1e-5, atol=1e-12)


def test_folded_batchnorm_alone_and_gaia_maps_match():
    model, x = _mnist64(), _batch((1, 28, 28), 3, seed=2)
    folded, plain = _both(model, x, layers=["layer1.bn1", "layer3.downsample.1"])  # no conv asked for
    assert folded.layers == plain.layers == ["layer1.bn1", "layer3.downsample.1"]
    assert torch.allclose(folded.values.double(), plain.values.double(), rtol=1e-6, atol=1e-12)
    gp_f, gp_p = GradientPass(model, x, fold_bn=True), GradientPass(model, x, fold_bn=False)
    assert [u.group for u in gp_f.norm_uses()] == [u.group for u in gp_p.norm_uses()]
    for fn in (gaia_z_channels, gaia_a_channels):
        a, b = fn(model, x, "all", gp_f), fn(model, x, "all", gp_p)
        assert list(a) == list(b)
        for name in a:
            assert torch.allclose(a[name], b[name], rtol=1e-6, atol=1e-9), (fn.__name__, name)


class _Shared(nn.Module):
    """conv1's output feeds a BatchNorm AND a skip connection: it must not be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y = self.conv1(x)
        z = torch.relu(self.bn1(y)) + y
        z = torch.relu(self.bn2(self.conv2(z)))
        return self.head(z.mean((2, 3)))


class _Untraceable(_Shared):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 1.0
        return super().forward(x)


@pytest.mark.parametrize("cls", [_Shared, _Untraceable])
def test_only_safe_pairs_are_folded_and_statistics_stay_exact(cls):
    torch.manual_seed(0)
    model = _randomise_bn(_wrap(cls(), (2, 6, 6), 3)).double()
    x = _batch((2, 6, 6), 4, seed=3)
    twin = twin_of(model.net)
    if cls is _Shared:
        assert twin is not None and list(twin.folds) == ["conv2"]  # conv1's output is read twice
    else:
        assert twin is None
    ref = reference_stats(model, x, "nll_pred")
    folded, _ = _both(model, x)
    assert_stats_close(folded, ref, rtol=1e-6)


@pytest.mark.slow
def test_twin_follows_weight_changes():
    model, x = _mnist64(), _batch((1, 28, 28), 2, seed=4)
    first = twin_of(model.net)
    with torch.no_grad():
        model.net.layer1.bn1.running_var.mul_(3.0)  # in place
        model.net.layer2.conv1.weight.add_(0.1)
    second = twin_of(model.net)
    assert second is not first
    folded, plain = _both(model, x)
    assert torch.allclose(folded.values.double(), plain.values.double(), rtol=1e-6, atol=1e-12)


def test_env_switch_disables_folding(monkeypatch):
    model, x = _mnist64(), _batch((1, 28, 28), 2)
    monkeypatch.setenv("GRADVIZ_FOLD_BN", "off")
    assert GradientPass(model, x).twin is None
    monkeypatch.setenv("GRADVIZ_FOLD_BN", "on")
    assert GradientPass(model, x).twin is not None


def test_zero_gamma_channel_in_float32_direct_kernel():
    """γ = 0 makes s = γ/σ = 0 for a channel: the kernel must not divide by it (∇γ stays exact)."""
    require_kernel()
    model = _randomise_bn(random_model("mnist-cnn", 10, (1, 28, 28), seed=0))
    with torch.no_grad():
        model.net.layer1.bn1.weight[3] = 0.0
        model.net.layer2.bn2.weight[:5] = 0.0
    x = _batch((1, 28, 28), 3, seed=6)
    ref = reference_stats(model, x, "nll_pred")
    res = GradientPass(model, x, fold_bn=True).layer_stats(c_kernel="on")
    plain = GradientPass(model, x, fold_bn=False).layer_stats(c_kernel="off")
    assert res.values.isfinite().all()
    # float32 is only as close to the float64 loop as the unfolded eager engine is (~3e-4 here) ...
    assert_stats_close(res, ref, rtol=1e-3)
    # ... and folded equals unfolded far closer than that
    assert_stats_close(res, _as_ref(plain), rtol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("route", [DOT_PRODUCTS, RECOMPUTED])
@pytest.mark.parametrize("dtype, mode", [(torch.float64, "off"), (torch.float32, "on")])
def test_both_routes_to_the_folded_gamma_gradient(route, dtype, mode, monkeypatch):
    """Σ_p δz y from dot products with W, or from the recomputed conv output: the same numbers."""
    if mode == "on":
        require_kernel()
    model = _randomise_bn(random_model("resnet18", 10, (3, 32, 32), seed=0)).to(dtype)
    x = _batch((3, 32, 32), 3, seed=7)
    plain = GradientPass(model, x, fold_bn=False).layer_stats(c_kernel=mode)
    monkeypatch.setattr(ConvPlan, "fold_route", lambda self, strategy: RECOMPUTED if strategy == "gram" else route)
    folded = GradientPass(model, x, fold_bn=True).layer_stats(c_kernel=mode)
    # float32: as close as the unfolded float32 engine is to float64 on this model (max/min of a
    # rank-one layer relative to its RMS: 1.8e-4); float64: to rounding
    assert folded.layers == plain.layers
    assert_stats_close(folded, _as_ref(plain), rtol=1e-10 if dtype == torch.float64 else 5e-4)


class _NoAffine(nn.Module):
    """A BatchNorm without γ/β (nothing of its own to report) after a biased conv, then one with them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 5, 3, padding=1, bias=True), nn.BatchNorm2d(5, affine=False)
        self.conv2, self.bn2 = nn.Conv2d(5, 4, 3, stride=2, bias=True), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu_(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def test_batchnorm_without_affine_parameters_folds_too():
    torch.manual_seed(1)
    model = _wrap(_NoAffine(), (2, 7, 7), 3).double()
    with torch.no_grad():
        for bn in (model.net.bn1, model.net.bn2):
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c) * 0.5)
            bn.running_var.copy_(torch.rand(c) + 0.5)
        model.net.bn2.weight.copy_(torch.randn(4) * 0.5 + 1.0)
        model.net.bn2.bias.copy_(torch.randn(4) * 0.2)
    x = _batch((2, 7, 7), 4, seed=8)
    twin = twin_of(model.net)
    assert twin is not None and set(twin.folds) == {"conv1", "conv2"}
    names = [n for n, _ in parametrised_layers(model)]
    assert "bn1" not in names  # no parameters: not a layer of the engine
    folded, plain = _both(model, x)
    assert folded.layers == plain.layers
    assert torch.allclose(folded.values.double(), plain.values.double(), rtol=1e-9, atol=1e-12)
    assert_stats_close(folded, reference_stats(model, x, "nll_pred"), rtol=1e-6)


def _as_ref(res) -> dict:
    """A LayerStats in the reference's shape {group: {stat: (B,)}}, to compare two engine runs."""
    return {n: {s: res.get(s, [n])[:, 0].double() for s in res.stats} for n in res.layers}
