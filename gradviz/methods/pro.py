"""PRO, perturbation-rectified OOD detection — Chen, Yeh, Mou & Gu, "Leveraging Perturbation Robustness to
Enhance Out-of-Distribution Detection", CVPR 2025 (arXiv 2503.18784; code
github.com/wenxichen2746/Perturbation-Rectified-OOD-Detection).

The confidence of OOD inputs drops faster under a small perturbation than that of ID inputs, so PRO scores
the *smallest* confidence found near the input, g*(x) = min_{‖δ‖∞ ≤ ε'} g(x + δ), searched by signed-gradient
descent on the confidence (the authors' "pro2" postprocessors):

    x₀ = x,   x_{k+1} = x_k − ε · sign ∇_x g(x_k),   g*(x) = min_{k = 0..K} g(x_k),   u(x) = −g*(x)

with K = ``steps`` steps of size ε = ``epsilon`` (every iterate lies in the L∞ ball of radius K·ε) and g the
``score``: ``"msp"`` (max softmax, PRO-MSP, default), ``"entropy"`` (negative entropy, PRO-ENT) or
``"energy"`` (logsumexp of the logits). Defaults are the authors' code: ε = 0.003 and one step for PRO-MSP
(their configs tune ε and K ∈ {1, 2, 3, 5} per benchmark on validation data; PRO-ENT uses ε = 0.0014 and
two steps). The minimum includes the unperturbed input, as in their code.

Pixel space vs normalised space: the authors' step moves each *normalised* input value by ε. A
:class:`GradvizModel` normalises internally, so gradviz moves each pixel by ε·std of its channel — the same
perturbation (the sign of a gradient is the same in both spaces). Iterates are not clamped to [0, 1], as in
their code. Each step is one batched forward + backward w.r.t. a detached copy of the input
(``torch.autograd.grad``): in eval mode samples do not interact, so every per-sample gradient is exact and
no ``.grad`` is left on the model.
"""

from __future__ import annotations

import torch

from gradviz.errors import MethodError
from gradviz.engine import GradientPass
from gradviz.engine.losses import top_complement
from gradviz.methods.registry import ModelOutputs, differentiable, register
from gradviz.models import GradvizModel

SCORES = ("msp", "entropy", "energy")


def confidence(logits: torch.Tensor, score: str = "msp") -> torch.Tensor:
    """The ID score g(x) that PRO minimises (higher = more in-distribution), (B,)."""
    if score == "msp":
        return logits.softmax(-1).amax(-1)
    if score == "energy":
        return torch.logsumexp(logits, dim=-1)
    if score == "entropy":
        p, top, q = top_complement(logits)  # log p_ŷ as log1p(−q): no cancellation where p_ŷ rounds to 1
        return (p * logits.log_softmax(-1).scatter(-1, top, torch.log1p(-q))).sum(-1)
    raise MethodError(f"pro: score must be one of {SCORES}, got {score!r}")


