"""Maps made for vision transformers: attention rollout, gradient-weighted attention relevance, and Grad-CAM on
token layers — each with the patch grid mapped back onto the image.

- Attention rollout (Abnar & Zuidema, ACL 2020): per layer the head-averaged attention A plus the identity (the
  residual), rows renormalised; R = Â_L ··· Â_1. The map is the class token's row over the patch tokens. No
  gradient: the same for every class and score.
- Gradient-weighted relevance (Chefer, Gur & Wolf, "Generic Attention-model Explainability", ICCV 2021):
  R = I; for each layer in order Ā = E_h[(∇_A y ⊙ A)⁺], R ← R + Ā R; the class token's row over the patches.
  y = the target logit, or an uncertainty score (:func:`gradviz.explain.scores.score_fn`).
- Token Grad-CAM: at a block's output tokens T (B, 1+N, D), w_d = mean over patch tokens of ∂y/∂T, map =
  ReLU(Σ_d w_d T_{·,d}) over the patch tokens, reshaped to the patch grid.

Attention probabilities are captured inside a ``with`` block (:func:`capture_attention`): torchvision's
``nn.MultiheadAttention`` is asked for per-head weights (a forward pre-hook sets ``need_weights``), timm's
``Attention`` runs its explicit (non-fused) path and its ``attn_drop`` output is read; hooks and the fused flag
are restored on exit. Works for ViT/DeiT-style models with a class token (torchvision, timm, the bundled
``mnist-vit``). Windowed attention (Swin) has no class token and no global token grid: its maps are in
:mod:`gradviz.explain.window_maps`, and :func:`attention_rollout`, :func:`attention_relevance` hand such models over.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from gradviz.errors import MethodError

__all__ = ["attention_modules", "capture_attention", "attention_rollout", "attention_relevance", "token_gradcam",
           "default_token_layer", "is_transformer"]


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name inside ``model.net``, module) of every global self-attention layer, in registration order."""
    root = getattr(model, "net", model)
    out = []
    for name, m in root.named_modules():
        timm_global = (hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Module)
                       and not hasattr(m, "window_size"))  # timm's windowed attention: gradviz.explain.window_maps
        if isinstance(m, nn.MultiheadAttention) or timm_global:
            out.append((name, m))
    return out


def is_transformer(model: nn.Module) -> bool:
    """True for a model with global or windowed (Swin, :mod:`gradviz.explain.window_maps`) self-attention layers."""
    from gradviz.explain.window_maps import is_windowed

    return bool(attention_modules(model)) or is_windowed(model)


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block every forward appends each attention layer's probabilities (B, heads, T, T), graph kept."""
    layers = attention_modules(model)
    if not layers:
        raise MethodError("attention maps need a vision transformer (nn.MultiheadAttention or timm Attention layers); "
                          "this model has none — use saliency or Grad-CAM")
    store: list[torch.Tensor] = []
    handles, fused, patched = [], [], []
    try:
        for _, m in layers:
            if isinstance(m, nn.MultiheadAttention):
                # the weights nn.MultiheadAttention returns are a view outside the graph of its output: run the
                # same computation explicitly so that the gradient w.r.t. A exists (restored on exit)
                if m.in_proj_weight is None or m.bias_k is not None or m.add_zero_attn:
                    raise MethodError("attention maps support nn.MultiheadAttention with one packed in-projection "
                                      "and no bias_k / zero attention")
                m.forward = _explicit_attention(m, store)
                patched.append(m)
            else:
                fused.append((m, m.fused_attn))
                m.fused_attn = False
                handles.append(m.attn_drop.register_forward_hook(lambda _m, _a, out: store.append(out)))
        yield store
    finally:
        for h in handles:
            h.remove()
        for m in patched:
            del m.forward  # back to the class's forward
        for m, flag in fused:
            m.fused_attn = flag


