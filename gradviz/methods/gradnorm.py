"""GradNorm — Huang, Geng & Li, "On the Importance of Gradients for Detecting Distributional
Shifts in the Wild", NeurIPS 2021.

Score = ‖∂ KL(u ‖ softmax(z/T)) / ∂W‖₁ of the last linear layer's weights, u uniform.
With g = ∂KL/∂z = (p − u)/T and ∇W = g hᵀ the L1 norm factorises exactly:
    ‖∇W‖₁ = ‖h‖₁ · ‖p − u‖₁ / T
so no backward pass is needed. GradNorm is larger for ID data; uncertainty = −score.
"""

from __future__ import annotations

import torch

from gradviz.methods.registry import TEMPERATURE_BOUNDS, ModelOutputs, differentiable, register


@differentiable()
@register("gradnorm", title="GradNorm", paper="Huang, Geng & Li, NeurIPS 2021", year=2021,
          formula=r"u(x) = -\tfrac{1}{T}\,\lVert h\rVert_1\,"
                  r"\lVert \mathrm{softmax}(z/T) - \tfrac{1}{C}\mathbf{1}\rVert_1",
          family="gradient", backprop=False, link="https://arxiv.org/abs/2110.00218",
          intuition="Backpropagate the KL divergence between the uniform distribution and the softmax to the last "
                    "layer's weights. ID inputs give a LARGE gradient norm (the model has a lot to 'unlearn' to "
                    "become uniform); the uncertainty is its negative. Exact closed form, no backward pass: the "
                    "norm is the feature norm ‖h‖₁ times an output factor ‖p − u‖₁ (see the decomposition).",
          reading="This is Huang et al. 2021's GradNorm — not the Lee & AlRegib gradients (pytorch-ood uses the "
                  "name for the latter). Strong on ImageNet-scale models, weak on CIFAR-scale benchmarks.",
          expected={"noise-uniform": "lower", "letters": "higher"},
          bounds={"temperature": TEMPERATURE_BOUNDS})
def gradnorm(batch: ModelOutputs, temperature: float = 1.0) -> torch.Tensor:
    """Negative L1 norm of the last-layer gradient of KL(uniform‖softmax), in closed form."""
    p = (batch.logits / temperature).softmax(-1)  # (B, C)
    u = 1.0 / p.shape[-1]
    return -(batch.features.abs().sum(-1) * (p - u).abs().sum(-1)) / temperature
