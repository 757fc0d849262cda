"""Maps for windowed-attention transformers (Swin, torchvision and timm): attention rollout, gradient-weighted
relevance and Grad-CAM on a stage's (B, H, W, C) feature map — each mapped back onto the image.

Swin has no class token and no global attention: each block attends inside (shifted) windows of its stage's
token grid, stages are joined by patch merging (2×2 tokens -> 1), and the head reads the mean of the last
stage's tokens. The ViT definitions carry over with three substitutions:

- the class token's row becomes the head's readout, the uniform mean over the last stage's tokens (a head that
  pools otherwise, e.g. timm's ``global_pool="max"``, has no such row: rollout and relevance refuse it, saying so);
- a layer's token-to-token matrix is block diagonal: its windows' attention A (B, windows, heads, N, N), placed
  at the tokens each window holds (the block's own padding, cyclic shift and partition); the padding tokens a
  window holds where the grid does not divide into windows are dropped (rollout renormalises each row without them);
- patch merging splits a merged token's relevance equally among the (up to) 2×2 tokens it was made of.

Rollout (Abnar & Zuidema 2020): r ← r · Â_l from the last layer to the first, Â = rownorm(E_h[A] + I).
Relevance (Chefer, Gur & Wolf 2021): r ← r · (I + E_h[(∇_A y ⊙ A)⁺]), the same order. Both give r over the
first stage's grid (the patch grid). Grad-CAM at a stage: w_c = mean over positions of ∂y/∂F, map =
ReLU(Σ_c w_c F_{·,·,c}) over that stage's grid.

A is captured inside a ``with`` block (:func:`capture_windows`): each windowed attention call is wrapped on its
instance (the class's forward is restored on exit) and records the softmax it computes, graph kept, through a
thread-local :class:`~torch.overrides.TorchFunctionMode`; timm's fused-attention flag is cleared meanwhile.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from gradviz.errors import MethodError
from gradviz.explain.transformer_maps import explained_output, layer_outputs

__all__ = ["READOUT_NOTE", "window_blocks", "is_windowed", "capture_windows", "window_rollout", "window_relevance",
           "default_stage_layer", "stage_gradcam"]

_SOFTMAX = (F.softmax, torch.softmax, torch.Tensor.softmax)
READOUT_NOTE = "Swin: the head's mean over the last stage's tokens, through the shifted windows and patch merging"


@dataclass(frozen=True)
class _Block:
    name: str  # inside ``model.net``: the module that takes the stage's (B, H, W, C) tokens
    module: nn.Module
    method: str  # the instance method wrapped: it receives (B, H, W, C)
    style: str  # "torchvision" (pad, then shift) | "timm" (shift, then pad)


@dataclass
class WindowAttention:
    """One windowed attention call: the probabilities as computed (B·windows, heads, N, N), graph kept; the token
    each window position holds (windows, N), -1 for padding; the stage's grid (H, W)."""

    attn: torch.Tensor
    index: torch.Tensor
    grid: tuple[int, int]

    def per_window(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` shaped like :attr:`attn` -> (B, windows, heads, N, N)."""
        return t.reshape(-1, self.index.shape[0], *t.shape[1:])


def window_blocks(model: nn.Module) -> list[_Block]:
    """Every windowed self-attention of ``model`` in registration order: torchvision's ShiftedWindowAttention(V2)
    and timm's Swin blocks (a ``_attn`` taking (B, H, W, C) with ``window_size`` and ``shift_size``)."""
    from torchvision.models import swin_transformer as tv_swin

    tv_kinds = (tv_swin.ShiftedWindowAttention, tv_swin.ShiftedWindowAttentionV2)
    out = []
    for name, m in getattr(model, "net", model).named_modules():
        if isinstance(m, tv_kinds):
            out.append(_Block(name, m, "forward", "torchvision"))
        elif callable(getattr(m, "_attn", None)) and hasattr(m, "window_size") and hasattr(m, "shift_size"):
            out.append(_Block(name, m, "_attn", "timm"))
    return out


def is_windowed(model: nn.Module) -> bool:
    """True for a windowed-attention transformer (Swin)."""
    return bool(window_blocks(model))


class _SoftmaxRecorder(TorchFunctionMode):
    """Appends the output of every softmax computed while active (thread-local, like any torch function mode)."""

    def __init__(self, store: list):
        super().__init__()
        self.store = store

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _SOFTMAX:
            self.store.append(out)
        return out


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _window_index(h: int, w: int, window, shift, style: str) -> torch.Tensor:
    """(windows, N) long: the token (row-major in the h×w grid, -1 = padding) at each window position, following
    the block's own padding, cyclic shift and partition."""
    (wh, ww), (sh, sw) = _pair(window), _pair(shift)
    idx = torch.arange(h * w, dtype=torch.float32).reshape(1, h, w, 1)  # (1, H, W, 1) like the tokens
    pad = (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh)
    if style == "torchvision":  # pad, then shift (none along an axis the window covers)
        idx = F.pad(idx, pad, value=-1.0)
        sh, sw = (0 if wh >= idx.shape[1] else sh), (0 if ww >= idx.shape[2] else sw)
        idx = torch.roll(idx, shifts=(-sh, -sw), dims=(1, 2)) if sh or sw else idx
    else:  # timm: shift, then pad
        idx = torch.roll(idx, shifts=(-sh, -sw), dims=(1, 2)) if sh or sw else idx
        idx = F.pad(idx, pad, value=-1.0)
    ph, pw = idx.shape[1:3]
    idx = idx.reshape(ph // wh, wh, pw // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    return idx.round().long()


def _recording(block: _Block, records: list[WindowAttention]) -> Callable:
    bound = getattr(type(block.module), block.method).__get__(block.module)

    def call(x: torch.Tensor, *args, **kwargs):
        b, h, w, _ = x.shape  # (B, H, W, C)
        soft: list[torch.Tensor] = []
        with _SoftmaxRecorder(soft):
            out = bound(x, *args, **kwargs)
        if not soft:
            raise MethodError(f"no attention probabilities seen in {block.name} (a fused kernel?)")
        index = _window_index(h, w, block.module.window_size, block.module.shift_size, block.style)
        a = soft[-1]  # (B·windows, heads, N, N)
        if a.ndim != 4 or a.shape[0] != b * index.shape[0] or a.shape[-1] != index.shape[1]:
            raise MethodError(f"{block.name}: attention of shape {tuple(a.shape)} does not match {index.shape[0]} "
                              f"windows of {index.shape[1]} tokens on a {h}×{w} grid")
        records.append(WindowAttention(a, index.to(x.device), (h, w)))
        return out
    return call


@contextmanager
def capture_windows(model: nn.Module) -> Iterator[list[WindowAttention]]:
    """Within the block every forward appends one :class:`WindowAttention` per windowed attention call."""
    blocks = window_blocks(model)
    if not blocks:
        raise MethodError("window maps need a windowed-attention transformer (Swin); this model has none")
    records: list[WindowAttention] = []
    fused = []
    try:
        for blk in blocks:
            setattr(blk.module, blk.method, _recording(blk, records))
            inner = getattr(blk.module, "attn", None)
            if hasattr(inner, "fused_attn"):  # timm: the explicit softmax path while capturing
                fused.append((inner, inner.fused_attn))
                inner.fused_attn = False
        yield records
    finally:
        for blk in blocks:
            blk.module.__dict__.pop(blk.method, None)  # back to the class's method
        for m, flag in fused:
            m.fused_attn = flag


def _check_mean_readout(model: nn.Module) -> None:
    """Rollout and relevance start from the head's mean over the last stage's tokens (Swin's own head); a head
    that pools otherwise (timm's ``global_pool``: max, avgmax, none) reads no such row, so they are not defined."""
    pool = getattr(getattr(model, "net", model), "global_pool", "avg")
    if isinstance(pool, str) and pool != "avg":
        raise MethodError("attention rollout and relevance on Swin follow the head's mean over the last stage's "
                          f"tokens, but this model's head pools them with {pool!r}; they are not defined for it — "
                          "use saliency or Grad-CAM")


def _run(model, forward: Callable | None, x: torch.Tensor, target: torch.Tensor | None, need_grad: bool):
    """(records of the last forward, y (B,) the explained output or None)."""
    _check_mean_readout(model)
    n = len(window_blocks(model))
    with model.lock, capture_windows(model) as records, torch.set_grad_enabled(need_grad):
        y = explained_output(model, forward, x, target)
    if len(records) < n:
        raise MethodError("the windowed attention layers were not called during the forward pass")
    return records[-n:], y


def _mix(r: torch.Tensor, index: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """r (B, T) · M for a block-diagonal M given per window (B, windows, N, N) at ``index`` (windows, N)."""
    b, t = r.shape
    j = torch.where(index < 0, t, index)  # padding -> a dropped extra column
    rw = torch.cat([r, r.new_zeros(b, 1)], 1)[:, j]  # (B, windows, N)
    out = torch.einsum("bwn,bwnm->bwm", rw, m)
    return r.new_zeros(b, t + 1).index_add_(1, j.reshape(-1), out.reshape(b, -1))[:, :t]


def _split(r: torch.Tensor, coarse: tuple[int, int], fine: tuple[int, int]) -> torch.Tensor:
    """Relevance on the merged grid -> the grid before patch merging, split equally among each token's parts
    (those inside the finer grid: merging pads an odd grid)."""
    fy, fx = -(-fine[0] // coarse[0]), -(-fine[1] // coarse[1])

    def up(t: torch.Tensor) -> torch.Tensor:  # (B, h, w) -> (B, fine) by repetition, cropped
        return t.repeat_interleave(fy, 1).repeat_interleave(fx, 2)[:, :fine[0], :fine[1]]

    parts = F.pad(torch.ones(1, 1, *fine, device=r.device), (0, coarse[1] * fx - fine[1], 0, coarse[0] * fy - fine[0]))
    parts = F.avg_pool2d(parts, (fy, fx), divisor_override=1)[0]  # (1, coarse): parts of each merged token
    return up(r.reshape(-1, *coarse) / parts).reshape(r.shape[0], -1)


def _readout(model: nn.Module, records: list[WindowAttention], mats: list[torch.Tensor]):
    """(maps (B, H, W), first-stage relevance (B, 1, gh, gw)): the mean readout propagated through ``mats``."""
    grid = records[-1].grid
    b = mats[0].shape[0]
    r = torch.full((b, grid[0] * grid[1]), 1.0 / (grid[0] * grid[1]), device=mats[0].device)
    for rec, m in zip(reversed(records), reversed(mats)):
        if rec.grid != grid:
            r, grid = _split(r, grid, rec.grid), rec.grid
        r = _mix(r, rec.index, m)
    patches = r.reshape(b, 1, *grid)
    size = tuple(model.card.input_size[-2:])
    return F.interpolate(patches, size=size, mode="bilinear", align_corners=False)[:, 0], patches


def window_rollout(model: nn.Module, x: torch.Tensor, discard_ratio: float = 0.0):
    """(maps (B, H, W), patch relevance (B, 1, gh, gw)) of attention rollout through the windows."""
    records, _ = _run(model, None, x, None, need_grad=False)
    mats = []
    for rec in records:
        a = rec.per_window(rec.attn.detach().float()).mean(2)  # (B, windows, N, N)
        a = a * (rec.index >= 0)[None, :, None, :]  # attention to the padding carries nothing of the image
        if discard_ratio > 0:
            flat = a.reshape(a.shape[0], -1)
            k = int(flat.shape[1] * discard_ratio)
            if k:
                flat = flat.scatter(1, flat.topk(k, dim=1, largest=False).indices, 0.0)
                a = flat.reshape(a.shape)
        a = a + torch.eye(a.shape[-1], device=a.device)
        mats.append(a / a.sum(-1, keepdim=True))
    return _readout(model, records, mats)


def window_relevance(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None,
                     forward: Callable | None = None):
    """(maps (B, H, W), patch relevance (B, 1, gh, gw)) of gradient-weighted attention through the windows."""
    records, y = _run(model, forward, x, target, need_grad=True)
    grads = torch.autograd.grad(y.sum(), [rec.attn for rec in records], allow_unused=True)
    mats = []
    for rec, g in zip(records, grads):
        a = rec.per_window(rec.attn.detach().float())  # (B, windows, heads, N, N)
        cam = torch.zeros_like(a[:, :, 0]) if g is None else (rec.per_window(g.float()) * a).clamp_min(0).mean(2)
        mats.append(cam + torch.eye(a.shape[-1], device=a.device))
    return _readout(model, records, mats)


def default_stage_layer(model: nn.Module) -> str:
    """The last stage: the module holding the last windowed block, whose (B, H, W, C) output the head pools."""
    blocks = window_blocks(model)
    if not blocks:
        raise MethodError("stage Grad-CAM needs a windowed-attention transformer (Swin)")
    block = blocks[-1].name.rsplit(".", 1)[0] if blocks[-1].style == "torchvision" else blocks[-1].name
    return block.rsplit(".", 1)[0] if "." in block else block


def stage_gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor | None,
                  forward: Callable | None = None):
    """(maps (B, H, W), stage map (B, 1, h, w)) of Grad-CAM at ``layer``'s channels-last output (B, h, w, C)."""
    store, y = layer_outputs(model, layer, x, target, forward)
    if not store or store[-1].ndim != 4:
        shape = tuple(store[-1].shape) if store else "nothing"
        raise MethodError(f"stage Grad-CAM needs a layer with a (B, H, W, C) output; got {shape}")
    feats = store[-1]
    (g,) = torch.autograd.grad(y.sum(), feats)
    weights = g.mean((1, 2), keepdim=True)  # (B, 1, 1, C)
    cam = (weights * feats).sum(-1).clamp_min(0).detach().float()[:, None]  # (B, 1, h, w)
    size = tuple(model.card.input_size[-2:])
    return F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0], cam
