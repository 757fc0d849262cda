"""Linear over any leading dimensions: ∇W = Σ_p δ_p a_pᵀ, ∇b = Σ_p δ_p over a row's positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gradviz.engine.rules.registry import rule


@rule("linear", F.linear, signature=("input", "weight", "bias"), defaults={"bias": None})
def linear(layer: dict, activations: torch.Tensor, backprops: torch.Tensor) -> dict[str, torch.Tensor]:
    o, k = layer["weight"].shape
    a = activations.reshape(activations.shape[0], -1, k)  # (n, P, K)
    d = backprops.reshape(backprops.shape[0], -1, o)  # (n, P, O)
    return {"weight": torch.einsum("npo,npk->nok", d, a), "bias": d.sum(1)}
