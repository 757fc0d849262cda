"""Per-sample losses, given by their gradient with respect to the logits.

One engine serves every method: a loss is a function ``logits (B, C) -> ∂ℓ_b/∂z_b (B, C)``.
Computed with care where the softmax saturates: with the predicted-label loss, p − onehot loses
g_ŷ = p_ŷ − 1 when p_ŷ rounds to 1 (every uniform-noise sample on the bundled model, even in
float64), so g_ŷ is taken as −Σ_{c≠ŷ} p_c = −exp(logsumexp_{c≠ŷ} z − logsumexp z); likewise
σ(z) − 1 = −σ(−z).
"""

from __future__ import annotations

from typing import Callable

import torch

from gradviz.errors import MethodError

__all__ = ["LOSSES", "loss_gradient", "top_complement"]


def top_complement(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(p = softmax(z), ŷ = argmax z (B, 1), q = 1 − p_ŷ = Σ_{c≠ŷ} p_c (B, 1)) for logits ``z`` (B, C).

    q is exp(logsumexp_{c≠ŷ} z − logsumexp z): full relative precision where p_ŷ rounds to 1 and
    1 − p_ŷ would be 0 (every score built from 1 − p_ŷ or 1 − Σp² reads q instead)."""
    lse = torch.logsumexp(z, -1, keepdim=True)
    p = (z - lse).exp()
    top = z.argmax(-1, keepdim=True)
    if z.shape[-1] == 1:
        return p, top, torch.zeros_like(lse)
    others = z.scatter(-1, top, float("-inf"))
    return p, top, (torch.logsumexp(others, -1, keepdim=True) - lse).exp()


def nll_pred(z: torch.Tensor) -> torch.Tensor:
    """∂/∂z of −log softmax(z)_ŷ with ŷ = argmax z: p − onehot(ŷ), with g_ŷ = −Σ_{c≠ŷ} p_c exactly."""
    p, top, q = top_complement(z)
    return p.scatter(-1, top, -q)


def confounding_sigmoid(z: torch.Tensor) -> torch.Tensor:
    """∂/∂z of −Σ_c log σ(z_c) (BCE against the all-ones label): σ(z) − 1 = −σ(−z)."""
    return -torch.sigmoid(-z)


def confounding_softmax(z: torch.Tensor) -> torch.Tensor:
    """∂/∂z of −Σ_c log softmax(z)_c (all-ones label on softmax outputs): C·p − 1."""
    return z.shape[-1] * z.softmax(-1) - 1.0


LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "nll_pred": nll_pred,
    "confounding_sigmoid": confounding_sigmoid,
    "confounding_softmax": confounding_softmax,
}


def loss_gradient(loss: str | Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The logit-gradient function of ``loss`` (a name in :data:`LOSSES`, or the function itself)."""
    if callable(loss):
        return loss
    fn = LOSSES.get(loss)
    if fn is None:
        raise MethodError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
    return fn
