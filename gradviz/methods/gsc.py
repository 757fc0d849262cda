"""Gradient Short-Circuit (GSC) — Gu, Qiao & Li, "Gradient Short-Circuit: Efficient Out-of-Distribution
Detection via Feature Intervention", ICCV 2025 (arXiv 2507.01417).

At test time GSC takes the gradient of the predicted class's logit w.r.t. a high-level feature vector F,
g = ∇_F z_ŷ, "short-circuits" the coordinates of F with the largest |g| (sets them to zero: F'), and scores
the logits of the rectified features. Instead of a second forward pass it estimates those logits to first
order, z' ≈ z + J_F z · (F' − F), and reads an ordinary output score of z'.

What gradviz implements (the paper's full text and code were not reachable; every choice is a parameter):

- F = the penultimate features h, the head's input (what every feature method here reads). The head is an
  ``nn.Linear`` (z = W h + b), so g = ∇_h z_ŷ = W_ŷ and the first-order logits are exact:
  z' = z + W (h' − h) = z − W (m ⊙ h), with m the 0/1 mask of the short-circuited coordinates. Closed form,
  no backward pass, batched. (With g = W_ŷ the mask depends on the predicted class only.)
- ``ratio``: the fraction of the D coordinates short-circuited, k = round(ratio · D) (0 = the plain score).
- ``rank_by``: ``"gradient"`` ranks coordinates by |g_i| (the paper's rule as its abstract and summaries
  describe it); ``"contribution"`` by |g_i h_i|, the coordinate's first-order share of z_ŷ (a gradviz
  option: it depends on the sample, not only on its class).
- ``score``: ``"energy"`` (−logsumexp z', default) or ``"msp"`` (−max softmax z') of the rectified logits.
"""

from __future__ import annotations

import torch

from gradviz.errors import MethodError
from gradviz.methods.registry import ModelOutputs, differentiable, register

RANKINGS = ("gradient", "contribution")
SCORES = ("energy", "msp")


def short_circuit_mask(features: torch.Tensor, logits: torch.Tensor, weight: torch.Tensor, ratio: float = 0.1,
                       rank_by: str = "gradient") -> torch.Tensor:
    """The 0/1 mask (B, D) of the k = round(ratio·D) coordinates with the largest |∇_h z_ŷ| (or |∇_h z_ŷ · h|)."""
    if rank_by not in RANKINGS:
        raise MethodError(f"gsc: rank_by must be one of {RANKINGS}, got {rank_by!r}")
    if not 0.0 <= ratio <= 1.0:
        raise MethodError(f"gsc: ratio must be from 0 to 1, got {ratio}")
    with torch.no_grad():
        h = features.detach()  # (B, D)
        g = weight.detach().to(h.dtype)[logits.detach().argmax(-1)]  # (B, D): ∇_h z_ŷ = W_ŷ for the linear head
        rank = g.abs() if rank_by == "gradient" else (g * h).abs()
        k = int(round(ratio * h.shape[-1]))
        mask = torch.zeros_like(h)
        if k:
            mask.scatter_(-1, rank.topk(k, dim=-1).indices, 1.0)
    return mask


def rectified_logits(batch: ModelOutputs, ratio: float = 0.1, rank_by: str = "gradient") -> torch.Tensor:
    """First-order logits after the short circuit, z + J (h' − h) = z − W (m ⊙ h), (B, C); exact for the linear head."""
    h = batch.features.reshape(len(batch.logits), -1)  # (B, D)
    weight = batch.model.head.weight
    if weight.shape[-1] != h.shape[-1]:
        raise MethodError(f"gsc: the head takes {weight.shape[-1]} features but the model gives {h.shape[-1]}")
    mask = short_circuit_mask(h, batch.logits, weight, ratio, rank_by)
    return batch.logits + (-(mask * h)) @ weight.to(h.dtype).T.to(h.device)


@differentiable()
@register("gsc", title="Gradient Short-Circuit", paper="Gu, Qiao & Li, ICCV 2025", year=2025,
          formula=r"u(x) = -\log \sum_c e^{z'_c},\quad z' = z + J_h z\,(h' - h),\quad "
                  r"h'_i = 0 \text{ for the } k \text{ largest } |\partial z_{\hat y}/\partial h_i|",
          family="gradient", backprop=False, link="https://arxiv.org/abs/2507.01417",
          intuition="An unfamiliar input may reach a confident prediction through a few feature coordinates that the "
                    "predicted class is very sensitive to. Short-circuit (zero) the coordinates with the largest "
                    "gradient of the predicted logit, estimate the new logits to first order (no second forward "
                    "pass) and read their energy: a prediction that rested on those few coordinates loses its "
                    "confidence. Here the features are the penultimate ones, so the gradient is the head's row W_ŷ "
                    "and the first-order logits are exact. Choices: `ratio` (fraction short-circuited, 0.1), "
                    "`rank_by` (`gradient` = |∂z_ŷ/∂h_i|, the paper's rule; `contribution` = |h_i ∂z_ŷ/∂h_i|), "
                    "`score` (`energy` or `msp` of the rectified logits). The paper's own settings could not be "
                    "read here: these defaults are gradviz's.",
          reading="Same scale as `energy`; compare the two to see what the short circuit changes. With "
                  "`rank_by=gradient` the short-circuited coordinates depend only on the predicted class.",
          expected={"noise-uniform": "lower", "letters": "higher"},
          bounds={"ratio": (0.0, 1.0)}, choices={"rank_by": RANKINGS, "score": SCORES})
def gsc(batch: ModelOutputs, ratio: float = 0.1, rank_by: str = "gradient", score: str = "energy") -> torch.Tensor:
    """Energy (or −MSP) of the logits with the most gradient-sensitive feature coordinates short-circuited."""
    z = rectified_logits(batch, ratio, rank_by)
    if score == "energy":
        return -torch.logsumexp(z, dim=-1)
    if score == "msp":
        return -z.softmax(-1).amax(-1)
    raise MethodError(f"gsc: score must be one of {SCORES}, got {score!r}")
