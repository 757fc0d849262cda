"""Output-based baselines: MSP, max logit, energy, entropy. Forward only, no gradients."""

from __future__ import annotations

import torch

from gradviz.methods.registry import TEMPERATURE_BOUNDS, ModelOutputs, register


@register("msp", title="Maximum softmax probability", paper="Hendrycks & Gimpel, ICLR 2017", year=2017,
          formula=r"u(x) = -\max_c \mathrm{softmax}(z/T)_c", kind="output",
          bounds={"temperature": TEMPERATURE_BOUNDS})
def msp(batch: ModelOutputs, temperature: float = 1.0) -> torch.Tensor:
    """Negative maximum softmax probability: a confident prediction is certain."""
    return -(batch.logits / temperature).softmax(-1).amax(-1)


@register("maxlogit", title="Maximum logit", paper="Hendrycks et al., ICML 2022", year=2022,
          formula=r"u(x) = -\max_c z_c", kind="output")
def maxlogit(batch: ModelOutputs) -> torch.Tensor:
    """Negative largest logit (unnormalised confidence)."""
    return -batch.logits.amax(-1)


@register("energy", title="Energy score", paper="Liu et al., NeurIPS 2020", year=2020,
          formula=r"u(x) = -T \log \sum_c e^{z_c/T}", kind="output",
          bounds={"temperature": TEMPERATURE_BOUNDS})
def energy(batch: ModelOutputs, temperature: float = 1.0) -> torch.Tensor:
    """Free energy -T·logsumexp(z/T): low energy (high logsumexp) means in-distribution."""
    return -temperature * torch.logsumexp(batch.logits / temperature, dim=-1)


@register("entropy", title="Predictive entropy", paper="Shannon entropy of the softmax (baseline)", year=1948,
          formula=r"u(x) = -\sum_c p_c \log p_c", kind="output")
def entropy(batch: ModelOutputs) -> torch.Tensor:
    """Entropy of the softmax distribution."""
    logp = batch.logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)