def _explicit_attention(m: nn.MultiheadAttention, store: list) -> Callable:
    """nn.MultiheadAttention's self-attention written out (no masks, eval mode), recording A (B, heads, T, T)."""
    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None, *args, **kwargs):
        if key_padding_mask is not None or attn_mask is not None:
            raise MethodError("attention maps do not support masked attention")
        q_in = query if m.batch_first else query.transpose(0, 1)  # (B, T, E)
        k_in = key if m.batch_first else key.transpose(0, 1)
        v_in = value if m.batch_first else value.transpose(0, 1)
        b, t, e = q_in.shape
        heads, d = m.num_heads, e // m.num_heads
        w, bias = m.in_proj_weight, m.in_proj_bias
        bq, bk, bv = bias.chunk(3) if bias is not None else (None, None, None)
        wq, wk, wv = w.chunk(3)

        def split(z):  # (B, T, E) -> (B, heads, T, d)
            return z.reshape(b, -1, heads, d).transpose(1, 2)

        q, k, v = split(F.linear(q_in, wq, bq)), split(F.linear(k_in, wk, bk)), split(F.linear(v_in, wv, bv))
        a = (q @ k.transpose(-2, -1) / d ** 0.5).softmax(-1)  # (B, heads, T, S)
        store.append(a)
        out = m.out_proj((a @ v).transpose(1, 2).reshape(b, t, e))
        return (out if m.batch_first else out.transpose(0, 1)), None
    return forward


