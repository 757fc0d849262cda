"""Normalisation layers: y = γ ⊙ x̂ + β gives ∇γ = Σ δ ⊙ x̂ and ∇β = Σ δ over a row's positions.

BatchNorm (eval mode) normalises per channel with the running statistics, LayerNorm over the last
dimensions of each row, GroupNorm per (row, group); the affine parameters are per channel
(dimension 1) for BatchNorm and GroupNorm, over ``normalized_shape`` for LayerNorm."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gradviz.engine.rules.registry import rule


def _channel_sums(xhat: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
    """{weight: Σ δ x̂, bias: Σ δ} per row and channel (dimension 1), (n, C) each."""
    n, c = d.shape[0], d.shape[1]
    return {"weight": (d * xhat).reshape(n, c, -1).sum(-1), "bias": d.reshape(n, c, -1).sum(-1)}


@rule("batch_norm", F.batch_norm, torch.batch_norm,
      signature=("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
      defaults={"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5})
def batch_norm(layer: dict, activations: torch.Tensor, backprops: torch.Tensor) -> dict[str, torch.Tensor]:
    shape = (1, -1) + (1,) * (activations.dim() - 2)
    mean, var = layer["running_mean"].view(shape), layer["running_var"].view(shape)
    return _channel_sums((activations - mean) * torch.rsqrt(var + layer["eps"]), backprops)


def _native_layer_norm(layer: dict) -> tuple[torch.Tensor, dict]:
    """The kernel F.layer_norm runs, keeping its row statistics for the fast plan."""
    shape = layer["normalized_shape"]
    out, mean, rstd = torch.native_layer_norm(layer["input"], [shape] if isinstance(shape, int) else list(shape),
                                              layer["weight"], layer["bias"], layer["eps"])
    return out, {"mean": mean.detach(), "rstd": rstd.detach()}


@rule("layer_norm", F.layer_norm, torch.layer_norm, signature=("input", "normalized_shape", "weight", "bias", "eps"),
      defaults={"weight": None, "bias": None, "eps": 1e-5}, forward=_native_layer_norm)
def layer_norm(layer: dict, activations: torch.Tensor, backprops: torch.Tensor) -> dict[str, torch.Tensor]:
    shape = layer["normalized_shape"]
    shape = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else (shape,)
    n, m = activations.shape[0], math.prod(shape)
    x, d = activations.reshape(n, -1, m), backprops.reshape(n, -1, m)
    xhat = (x - x.mean(-1, keepdim=True)) * torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + layer["eps"])
    return {"weight": (d * xhat).sum(1).reshape(n, *shape), "bias": d.sum(1).reshape(n, *shape)}


@rule("group_norm", F.group_norm, torch.group_norm, signature=("input", "num_groups", "weight", "bias", "eps"),
      defaults={"weight": None, "bias": None, "eps": 1e-5})
def group_norm(layer: dict, activations: torch.Tensor, backprops: torch.Tensor) -> dict[str, torch.Tensor]:
    n, g = activations.shape[0], int(layer["num_groups"])
    x = activations.reshape(n, g, -1)
    xhat = (x - x.mean(-1, keepdim=True)) * torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + layer["eps"])
    return _channel_sums(xhat.reshape(activations.shape), backprops)
