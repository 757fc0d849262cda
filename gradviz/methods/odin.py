"""ODIN — Liang, Li & Srikant, "Enhancing The Reliability of Out-of-distribution Image Detection
in Neural Networks", ICLR 2018.

Temperature scaling plus a small input perturbation that raises the softmax score, more for
ID than for OOD inputs:

    x̃ = x − ε · sign(∇_x CE(z(x)/T, ŷ)),     u(x) = −max_c softmax(z(x̃)/T)_c

with ŷ the model's own prediction, T = 1000, ε = 0.0014 (the paper's CIFAR defaults).

Pixel space vs normalised space: the reference code perturbs the *normalised* input and
divides the gradient sign by the normalisation std, i.e. moves each normalised value by
ε/std. A :class:`GradvizModel` normalises internally, so gradviz takes the gradient w.r.t.
the [0, 1] pixel input and moves each pixel by ε — the same perturbation. x̃ is not clamped
to [0, 1] (as in the paper). Entries with an exactly zero gradient are not moved
(``torch.sign``; the reference code moves them by −ε, a measure-zero difference).

One batched backward w.r.t. a detached copy of the input (``torch.autograd.grad``): in eval
mode samples do not interact, so this gives every per-sample input gradient exactly, and no
``.grad`` is left on the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gradviz.errors import MethodError
from gradviz.engine import GradientPass
from gradviz.engine.losses import top_complement
from gradviz.methods.registry import TEMPERATURE_BOUNDS, ModelOutputs, differentiable, register
from gradviz.models import GradvizModel


def odin_perturb(model: GradvizModel, x: torch.Tensor, temperature: float = 1000.0,
                 epsilon: float = 0.0014, gp: GradientPass | None = None) -> torch.Tensor:
    """ODIN's perturbed input x̃ = x − ε·sign(∇_x CE(z(x)/T, ŷ)), (B, C, H, W), detached.

    With ``gp`` (the batch's shared hooked forward of ``x``) the input gradient is one backward
    on its graph, ∂CE/∂z = (softmax(z/T) − e_ŷ)/T, instead of a forward + backward of its own. With two
    classes that vector sums to zero, as p − e_ŷ does, so both are positive multiples of e_o − e_ŷ (o the
    other class) and their input gradients have the same sign at any T: where grad_*'s backward of
    −log p_ŷ kept the input gradient on the pass (:meth:`GradientPass.input_grad`), the step is read off it.
    """
    if temperature <= 0:
        raise MethodError(f"odin: temperature must be > 0, got {temperature}")
    if epsilon < 0:
        raise MethodError(f"odin: epsilon must be >= 0, got {epsilon}")
    if gp is not None:
        z = gp.logits.detach()
        shared = gp.input_grad("nll_pred") if z.shape[-1] == 2 else None
        if shared is not None and bool((top_complement(z)[2] > 0).all()):  # p_o underflowing to 0 gives no direction
            return (x.detach() - epsilon * shared[0].to(x.dtype).sign()).detach()
        dz = ((z / temperature).softmax(-1) - F.one_hot(z.argmax(-1), z.shape[-1]).to(z.dtype)) / temperature
        _, grad = gp.output_grads(gp.logits, dz, [], input_grad=True)
        assert grad is not None  # input_grad=True returns ∂/∂x_in
        return (x.detach() - epsilon * grad.to(x.dtype).sign()).detach()
    x_in = x.detach().clone().requires_grad_(True)  # (B, C, H, W)
    with torch.enable_grad():
        logits = model(x_in) / temperature  # (B, K)
        loss = F.cross_entropy(logits, logits.argmax(-1).detach(), reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_in)
    return (x_in - epsilon * grad.sign()).detach()


def _odin_input_form(batch: ModelOutputs, temperature: float = 1000.0, epsilon: float = 0.0014) -> torch.Tensor:
    """ODIN as a function of the input: sign(∇_x CE) is piecewise constant, so x̃ = x − ε·s with the sign
    s held fixed, and the gradient of u(x) is that of the tempered MSP at x̃ (exact wherever no entry of
    ∇_x CE is zero)."""
    # the step is constant
    x_tilde = batch.x + (odin_perturb(batch.model, batch.x, temperature, epsilon) - batch.x.detach())
    return -(batch.model(x_tilde) / temperature).softmax(-1).amax(-1)


@differentiable(_odin_input_form, route="input step")
@register("odin", title="ODIN", paper="Liang, Li & Srikant, ICLR 2018", year=2018,
          formula=r"u(x) = -\max_c \mathrm{softmax}\!\big(z(\tilde x)/T\big)_c,\quad "
                  r"\tilde x = x - \varepsilon\,\mathrm{sign}\,\nabla_x \mathrm{CE}\big(z(x)/T, \hat y\big)",
          family="output", backprop=True, link="https://arxiv.org/abs/1706.02690",
          intuition="Sharpen the softmax with a large temperature and nudge the input a tiny step in the "
                    "direction that raises the prediction's confidence. ID inputs respond more than OOD ones. "
                    "An output score: the gradient (one batched input gradient) only prepares the input.",
          reading="Scores crowd into a narrow band at T = 1000; what matters is the ordering, read the ROC.",
          expected={"noise-uniform": "lower", "letters": "higher"},
          bounds={"temperature": TEMPERATURE_BOUNDS, "epsilon": (0.0, 1.0)},
          input_grad_of=lambda _params, classes: "nll_pred" if classes == 2 else None)
def odin(batch: ModelOutputs, temperature: float = 1000.0, epsilon: float = 0.0014) -> torch.Tensor:
    """Negative temperature-scaled MSP of the ODIN-perturbed input (one batched input gradient)."""
    x_tilde = odin_perturb(batch.model, batch.x, temperature, epsilon, batch.gradient_pass())
    with torch.no_grad():
        logits = batch.model(x_tilde)  # (B, K)
    return -(logits / temperature).softmax(-1).amax(-1)