def pro_iterates(model: GradvizModel, x: torch.Tensor, epsilon: float = 0.003, steps: int = 1,
                 score: str = "msp", gp: GradientPass | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the iterates x_0..x_K (K+1, B, C, H, W), their confidences g(x_k) (K+1, B)), all detached.

    With ``gp`` (the batch's shared hooked forward of ``x``) the first step's input gradient is one backward on
    its graph, ∂g/∂z pushed back from the logits, instead of a forward + backward of its own (as ODIN does); for
    ``"msp"`` it is read off the backward of −log p_ŷ that grad_* already ran on the pass, where that kept the
    input gradient (:meth:`GradientPass.input_grad`)."""
    if epsilon < 0 or steps < 0:
        raise MethodError(f"pro: epsilon and steps must be >= 0, got {epsilon}, {steps}")
    if score not in SCORES:
        raise MethodError(f"pro: score must be one of {SCORES}, got {score!r}")
    step = epsilon * model.std.to(x.dtype)  # (1, C, 1, 1): ε in normalised units as a pixel step
    xs, confs = [x.detach()], []
    if gp is not None and steps > 0:
        shared = gp.input_grad("nll_pred") if score == "msp" else None
        if shared is not None:
            # ∂p_ŷ/∂z = −p_ŷ·(p − e_ŷ) = −p_ŷ·s·u, with u = (p − e_ŷ)/s the direction the engine backpropagated
            # for −log p_ŷ (grad_*'s statistics): the input gradient is that backward's times −p_ŷ·s < 0, so its
            # sign is read off it and PRO needs no backward of its own
            g = confidence(gp.logits.detach(), score)  # (B,)
            sign = -shared[0].sign()
        else:
            z = gp.logits.detach().requires_grad_(True)
            with torch.enable_grad():
                g = confidence(z, score)  # (B,)
                (dz,) = torch.autograd.grad(g.sum(), z)  # ∂g/∂z per sample (B, K)
            _, grad = gp.output_grads(gp.logits, dz, [], input_grad=True)
            assert grad is not None  # input_grad=True returns ∂/∂x_in
            sign = grad.sign()
        confs.append(g.detach().to(x.dtype))
        xs.append((xs[-1] - step * sign.to(x.dtype)).detach())
        steps -= 1
    for _ in range(steps):
        x_in = xs[-1].clone().requires_grad_(True)  # (B, C, H, W)
        with torch.enable_grad():
            g = confidence(model(x_in), score)  # (B,)
            (grad,) = torch.autograd.grad(g.sum(), x_in)  # samples do not interact: per-sample gradients
        confs.append(g.detach())
        xs.append((x_in - step * grad.sign()).detach())
    with torch.no_grad():
        confs.append(confidence(model(xs[-1]), score))
    return torch.stack(xs), torch.stack(confs)


def _pro_input_form(batch: ModelOutputs, epsilon: float = 0.003, steps: int = 1, score: str = "msp") -> torch.Tensor:
    """PRO as a function of the input: the signs are piecewise constant and the minimum picks one iterate, so
    u(x) = −g(x + δ*) with the step δ* held fixed (exact wherever no gradient entry is zero and no tie)."""
    xs, confs = pro_iterates(batch.model, batch.x, epsilon, steps, score)
    best = confs.argmin(0)  # (B,)
    delta = (xs[best, torch.arange(len(best))] - batch.x.detach())  # (B, C, H, W), constant
    return -confidence(batch.model(batch.x + delta), score)


@differentiable(_pro_input_form, route="input step")
@register("pro", title="PRO (perturbation-rectified score)", paper="Chen, Yeh, Mou & Gu, CVPR 2025", year=2025,
          formula=r"u(x) = -\min_{k=0..K} g(x_k),\quad x_{k+1} = x_k - \varepsilon\,\mathrm{sign}\,\nabla_x g(x_k),"
                  r"\quad g = \max_c \mathrm{softmax}(z)_c",
          family="gradient", backprop=True, link="https://arxiv.org/abs/2503.18784",
          intuition="Push the input a few tiny signed-gradient steps in the direction that LOWERS the model's "
                    "confidence and keep the lowest confidence found. An in-distribution input sits in a stable "
                    "region and keeps its confidence; an unfamiliar one loses it quickly. ODIN's step, reversed: "
                    "ODIN raises the confidence, PRO searches for its minimum in a small ball. Choices: `epsilon` "
                    "(step in normalised-input units, 0.003), `steps` (1), `score` (`msp`, `entropy`, `energy`); "
                    "defaults are the authors' PRO-MSP code, which tunes ε and the steps per benchmark.",
          reading="Reads like `msp` shown as −confidence; where the confidence is saturated (p_max ≈ 1) a step of "
                  "0.003 rarely moves it, so the ranking follows MSP's.",
          expected={"noise-uniform": "lower", "letters": "higher"},
          bounds={"epsilon": (0.0, 1.0), "steps": (0, 20)}, choices={"score": SCORES},
          input_grad_of=lambda p, _classes: "nll_pred" if p["score"] == "msp" and p["steps"] > 0 else None)
def pro(batch: ModelOutputs, epsilon: float = 0.003, steps: int = 1, score: str = "msp") -> torch.Tensor:
    """Negative of the smallest confidence over a few signed-gradient steps that lower it (batched)."""
    _, confs = pro_iterates(batch.model, batch.x, epsilon, steps, score, batch.gradient_pass())
    return -confs.amin(0)
