"""Attributions (captum wrappers) and overlay rendering."""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from gradviz.explain.attributions import (
    ATTRIBUTIONS,
    attribute,
    default_gradcam_layer,
    heatmap_rgb,
    list_attributions,
    render_overlay,
    to_png_bytes,
)
from gradviz.errors import GradvizError
from gradviz.models import GradvizModel
from gradviz.models.zoo import random_model

FAST = {
    "integrated_gradients": {"n_steps": 8},
    "occlusion": {"window": 7, "stride": 7},
    "smoothgrad": {"nt_samples": 4, "nt_samples_batch_size": 4},
}


@pytest.fixture(scope="module")
def model() -> GradvizModel:
    return random_model("mnist-cnn", 10, (1, 28, 28), seed=0)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(3, 1, 28, 28)


def hook_count(module: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in module.modules()
    )


def test_registry_lists_every_method_with_defaults():
    names = [info.name for info in list_attributions()]
    assert names == list(ATTRIBUTIONS)
    assert {"saliency", "integrated_gradients", "input_x_gradient", "guided_backprop", "gradcam",
            "occlusion", "smoothgrad"} <= set(names)
    assert ATTRIBUTIONS["gradcam"].kind == "layer"
    assert ATTRIBUTIONS["integrated_gradients"].defaults["n_steps"] == 32


