"""Output-based baselines: MSP, max logit, energy, entropy. Forward only, no gradients."""

from __future__ import annotations

import torch

from gradviz.engine.losses import top_complement
from gradviz.methods.registry import TEMPERATURE_BOUNDS, ModelOutputs, differentiable, register

# Far from the data a ReLU network's logits grow along a ray (Hein, Andriushchenko & Bitterwolf, CVPR 2019):
# the bundled model gives uniform noise a max logit of ≈ 53 against ≈ 9 on digits, softmax ≈ 1.0. Every
# score that grows with confidence or logit scale therefore ranks noise as MORE certain than digits.
OVERCONFIDENT_NOISE = {"noise-uniform": "lower", "letters": "higher"}


@differentiable()
@register("msp", title="Maximum softmax probability", paper="Hendrycks & Gimpel, ICLR 2017", year=2017,
          formula=r"u(x) = -\max_c \mathrm{softmax}(z/T)_c", family="output",
          link="https://arxiv.org/abs/1610.02136",
          intuition="A confident network puts almost all probability on one class. The less it puts on its "
                    "favourite class, the more uncertain it is. No gradients, one forward pass.",
          reading="Charts show it as 1 − MSP (the score + 1; ranks and AUROCs unchanged): ID digits pile up near 0 "
                  "(p_max ≈ 1). OOD sets that the model still classifies confidently (over-confidence) overlap with "
                  "them — the classic failure this baseline exposes. Where the softmax saturates (p_max within 3e-8 "
                  "of 1) the scores tie in float32 by definition; entropy, energy and ExGrad keep ranking such inputs.",
          expected=OVERCONFIDENT_NOISE, shown_as="1 − MSP", shown_offset=1.0,
          bounds={"temperature": TEMPERATURE_BOUNDS})
def msp(batch: ModelOutputs, temperature: float = 1.0) -> torch.Tensor:
    """Negative maximum softmax probability: a confident prediction is certain."""
    return -(batch.logits / temperature).softmax(-1).amax(-1)


@differentiable()
@register("maxlogit", title="Maximum logit", paper="Hendrycks et al., ICML 2022", year=2022,
          formula=r"u(x) = -\max_c z_c", family="output", link="https://arxiv.org/abs/1911.11132",
          intuition="The largest logit before the softmax: the softmax throws away the overall scale of the "
                    "logits, the max logit keeps it. Unfamiliar inputs tend to excite no class strongly.",
          reading="Like MSP but on an unbounded scale; long tails are normal.",
          expected=OVERCONFIDENT_NOISE)
def maxlogit(batch: ModelOutputs) -> torch.Tensor:
    """Negative largest logit (unnormalised confidence)."""
    return -batch.logits.amax(-1)


@differentiable()
@register("energy", title="Energy score", paper="Liu et al., NeurIPS 2020", year=2020,
          formula=r"u(x) = -T \log \sum_c e^{z_c/T}", family="output", link="https://arxiv.org/abs/2010.03759",
          intuition="The free energy −T·logsumexp(z/T) sums the evidence of all classes. Low energy = the input "
                    "resembles training data. A smooth, scale-aware cousin of the max logit.",
          reading="Histograms shift right (higher energy) for OOD. Compare with MSP: energy often separates "
                  "better when the softmax saturates.",
          expected=OVERCONFIDENT_NOISE,
          bounds={"temperature": TEMPERATURE_BOUNDS})
def energy(batch: ModelOutputs, temperature: float = 1.0) -> torch.Tensor:
    """Free energy -T·logsumexp(z/T): low energy (high logsumexp) means in-distribution."""
    return -temperature * torch.logsumexp(batch.logits / temperature, dim=-1)


@differentiable()
@register("entropy", title="Predictive entropy", paper="Shannon entropy of the softmax (baseline)", year=1948,
          formula=r"u(x) = -\sum_c p_c \log p_c", family="output",
          link="https://doi.org/10.1002/j.1538-7305.1948.tb01338.x",
          intuition="Entropy of the whole softmax distribution: high when probability is spread over many "
                    "classes. The reference every gradient metric is compared with (Oberdiek et al.).",
          reading="Most ID digits sit near 0. On the Layer profiles page the correlation map shows how much of "
                  "each gradient metric is 'just entropy'.",
          expected=OVERCONFIDENT_NOISE)
def entropy(batch: ModelOutputs) -> torch.Tensor:
    """Entropy of the softmax distribution, −Σ p log p from log-probabilities.

    log p_ŷ is taken as log1p(−q) with q = Σ_{c≠ŷ} p_c (logsumexp): where p_ŷ rounds to 1, log_softmax
    gives log p_ŷ = 0 and drops the term p_ŷ·q ≈ q, a share 1/(1 + mean_c |log p_c|) of the entropy."""
    p, top, q = top_complement(batch.logits)
    logp = batch.logits.log_softmax(-1).scatter(-1, top, torch.log1p(-q))
    return -(p * logp).sum(-1)
