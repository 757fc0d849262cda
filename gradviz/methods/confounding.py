"""Confounding-label gradients — Lee & AlRegib, "Gradients as a Measure of Uncertainty in
Neural Networks", ICIP 2020 (arXiv 2008.08030).

No label is needed: backpropagate binary cross-entropy against the all-ones *confounding*
label (a label no one-hot training example has) and measure how much every layer would have
to change. Two readings of the outputs:
    sigmoid: ℓ = −Σ_c log σ(z_c),          ∂ℓ/∂z = σ(z) − 1      (default)
    softmax: ℓ = −Σ_c log softmax(z)_c,    ∂ℓ/∂z = C·p − 1
Per layer (conv, linear, BatchNorm affine; weights and biases) n_l = ‖∇_{θ_l} ℓ‖², and
    u(x) = Σ_l n_l.
Sign: the paper reads gradients as "the required amount of change for a model to properly
represent given inputs", so a *larger* gradient means a less familiar input: u is returned
as is (higher = more uncertain / more likely OOD or corrupted). Checked on the bundled
mnist-cnn (200 held-out digits vs 200 each, seed 0): uniform noise scores far higher than
digits (AUROC 1.00 for both readings, where MSP gets 0.00 — the model is overconfident on
noise); EMNIST-style letters score slightly *lower* than digits (AUROC 0.38 sigmoid, 0.36
softmax), where the predicted-label grad_* scores reach 0.92. Not uniformly better: show it.
The per-layer vector [n_1..n_L] (:func:`confounding_layer_norms`) is the feature set for a
meta classifier. Computed per sample in one batched backward (gradviz.engine).
"""

from __future__ import annotations

import torch

from gradviz.errors import MethodError
from gradviz.engine import layer_sq_l2_norms
from gradviz.methods._input_grad import chosen_parameters, per_sample_gradients
from gradviz.methods.registry import ModelOutputs, differentiable, register

READINGS = {"sigmoid": "confounding_sigmoid", "softmax": "confounding_softmax"}


def confounding_layer_norms(batch: ModelOutputs, reading: str = "sigmoid") -> tuple[list[str], torch.Tensor]:
    """(layer names, n_l = ‖∇θ_l ℓ‖² as (B, L)) for the confounding all-ones label; memoised per batch."""
    if reading not in READINGS:
        raise MethodError(f"confounding: reading must be one of {sorted(READINGS)}, got {reading!r}")
    loss = READINGS[reading]

    def compute() -> tuple[list[str], torch.Tensor]:
        gp = batch.gradient_pass()  # one backward on the batch's shared hooked forward
        return gp.sq_l2_norms(loss=loss) if gp is not None else layer_sq_l2_norms(batch.model, batch.x, loss=loss)

    return batch.memo(("layer_sq_l2", loss), compute)


_LOSSES = {  # (z (B, K), unused label) -> per-sample loss against the all-ones label
    "sigmoid": lambda z, _y: -torch.nn.functional.logsigmoid(z).sum(-1),
    "softmax": lambda z, _y: -z.log_softmax(-1).sum(-1),
}


def _confounding_input_form(batch: ModelOutputs, reading: str = "sigmoid") -> torch.Tensor:
    """The same score written with autograd (double backprop): Σ over all parameters of the squared
    per-sample gradient, differentiable w.r.t. the input."""
    if reading not in _LOSSES:
        raise MethodError(f"confounding: reading must be one of {sorted(READINGS)}, got {reading!r}")
    label = torch.zeros(batch.x.shape[0], dtype=torch.long, device=batch.x.device)
    g = per_sample_gradients(batch.model, batch.x, _LOSSES[reading], label, chosen_parameters(batch.model))
    return g.square().sum(1)


@differentiable(_confounding_input_form, route="double backprop")
@register("confounding", title="Confounding-label gradients", paper="Lee & AlRegib, ICIP 2020", year=2020,
          formula=r"u(x) = \sum_l \lVert \nabla_{\theta_l} \mathrm{BCE}(\sigma(z), \mathbf{1}) \rVert_2^2",
          family="gradient", link="https://arxiv.org/abs/2008.08030",
          intuition="Ask the network to predict a label it never saw — all classes at once — and measure how hard "
                    "it pushes back: the squared gradient norm of every layer, summed. No label needed.",
          reading="The Corruption lab reproduces the paper's corrupted-input experiment: this score should "
                  "climb with severity. On the bundled model letters score BELOW digits (reported, not hidden).",
          expected={"noise-uniform": "higher", "letters": "lower"},
          choices={"reading": tuple(READINGS)})
def confounding(batch: ModelOutputs, reading: str = "sigmoid") -> torch.Tensor:
    """Sum over layers of the squared gradient norm for the all-ones confounding label (higher = more uncertain)."""
    _, norms = confounding_layer_norms(batch, reading)
    return norms.sum(1)
