"""GradNorm — Huang, Geng & Li, "On the Importance of Gradients for Detecting Distributional
Shifts in the Wild", NeurIPS 2021.

Score = ‖∂ KL(u ‖ softmax(z/T)) / ∂W‖₁ of the last linear layer's weights, u uniform.
With g = ∂KL/∂z = (p − u)/T and ∇W = g hᵀ the L1 norm factorises exactly:
    ‖∇W‖₁ = ‖h‖₁ · ‖p − u‖₁ / T
so no backward pass is needed. GradNorm is larger for ID data; uncertainty = −score.
"""

from __future__ import annotations

import torch

from gradviz.methods.registry import TEMPERATURE_BOUNDS, ModelOutputs, register


@register("gradnorm", title="GradNorm", paper="Huang, Geng & Li, NeurIPS 2021", year=2021,
          formula=r"u(x) = -\tfrac{1}{T}\,\lVert h\rVert_1\,\lVert \mathrm{softmax}(z/T) - \tfrac{1}{C}\mathbf{1}\rVert_1",
          kind="gradient", backprop=False, bounds={"temperature": TEMPERATURE_BOUNDS})
def gradnorm(batch: ModelOutputs, temperature: float = 1.0) -> torch.Tensor:
    """Negative L1 norm of the last-layer gradient of KL(uniform‖softmax), in closed form."""
    p = (batch.logits / temperature).softmax(-1)  # (B, C)
    u = 1.0 / p.shape[-1]
    return -(batch.features.abs().sum(-1) * (p - u).abs().sum(-1)) / temperature
