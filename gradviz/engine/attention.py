"""``F.multi_head_attention_forward`` decomposed so that its projections run batch-first.

``nn.MultiheadAttention`` (torchvision's ViT, many user models) never calls its projection
modules: PyTorch's functional attention multiplies ``in_proj_weight`` and ``out_proj.weight``
directly, on (tokens, batch, dim) tensors and, for the output projection, on a
(tokens·batch, dim) matrix whose rows interleave the samples. The engine's capture
(:mod:`gradviz.engine.capture`) replaces that one call by :func:`mha_forward`: the same
computation (the same ``F.linear`` calls on the same parameters, ``F.scaled_dot_product_attention``
for the attention itself), on (batch, tokens, dim) tensors. The engine then sees two Linear layers
over tokens, whose per-sample gradients it knows how to reduce, and every sample owns its rows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gradviz.errors import GradvizError

__all__ = ["mha_forward"]


def _merged_mask(attn_mask, key_padding_mask, b: int, heads: int, t: int, s: int, dtype) -> torch.Tensor | None:
    """One additive float mask (b, heads, t, s) from PyTorch's two optional masks (bool = masked out)."""
    mask = None
    for m, shape in ((attn_mask, None), (key_padding_mask, (b, 1, 1, s))):
        if m is None:
            continue
        m = m.to(dtype).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m.to(dtype)
        if shape is not None:
            m = m.view(shape)
        elif m.dim() == 2:
            m = m.view(1, 1, t, s)
        else:  # (b·heads, t, s)
            m = m.view(b, heads, t, s)
        mask = m if mask is None else mask + m
    return mask


def mha_forward(query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias, bias_k, bias_v,
                add_zero_attn, dropout_p, out_proj_weight, out_proj_bias, training=True, key_padding_mask=None,
                need_weights=True, attn_mask=None, use_separate_proj_weight=False, q_proj_weight=None,
                k_proj_weight=None, v_proj_weight=None, static_k=None, static_v=None, average_attn_weights=True,
                is_causal=False):
    """Same signature and result as ``F.multi_head_attention_forward`` (eval-mode features that
    classifiers use; ``bias_k``/``bias_v``, zero attention, static keys and dropout in training mode
    raise a clear error)."""
    if bias_k is not None or bias_v is not None or add_zero_attn or static_k is not None or static_v is not None:
        raise GradvizError("MultiheadAttention with bias_k/bias_v, add_zero_attn or static keys is not supported "
                           "by the per-sample gradient engine")
    if training and dropout_p > 0:
        raise GradvizError("attention dropout in training mode: per-sample gradients need the model in eval()")
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
    t, b, e = query.shape
    s = key.shape[0]
    if e != embed_dim_to_check:
        raise GradvizError(f"attention expects embedding dim {embed_dim_to_check}, got {e}")
    hd = e // num_heads
    q_in, k_in, v_in = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)  # (b, t|s, e) views
    if not use_separate_proj_weight:
        if query is key and key is value:  # self-attention: one projection of the packed weight
            q, k, v = F.linear(q_in, in_proj_weight, in_proj_bias).chunk(3, dim=-1)
        else:
            w_q, w_k, w_v = in_proj_weight.chunk(3)
            b_q, b_k, b_v = (None, None, None) if in_proj_bias is None else in_proj_bias.chunk(3)
            q, k, v = F.linear(q_in, w_q, b_q), F.linear(k_in, w_k, b_k), F.linear(v_in, w_v, b_v)
    else:
        b_q, b_k, b_v = (None, None, None) if in_proj_bias is None else in_proj_bias.chunk(3)
        q, k, v = F.linear(q_in, q_proj_weight, b_q), F.linear(k_in, k_proj_weight, b_k), \
            F.linear(v_in, v_proj_weight, b_v)
    q = q.reshape(b, t, num_heads, hd).transpose(1, 2)  # (b, heads, t, hd)
    k = k.reshape(b, s, num_heads, hd).transpose(1, 2)
    v = v.reshape(b, s, num_heads, hd).transpose(1, 2)
    mask = _merged_mask(attn_mask, key_padding_mask, b, num_heads, t, s, q.dtype)
    dropout = dropout_p if training else 0.0
    weights = None
    if need_weights:
        scores = q @ k.transpose(-2, -1) / math.sqrt(hd)
        if mask is not None:
            scores = scores + mask
        elif is_causal:
            scores = scores.masked_fill(torch.ones(t, s, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        attn = scores.softmax(-1)
        out = attn @ v
        weights = attn.mean(1) if average_attn_weights else attn
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                             is_causal=is_causal and mask is None)
    out = F.linear(out.transpose(1, 2).reshape(b, t, e), out_proj_weight, out_proj_bias)  # (b, t, e)
    out = out.transpose(0, 1)  # (t, b, e) as PyTorch returns it
    if unbatched:
        out = out.squeeze(1)
        weights = None if weights is None else weights.squeeze(0)
    return out, weights
