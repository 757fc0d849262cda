"""Swin maps: the captured window attention placed at its tokens reproduces each block's own output (torchvision's
V1 and V2 and timm's blocks, shifted windows), and every map a random swin_t offers has the image's shape, is
finite, responds to the input and leaves the model clean."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

from gradviz.errors import MethodError
from gradviz.explain.attributions import attribute, default_attributions
from gradviz.explain.scores import explain_score
from gradviz.explain.window_maps import _mix, _split, capture_windows, is_windowed, window_blocks
from gradviz.models import GradvizModel
from gradviz.models.card import ModelCard

SIZE = (3, 64, 64)  # swin_t's smallest input whose last stage is still a 2×2 grid


def _dense(per_window: torch.Tensor, index: torch.Tensor, tokens: int) -> torch.Tensor:
    """(B, windows, ..., N, N) at the window positions -> (B, ..., T, T) over the grid's tokens (padding dropped)."""
    b, lead = per_window.shape[0], per_window.shape[2:-2]
    out = per_window.new_zeros(b, *lead, tokens, tokens)
    for w, rows in enumerate(index.tolist()):
        for i, ti in enumerate(rows):
            for j, tj in enumerate(rows):
                if ti >= 0 and tj >= 0:
                    out[..., ti, tj] = per_window[:, w, ..., i, j]
    return out


