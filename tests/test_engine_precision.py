"""Precision where the softmax saturates: the predicted-label gradient keeps g_ŷ, and gradients of
~1e-19 neither underflow nor lose their squares in float32."""

from __future__ import annotations

import torch

from gradviz.data import load_dataset
from gradviz.engine import LOSSES, head_gradient_stats, layer_gradient_stats
from gradviz.methods import ModelOutputs, run_method

from engine_reference import reference_stats


def test_nll_pred_keeps_the_predicted_class_entry_when_the_softmax_saturates():
    z = torch.zeros(3, 10, dtype=torch.float64)
    z[:, 2] = torch.tensor([40.0, 60.0, 5.0])  # p_ŷ rounds to 1 in float64 for the first two rows
    g = LOSSES["nll_pred"](z)
    others = torch.exp(-z[:, 2]) * 9 / (1 + 9 * torch.exp(-z[:, 2]))  # Σ_{c≠ŷ} p_c, exactly
    assert torch.allclose(g[:, 2], -others, rtol=1e-12)  # p − onehot would give 0 for rows 0 and 1
    assert (g.sum(1).abs() <= 1e-14 * g.abs().sum(1)).all()  # Σ_c g_c = 0 to rounding
    assert torch.allclose(g.abs().sum(1), 2 * others, rtol=1e-12)  # ‖g‖₁ = 2(1 − p_ŷ), not half of it
    assert torch.allclose(LOSSES["confounding_sigmoid"](z), torch.sigmoid(z) - 1, atol=1e-15)


def test_noise_on_the_bundled_model_float32_matches_the_float64_loop(bundled_model):
    """Uniform noise drives the bundled model's softmax to 1: per-sample gradients of ~1e-17 whose
    squares underflow float32. The engine rescales the loss gradient per sample and finishes in float64."""
    x = load_dataset("noise-uniform", bundled_model.card, limit=4, seed=0).images
    res = layer_gradient_stats(bundled_model, x, c_kernel="off")
    ref = reference_stats(bundled_model, x, "nll_pred")
    assert max(float(ref[g]["l2"].max()) for g in ref) < 1e-6  # tiny gradients indeed
    # sums (L1, L2, mean, std) to float32 precision (the previous engine was 4e-4 off on L2 and std);
    # single extreme entries (max, min) as well as the float32 forward computes them
    for i, (name, numel) in enumerate(zip(res.layers, res.numels)):
        rms = ref[name]["l2"] / numel ** 0.5
        for j, s in enumerate(res.stats):
            scale = rms if s in ("mean", "max", "min", "std") else ref[name][s].abs()
            err = ((res.values[:, i, j].double() - ref[name][s]).abs() / scale).max().item()
            assert err < (5e-4 if s in ("max", "min") else 3e-5), (name, s, err)


def test_head_closed_form_keeps_the_tiny_gradients_and_grad_min_does_not_tie(bundled_model):
    x = load_dataset("noise-uniform", bundled_model.card, limit=8, seed=1).images
    batch = ModelOutputs.from_model(bundled_model, x)
    stats = head_gradient_stats(bundled_model.head, batch.logits, batch.features, stats=("l1", "min"))
    z = batch.logits.double()
    top = z.argmax(1, keepdim=True)
    others = (z.scatter(1, top, float("-inf")).logsumexp(1) - z.logsumexp(1)).exp()  # Σ_{c≠ŷ} p_c
    h1 = batch.features.double().abs().sum(1) + 1  # ‖[h, 1]‖₁
    assert (others < 1e-6).all()  # saturated: p − onehot would have lost g_ŷ
    assert torch.allclose(stats[:, 0].double(), 2 * others * h1, rtol=1e-5)  # L1 = ‖g‖₁ (‖h‖₁ + 1)
    scores = run_method("grad_min", batch, layer="last")
    assert (scores > 0).all() and scores.unique().numel() == scores.numel()  # no ties at 0 any more