@pytest.mark.parametrize("method", list(ATTRIBUTIONS))
def test_every_method_returns_input_sized_maps_and_leaves_model_clean(model, images, method):
    if ATTRIBUTIONS[method].kind == "attention":  # transformer-only maps run on a ViT
        model = random_model("mnist-vit", 10, (1, 28, 28), seed=0)
    before = hook_count(model)
    requires = [p.requires_grad for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning spam from captum either
        att = attribute(model, images, method, **FAST.get(method, {}))
    assert att.maps.shape == (3, 28, 28)
    assert torch.isfinite(att.maps).all()
    assert att.method == method and att.target.shape == (3,)
    assert hook_count(model) == before
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == requires
    assert not model.training


def test_saliency_matches_autograd_abs_gradient(model, images):
    att = attribute(model, images, "saliency", target=4)
    x = images.clone().requires_grad_()
    (g,) = torch.autograd.grad(model(x)[:, 4].sum(), x)
    torch.testing.assert_close(att.raw, g.abs(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(att.maps, g.abs().sum(1), rtol=1e-5, atol=1e-7)


def test_target_none_explains_the_predicted_class(model, images):
    att = attribute(model, images, "saliency")
    with torch.no_grad():
        assert torch.equal(att.target, model(images).argmax(-1))


def test_input_x_gradient_is_input_times_gradient(model, images):
    target = torch.tensor([0, 5, 9])
    att = attribute(model, images, "input_x_gradient", target=target)
    x = images.clone().requires_grad_()
    (g,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    torch.testing.assert_close(att.raw, images * g, rtol=1e-5, atol=1e-7)


def test_integrated_gradients_completeness(model, images):
    att = attribute(model, images, "integrated_gradients", target=2, n_steps=64)
    with torch.no_grad():
        gap = model(images)[:, 2] - model(torch.zeros_like(images))[:, 2]
    sums = att.raw.flatten(1).sum(1)
    torch.testing.assert_close(sums, gap, rtol=0.02, atol=0.02 * gap.abs().max().item() + 1e-4)
    assert "completeness gap" in att.note


def test_gradcam_upsamples_to_input_size_and_names_the_last_executed_conv(model, images):
    att = attribute(model, images, "gradcam")
    # the projection shortcut (layer3.downsample.0) is registered last but runs first
    assert att.layer == "layer3.conv2" == default_gradcam_layer(model)
    assert att.layer in att.note
    assert att.maps.shape == (3, 28, 28)
    assert att.raw.shape == (3, 1, 7, 7)
    assert (att.maps >= 0).all()  # ReLU(Σ α_k A_k), bilinear upsampling keeps it non-negative


def test_gradcam_accepts_an_explicit_layer_and_rejects_unknown_ones(model, images):
    att = attribute(model, images[:1], "gradcam", layer="layer2.conv2")
    assert att.layer == "layer2.conv2" and att.raw.shape[-2:] == (14, 14)
    with pytest.raises(GradvizError, match="no layer named"):
        attribute(model, images[:1], "gradcam", layer="nope")


def test_guided_backprop_on_resnet18_with_inplace_reused_relu_matches_unique_relus():
    net_model = random_model("resnet18", 10, (3, 32, 32), seed=0)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    before = hook_count(net_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        att = attribute(net_model, x, "guided_backprop", target=3)
    assert hook_count(net_model) == before
    assert all(p.grad is None for p in net_model.parameters())

    # reference: the same net traced with every ReLU call a separate, non-in-place module
    import torch.fx as fx
    from captum.attr import GuidedBackprop

    gm = fx.symbolic_trace(copy.deepcopy(net_model.net))
    n = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.ReLU):
            gm.add_submodule(f"relu_unique_{n}", nn.ReLU(inplace=False))
            node.target = f"relu_unique_{n}"
            n += 1
    gm.recompile()
    assert n > 10  # resnet18 calls its few ReLU modules 17 times
    ref_model = GradvizModel(gm, net_model.card)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = GuidedBackprop(ref_model).attribute(x.clone().requires_grad_(), target=3)
    torch.testing.assert_close(att.raw, ref, rtol=1e-5, atol=1e-7)
    assert att.raw.abs().sum() > 0


def test_guided_backprop_without_relu_modules_gives_clear_error():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(torch.tanh(self.conv(x)).mean((2, 3)))

    tiny = GradvizModel(Tiny(), random_model().card)
    with pytest.raises(GradvizError, match="nn.ReLU"):
        attribute(tiny, torch.rand(1, 1, 28, 28), "guided_backprop")


def test_bad_method_params_and_inputs_raise_gradviz_error(model, images):
    with pytest.raises(GradvizError, match="unknown attribution method 'shap'"):
        attribute(model, images, "shap")
    with pytest.raises(GradvizError, match="unknown parameter"):
        attribute(model, images, "saliency", n_steps=3)
    with pytest.raises(GradvizError, match="channel"):
        attribute(model, torch.rand(1, 3, 28, 28), "saliency")
    with pytest.raises(GradvizError, match="out of range"):
        attribute(model, images, "saliency", target=10)
    with pytest.raises(GradvizError, match="B, C, H, W"):
        attribute(model, images[0], "saliency")


def test_overlay_shape_dtype_and_upscaling():
    img = torch.rand(1, 28, 28)
    a = torch.randn(28, 28)
    out = render_overlay(img, a)
    assert out.shape == (28, 28, 3) and out.dtype == np.uint8
    big = render_overlay(img, a, mode="signed", size=224, alpha=0.7)
    assert big.shape == (224, 224, 3) and big.dtype == np.uint8
    assert big.min() >= 0 and big.max() <= 255
    rgb = render_overlay(torch.rand(3, 16, 20), torch.randn(16, 20), size=32)
    assert rgb.shape == (32, 40, 3)


def test_overlay_alpha_zero_returns_the_image():
    img = torch.rand(1, 28, 28)
    out = render_overlay(img, torch.randn(28, 28), alpha=0.0)
    expected = np.rint(img[0].numpy() * 255).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


def test_signed_mode_maps_zero_to_the_middle_of_a_diverging_map():
    import matplotlib

    a = torch.zeros(8, 8)
    a[0, 0], a[0, 1] = 1.0, -1.0
    heat = heatmap_rgb(a, mode="signed")
    mid = np.rint(np.asarray(matplotlib.colormaps["RdBu_r"](0.5))[:3] * 255)
    np.testing.assert_allclose(heat[4, 4], mid, atol=1)
    # positive end red, negative end blue
    assert heat[0, 0, 0] > heat[0, 0, 2] and heat[0, 1, 2] > heat[0, 1, 0]
    # absolute mode: zero is the dark start of the sequential map, |±1| both bright
    absolute = heatmap_rgb(a, mode="absolute")
    assert absolute[4, 4].sum() < absolute[0, 0].sum() and np.array_equal(absolute[0, 0], absolute[0, 1])


def test_overlay_scale_is_robust_to_one_outlier_pixel():
    a = torch.linspace(0, 1, 100 * 100).reshape(100, 100)
    a[0, 0] = 1e6  # one outlier must not black out the rest of the map
    heat = heatmap_rgb(a, mode="absolute")
    assert heat[99, 98].sum() > heatmap_rgb(torch.zeros(100, 100))[0, 0].sum() + 200


def test_rendering_rejects_bad_mode_cmap_alpha_and_shapes():
    img, a = torch.rand(1, 8, 8), torch.randn(8, 8)
    with pytest.raises(GradvizError, match="mode"):
        render_overlay(img, a, mode="both")
    with pytest.raises(GradvizError, match="colour map"):
        render_overlay(img, a, cmap="no-such-map")
    with pytest.raises(GradvizError, match="alpha"):
        render_overlay(img, a, alpha=1.5)
    with pytest.raises(GradvizError, match="channels"):
        render_overlay(torch.rand(2, 8, 8), a)


def test_png_bytes_round_trip():
    from PIL import Image

    arr = render_overlay(torch.rand(1, 10, 12), torch.randn(10, 12))
    data = to_png_bytes(arr)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), arr)
    with pytest.raises(GradvizError):
        to_png_bytes(np.zeros((4, 4, 3), dtype=np.float32))