def _check_block_output(attention, qkv, proj, out, x, heads):
    """``out`` (B, H, W, C) = proj(A_dense · V) with A assembled from the captured windows (no padding here)."""
    b, h, w, c = x.shape
    dense = _dense(attention.per_window(attention.attn), attention.index, h * w)  # (B, heads, T, T)
    v = qkv(x.reshape(b, h * w, c))[..., 2 * c:].reshape(b, h * w, heads, c // heads).transpose(1, 2)
    expected = proj((dense @ v).transpose(1, 2).reshape(b, h * w, c))
    torch.testing.assert_close(out.reshape(b, h * w, c), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", [ShiftedWindowAttention, ShiftedWindowAttentionV2])
def test_torchvision_shifted_windows_are_placed_at_their_tokens(kind):
    torch.manual_seed(0)
    block = kind(dim=8, window_size=[4, 4], shift_size=[2, 2], num_heads=2).eval()
    x = torch.randn(2, 8, 8, 8)  # (B, H, W, C): 4 windows of 16, shifted by 2
    with torch.no_grad(), capture_windows(block) as records:
        out = block(x)
    assert len(records) == 1 and records[0].grid == (8, 8) and records[0].index.shape == (4, 16)
    assert sorted(records[0].index.reshape(-1).tolist()) == list(range(64))  # every token in exactly one window
    q_k_v = torch.nn.Linear(8, 24)
    q_k_v.weight, q_k_v.bias = block.qkv.weight, block.qkv.bias
    _check_block_output(records[0], q_k_v, block.proj, out, x, heads=2)
    assert "forward" not in block.__dict__  # the class's forward is back


def test_timm_shifted_windows_are_placed_at_their_tokens():
    swin = pytest.importorskip("timm.models.swin_transformer")
    torch.manual_seed(0)
    block = swin.SwinTransformerBlock(dim=8, input_resolution=(8, 8), num_heads=2, window_size=4, shift_size=2).eval()
    fused = block.attn.fused_attn
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad(), capture_windows(block) as records:
        out = block._attn(x)
    assert len(records) == 1 and records[0].grid == (8, 8)
    _check_block_output(records[0], block.attn.qkv, block.attn.proj, out, x, heads=2)
    assert "_attn" not in block.__dict__ and block.attn.fused_attn == fused


def test_mixing_through_windows_is_the_dense_product():
    g = torch.Generator().manual_seed(0)
    index = torch.tensor([[0, 1, 4, 5], [2, 3, 6, -1], [-1, 7, -1, -1]])  # 8 tokens, padding included
    m = torch.rand(2, 3, 4, 4, generator=g)
    r = torch.rand(2, 8, generator=g)
    torch.testing.assert_close(_mix(r, index, m), (r[:, None] @ _dense(m, index, 8))[:, 0])
    merged = torch.rand(2, 4, generator=g)  # a 2×2 grid merged from 3×3 (padded to 4×4): relevance is kept
    fine = _split(merged, (2, 2), (3, 3)).reshape(2, 3, 3)
    torch.testing.assert_close(fine.sum((1, 2)), merged.sum(1))
    assert fine[0, 2, 2] == pytest.approx(merged[0, 3].item()) and fine[0, 0, 0] == pytest.approx(merged[0, 0] / 4)


@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(0)
    net = torchvision.models.swin_t(num_classes=4)
    for blk in window_blocks(net):  # sharper attention than at initialisation, so that the maps vary visibly
        blk.module.qkv.weight.data.mul_(6.0)
    card = ModelCard(name="random:swin_t", architecture="swin_t", input_size=SIZE, mean=(0.5,) * 3, std=(0.25,) * 3,
                     class_names=list("abcd"))
    return GradvizModel(net, card).eval()


def _images(seed: int) -> torch.Tensor:
    return torch.rand(2, *SIZE, generator=torch.Generator().manual_seed(seed))


def test_every_swin_map_has_the_image_shape_is_finite_and_responds_to_the_input(swin):
    assert is_windowed(swin)
    names = default_attributions(swin)
    assert names == ["saliency", "attention_rollout", "transformer_relevance", "gradcam"]
    for name in names:
        a, b = attribute(swin, _images(1), name), attribute(swin, _images(2), name)
        assert a.maps.shape == (2, 64, 64) and torch.isfinite(a.maps).all(), name
        scale = a.maps.abs().max()
        assert scale > 0 and (a.maps - b.maps).abs().max() > 1e-3 * scale, name
        assert (a.maps[0] - a.maps[0].mean()).abs().max() > 1e-3 * scale, name  # not a constant map
    cam = attribute(swin, _images(1), "gradcam")
    assert cam.layer == "features.7" and cam.raw.shape == (2, 1, 2, 2) and "channels last" in cam.note
    rollout = attribute(swin, _images(1), "attention_rollout")
    assert rollout.raw.shape == (2, 1, 16, 16) and "mean over the last stage" in rollout.note
    torch.testing.assert_close(rollout.raw.sum((1, 2, 3)), torch.ones(2), rtol=1e-4, atol=1e-4)  # mass is kept
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in swin.modules())
    assert all("forward" not in blk.module.__dict__ for blk in window_blocks(swin))


def test_swin_relevance_depends_on_what_is_explained(swin):
    x = _images(1)
    by_class = [attribute(swin, x, "transformer_relevance", target=t).raw for t in (0, 3)]
    assert not torch.allclose(*by_class)
    energy = explain_score(swin, x, "transformer_relevance", "energy")
    assert torch.isfinite(energy.maps).all() and not torch.allclose(energy.raw, by_class[0])
    assert explain_score(swin, x, "gradcam", "energy").layer == "features.7"
    with pytest.raises(MethodError, match="double backprop"):
        explain_score(swin, x, "transformer_relevance", "grad_l2")
    with pytest.raises(MethodError, match="double backprop"):
        explain_score(swin, x, "gradcam", "grad_l2")


def test_gradcam_on_a_chosen_swin_stage(swin):
    att = attribute(swin, _images(1), "gradcam", layer="features.5")  # the third stage: a 4×4 grid
    assert att.raw.shape == (2, 1, 4, 4) and att.maps.shape == (2, 64, 64) and att.layer == "features.5"
    patch = attribute(swin, _images(1), "gradcam", layer="features.0.0")  # the patch embedding is channels first
    assert patch.raw.shape == (2, 1, 16, 16)


def _timm_swin(**kwargs) -> GradvizModel:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=4, img_size=64, window_size=4,
                            depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1, 2, 2, 4), **kwargs)
    card = ModelCard(name="random:timm-swin", architecture="timm:swin", input_size=SIZE, mean=(0.5,) * 3,
                     std=(0.25,) * 3, class_names=list("abcd"))
    return GradvizModel(net, card).eval()


def test_timm_swin_offers_the_same_maps():
    model = _timm_swin()
    for name in default_attributions(model):
        att = attribute(model, _images(1), name)
        assert att.maps.shape == (2, 64, 64) and torch.isfinite(att.maps).all() and att.maps.abs().sum() > 0, name
    assert attribute(model, _images(1), "gradcam").layer == "layers.3.blocks"


def test_a_swin_head_without_a_mean_readout_says_why_there_is_no_rollout():
    model = _timm_swin(global_pool="max")
    for name in ("attention_rollout", "transformer_relevance"):
        with pytest.raises(MethodError, match="follow the head's mean over the last stage's tokens.+'max'"):
            attribute(model, _images(1), name)
    assert attribute(model, _images(1), "gradcam").maps.shape == (2, 64, 64)  # Grad-CAM needs no readout row
