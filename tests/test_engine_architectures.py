"""Every image classifier, exact: the engine against the float64 per-sample autograd loop on CNNs,
vision transformers, ConvNeXt, Swin, MaxViT and timm models (random weights, tiny inputs); the
coverage report accounts for every parameter; every uncertainty method runs on each."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models import maxvit as tv_maxvit

from gradviz.engine import fast_plans
from gradviz.errors import GradvizError
from gradviz.engine import coverage, layer_gradient_stats
from gradviz.methods import ModelOutputs, list_methods
from gradviz.models.zoo import random_model

from engine_reference import assert_stats_close, batch, randomise_bn, reference_stats, wrap

pytestmark = pytest.mark.slow  # every architecture, exact against autograd: ~2 min on two cores

tv = torchvision.models


def _timm(name, **kwargs):
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


# name -> (builder of the bare network, input size). Small inputs keep the float64 loop fast; where
# the named model needs large inputs (MaxViT: 224) its own class is built at a test size.
ARCHITECTURES = {
    "mnist-cnn": (lambda: random_model("mnist-cnn", 10, (1, 28, 28), seed=0).net, (1, 28, 28)),
    "resnet18": (lambda: tv.resnet18(num_classes=10), (3, 32, 32)),
    "mobilenet_v3_small": (lambda: tv.mobilenet_v3_small(num_classes=10), (3, 32, 32)),
    "efficientnet_b0": (lambda: tv.efficientnet_b0(num_classes=10), (3, 32, 32)),
    "densenet121": (lambda: tv.densenet121(num_classes=10), (3, 32, 32)),
    "regnet_y_400mf": (lambda: tv.regnet_y_400mf(num_classes=10), (3, 32, 32)),
    "convnext_tiny": (lambda: tv.convnext_tiny(num_classes=10), (3, 32, 32)),
    "vit_b_16": (lambda: tv.vit_b_16(image_size=32, num_classes=10), (3, 32, 32)),
    "swin_t": (lambda: tv.swin_t(num_classes=10), (3, 32, 32)),
    "maxvit_t (test size)": (lambda: tv_maxvit.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2,
                                                      block_channels=[8, 16], block_layers=[1, 1], head_dim=4,
                                                      stochastic_depth_prob=0.0, num_classes=10), (3, 32, 32)),
    "timm:deit_tiny": (lambda: _timm("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=2), (3, 32, 32)),
    "timm:convnext_atto": (lambda: _timm("convnext_atto"), (3, 32, 32)),
    "timm:swin_tiny": (lambda: _timm("swin_tiny_patch4_window7_224", img_size=56, window_size=7,
                                     depths=(1, 1, 1, 1)), (3, 56, 56)),
    # eval-mode attention-bias cache (recomputed per forward by GradvizModel); a stem whose BatchNorm output
    # gradient has channels-last strides (the reference loop works around PyTorch's BatchNorm backward there)
    "timm:levit_128s": (lambda: _timm("levit_128s", img_size=64), (3, 64, 64)),
    # each 16×16 patch embedded as its own image: the pixel conv's batch holds several images per sample
    "timm:tnt_s": (lambda: _timm("tnt_s_patch16_224", img_size=32, depth=1), (3, 32, 32)),
    # cross-covariance attention; a Fourier position encoding computed from parameters, repeated per sample
    "timm:xcit_nano": (lambda: _timm("xcit_nano_12_p16_224", depth=1), (3, 64, 64)),
    "timm:edgenext_xx_small": (lambda: _timm("edgenext_xx_small"), (3, 64, 64)),
}


def _model(name):
    build, size = ARCHITECTURES[name]
    torch.manual_seed(0)
    return randomise_bn(wrap(build(), size)), size


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_engine_is_exact_and_covers_every_parameter(name):
    model, size = _model(name)
    model64, x = model.double(), batch(size, 2, seed=1)
    ref = reference_stats(model64, x, "nll_pred")
    res = layer_gradient_stats(model64, x, loss="nll_pred")
    assert_stats_close(res, ref, rtol=1e-5)
    with fast_plans(False):  # every kind from its rule alone (no strategies, folding or kernel): the same numbers
        assert_stats_close(layer_gradient_stats(model64, x, loss="nll_pred", c_kernel="off"), ref, rtol=1e-5)
    # the criterion: Σ over groups of ‖∇θ_g ℓ_b‖² = the full per-sample gradient's ‖∇θ ℓ_b‖²
    total = sum(ref[g]["l2"] ** 2 for g in ref)
    assert ((res.get("l2").double() ** 2).sum(1) - total).abs().max() / total.max() < 1e-5
    report = coverage(model64)
    assert report.fraction == 1.0 and report.total == sum(p.numel() for p in model64.parameters())
    assert report.check() is report
    assert {r["status"] for r in report.rows} <= {"covered", "unused"}


# The only (architecture, method) pairs allowed to refuse, each with what its message must say. GROOD needs
# correctly classified fit images of a class; the random ResNet-18 classifies none of its 12 fit images right.
EXPECTED_REFUSALS = {
    ("resnet18", "grood"): "needs at least 1 correctly classified training images",
}
METHOD_ARCHITECTURES = ["vit_b_16", "swin_t", "convnext_tiny", "maxvit_t (test size)", "timm:deit_tiny", "resnet18"]


@pytest.mark.parametrize("name", METHOD_ARCHITECTURES)
def test_every_method_scores_or_gives_its_expected_refusal(name):
    """Every registered uncertainty method scores a batch of this architecture (finite, one per sample), except the
    refusals listed in EXPECTED_REFUSALS, which must happen, as a GradvizError with their one-line message."""
    model, size = _model(name)
    x = batch(size, 3, seed=2)
    batch_out = ModelOutputs.from_model(model, x, keep_graph=True)
    refused = {}
    for info in list_methods():
        runner = info.create()
        try:
            if info.needs_fit:
                runner.fit(model, batch(size, 12, seed=3), torch.arange(12) % 10)
            scores = runner.score(batch_out)
        except GradvizError as exc:
            refused[info.name] = str(exc)
            continue
        assert scores.shape == (3,) and torch.isfinite(scores).all(), info.name
    expected = {method: text for (arch, method), text in EXPECTED_REFUSALS.items() if arch == name}
    assert set(refused) == set(expected), {m: refused.get(m, "scored") for m in set(refused) ^ set(expected)}
    for method, message in refused.items():
        assert expected[method] in message and "\n" not in message.strip(), (method, message)
