"""Transformer maps: captured attention is the model's own (same logits, same weights as nn.MultiheadAttention
reports), rollout and relevance against direct computations, token Grad-CAM on the patch grid, clean model after."""

from __future__ import annotations

import pytest
import torch

from gradviz.explain.attributions import attribute, default_attributions
from gradviz.errors import MethodError
from gradviz.explain.scores import explain_score
from gradviz.models.zoo import random_model
from gradviz.explain.transformer_maps import (attention_modules, attention_relevance, attention_rollout,
                                              capture_attention)


@pytest.fixture(scope="module")
def vit():
    return random_model("mnist-vit", seed=0)


@pytest.fixture(scope="module")
def x():
    return torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _reference_attention(model, x) -> list[torch.Tensor]:
    """Per-head weights as nn.MultiheadAttention itself reports them (need_weights=True), layer by layer."""
    out = []

    def record(m, args, kwargs):
        with torch.no_grad():
            out.append(m.forward(args[0], args[0], args[0], need_weights=True, average_attn_weights=False)[1])

    handles = [m.register_forward_pre_hook(record, with_kwargs=True) for _, m in attention_modules(model)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return out


def test_captured_attention_is_the_models_own(vit, x):
    with torch.no_grad():
        plain = vit(x)
    with torch.no_grad(), capture_attention(vit) as store:
        captured = vit(x)
    torch.testing.assert_close(captured, plain, rtol=1e-5, atol=1e-5)
    ref = _reference_attention(vit, x)
    assert len(store) == len(ref) == 4 and store[0].shape == (2, 4, 17, 17)
    for a, b in zip(store, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all("forward" not in m.__dict__ for _, m in attention_modules(vit))  # the class's forward is back
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in vit.modules())


def test_rollout_matches_a_direct_computation(vit, x):
    maps, grid = attention_rollout(vit, x)
    r = torch.eye(17).expand(2, 17, 17)
    for a in _reference_attention(vit, x):
        a = a.mean(1) + torch.eye(17)
        r = (a / a.sum(-1, keepdim=True)) @ r
    torch.testing.assert_close(grid.reshape(2, 16), r[:, 0, 1:], rtol=1e-5, atol=1e-6)
    assert maps.shape == (2, 28, 28)
    assert grid[0, 0, 0, 0] == pytest.approx(maps[0, :7, :7].mean().item(), rel=0.2)  # patch (0, 0) lies top-left


def test_relevance_uses_the_gradient_of_the_target(vit, x):
    _, grid3 = attention_relevance(vit, x, torch.tensor([3, 3]))
    _, grid5 = attention_relevance(vit, x, torch.tensor([5, 5]))
    assert (grid3 >= 0).all() and grid3.sum() > 0
    assert not torch.allclose(grid3, grid5)  # rollout is class-blind; relevance is not
    # the first layer alone: E_h[(∂z_t/∂A ⊙ A)+] for the class token's row, computed with autograd directly
    with capture_attention(vit) as store:
        z = vit(x)
    (g,) = torch.autograd.grad(z[:, 3].sum(), store[0])
    first = (g * store[0]).clamp_min(0).mean(1)[:, 0, 1:]
    assert (first > 0).any()


def test_maps_render_on_the_bundled_vit_by_default_and_explain_a_score(vit, x):
    names = default_attributions(vit)
    assert names[:3] == ["saliency", "attention_rollout", "transformer_relevance"]
    for name in names:
        att = attribute(vit, x, name)
        assert att.maps.shape == (2, 28, 28) and torch.isfinite(att.maps).all() and att.maps.abs().sum() > 0, name
    cam = attribute(vit, x, "gradcam")
    assert cam.layer == "encoder.layers.encoder_layer_2" and cam.raw.shape == (2, 1, 4, 4)
    assert explain_score(vit, x, "transformer_relevance", "energy").maps.abs().sum() > 0
    with pytest.raises(MethodError, match="double backprop"):
        explain_score(vit, x, "transformer_relevance", "grad_l2")


def test_timm_vit_restores_its_fused_attention():
    from gradviz.models.timm_models import build_timm

    _, card = build_timm("test_vit", 10)
    model = random_model("timm:test_vit", input_size=card.input_size)
    before = [m.fused_attn for _, m in attention_modules(model)]
    att = attribute(model, torch.rand(1, *card.input_size), "transformer_relevance")
    assert att.raw.shape == (1, 1, 10, 10) and att.maps.shape == (1, *card.input_size[1:])
    assert [m.fused_attn for _, m in attention_modules(model)] == before


def test_attention_maps_on_a_cnn_say_what_to_use_instead(tiny_model, x):
    with pytest.raises(MethodError, match="need a vision transformer"):
        attribute(tiny_model, x, "attention_rollout")
    assert default_attributions(tiny_model) == ["saliency", "integrated_gradients", "gradcam"]