def _grid(model: nn.Module, tokens: int) -> tuple[int, int, int]:
    """(prefix tokens, grid height, grid width) of a token sequence of length ``tokens``."""
    h, w = model.card.input_size[-2:]
    conv = next((m for m in getattr(model, "net", model).modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise MethodError("cannot find the patch embedding (a Conv2d) to map tokens onto the image")
    gh, gw = h // conv.stride[0], w // conv.stride[1]
    prefix = tokens - gh * gw
    if prefix < 0 or prefix > 8:
        raise MethodError(f"{tokens} tokens do not form a {gh}×{gw} patch grid plus class token(s), so they cannot "
                          "be placed on the image; use saliency or Grad-CAM")
    return prefix, gh, gw


def _to_image(model: nn.Module, row: torch.Tensor, prefix: int, gh: int, gw: int) -> torch.Tensor:
    """Patch values (B, N) -> maps (B, H, W) at the input size (bilinear)."""
    grid = row[:, prefix:].reshape(row.shape[0], 1, gh, gw)
    return F.interpolate(grid, size=tuple(model.card.input_size[-2:]), mode="bilinear", align_corners=False)[:, 0]


def explained_output(model, forward: Callable | None, x: torch.Tensor, target: torch.Tensor | None):
    """y (B,): ``forward(x)`` (an uncertainty score) when given, else the ``target`` logit (None: no target)."""
    if forward is not None:
        return forward(x)
    logits = model(x)
    return logits.gather(1, target[:, None])[:, 0] if target is not None else None


def layer_outputs(model, layer: nn.Module, x: torch.Tensor, target: torch.Tensor | None,
                  forward: Callable | None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(``layer``'s outputs recorded during one forward with gradients, y (B,) the explained output)."""
    store: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _a, out: store.append(out[0] if isinstance(out, tuple) else out))
    try:
        with model.lock, torch.enable_grad():
            y = explained_output(model, forward, x, target)
    finally:
        handle.remove()
    return store, y


def _run(model, forward: Callable | None, x: torch.Tensor, target: torch.Tensor | None, need_grad: bool):
    """(attention list of the LAST forward, y (B,) the explained output or None)."""
    n = len(attention_modules(model))
    with model.lock, capture_attention(model) as store, torch.set_grad_enabled(need_grad):
        y = explained_output(model, forward, x, target)
    if len(store) < n:
        raise MethodError("the attention layers were not called during the forward pass")
    return store[-n:], y


def attention_rollout(model: nn.Module, x: torch.Tensor, discard_ratio: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps (B, H, W), patch relevance (B, 1, gh, gw)) of attention rollout; ``discard_ratio`` drops that fraction
    of the smallest head-averaged attention entries per layer (Gildenblat's variant; 0 = the paper)."""
    from gradviz.explain.window_maps import is_windowed, window_rollout

    if not 0.0 <= float(discard_ratio) < 1.0:
        raise MethodError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    if is_windowed(model):
        return window_rollout(model, x, float(discard_ratio))
    attns, _ = _run(model, None, x, None, need_grad=False)
    rollout = None
    for a in attns:
        a = a.detach().float().mean(1)  # (B, T, T)
        if discard_ratio > 0:
            flat = a.reshape(a.shape[0], -1)
            k = int(flat.shape[1] * discard_ratio)
            if k:
                low = flat.topk(k, dim=1, largest=False).indices
                flat = flat.scatter(1, low, 0.0)
                a = flat.reshape(a.shape)
        a = a + torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    prefix, gh, gw = _grid(model, rollout.shape[-1])
    row = rollout[:, 0]  # the class token's row
    return _to_image(model, row, prefix, gh, gw), row[:, prefix:].reshape(-1, 1, gh, gw)


def attention_relevance(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None,
                        forward: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps (B, H, W), patch relevance (B, 1, gh, gw)) of Chefer et al.'s gradient-weighted attention for the
    ``target`` logit, or for ``forward(x) -> (B,)`` (an uncertainty score) when given."""
    if forward is not None and not getattr(forward, "layer_maps", True):
        raise MethodError("this score re-runs the network per sample (double backprop), so its attention has no "
                          "single gradient — explain it with saliency, integrated_gradients or smoothgrad")
    from gradviz.explain.window_maps import is_windowed, window_relevance

    if is_windowed(model):
        return window_relevance(model, x, target, forward)
    attns, y = _run(model, forward, x, target, need_grad=True)
    grads = torch.autograd.grad(y.sum(), attns, allow_unused=True)
    t = attns[0].shape[-1]
    rel = torch.eye(t, device=x.device).expand(x.shape[0], t, t).clone()
    for a, g in zip(attns, grads):
        if g is None:
            continue
        cam = (g.detach() * a.detach()).clamp_min(0).mean(1).float()  # (B, T, T)
        rel = rel + cam @ rel
    prefix, gh, gw = _grid(model, t)
    row = rel[:, 0]
    return _to_image(model, row, prefix, gh, gw), row[:, prefix:].reshape(-1, 1, gh, gw)


def default_token_layer(model: nn.Module) -> str:
    """The block before the last attention layer: its output tokens are the last block's input, where every
    patch token still reaches the class token (after the last block only the class token is read, so the
    patch tokens' gradient there is zero). Name inside ``model.net``."""
    layers = attention_modules(model)
    if len(layers) < 2:
        raise MethodError("token Grad-CAM needs at least two transformer blocks — use saliency")
    name = layers[-2][0]
    return name.rsplit(".", 1)[0] if "." in name else name


def token_gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor | None,
                  forward: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps (B, H, W), patch map (B, 1, gh, gw)) of Grad-CAM at ``layer``'s output tokens (B, T, D)."""
    if forward is not None and not getattr(forward, "layer_maps", True):
        raise MethodError("Grad-CAM reads one layer's activations, but this score re-runs the network for each "
                          "sample's parameter gradient (double backprop) — explain it with saliency, "
                          "integrated_gradients or smoothgrad")
    store, y = layer_outputs(model, layer, x, target, forward)
    tokens = store[-1]
    if tokens.ndim != 3:
        raise MethodError(f"token Grad-CAM needs a layer with (B, tokens, channels) output; got {tuple(tokens.shape)}")
    (g,) = torch.autograd.grad(y.sum(), tokens)
    prefix, gh, gw = _grid(model, tokens.shape[1])
    weights = g[:, prefix:].mean(1, keepdim=True)  # (B, 1, D)
    cam = (weights * tokens[:, prefix:]).sum(-1).clamp_min(0).detach().float()  # (B, N)
    return _to_image(model, cam, 0, gh, gw), cam.reshape(-1, 1, gh, gw)
