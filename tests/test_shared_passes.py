"""Scoring several methods on one batch shares the batch's forward and, per loss, its backward, and gives
every method the scores it gives alone."""

import numpy as np
import pytest
import torch

from gradviz.data import load_dataset
from gradviz.engine import GradientPass
from gradviz.methods.registry import list_methods
from gradviz.scoring import FitSet, make_runners, score_images


@pytest.fixture(scope="module")
def images(bundled_model):
    digits = load_dataset("mnist", bundled_model.card, limit=12, seed=0).images
    noise = torch.rand((12, *bundled_model.card.input_size), generator=torch.Generator().manual_seed(3))
    return torch.cat([digits, noise])


def test_all_methods_together_score_as_each_alone(bundled_model, images):
    infos = list_methods()
    runners = make_runners(bundled_model, infos, fit=FitSet("mnist:train", 0, limit=300))
    together = score_images(bundled_model, images, runners, batch_size=16)
    for runner in runners:
        name = runner.info.name
        alone = score_images(bundled_model, images, [runner], batch_size=16)[name]
        # relative to the score's scale: feature scores that subtract two distances (rmds) sit near 0, where the
        # shared pass's features (BatchNorm folded into the convolutions) differ from a plain forward's in the
        # last float32 digits
        scale = float(np.abs(alone).max())
        np.testing.assert_allclose(together[name], alone, rtol=1e-5, atol=1e-5 * scale, err_msg=name)


def test_a_loss_asked_for_again_reuses_its_backward(bundled_model, images, monkeypatch):
    gp = GradientPass(bundled_model, images[:8])
    calls = []
    real = GradientPass._reduce_parts
    monkeypatch.setattr(GradientPass, "_reduce_parts", lambda self, *a, **k: calls.append(a[0]) or real(self, *a, **k))
    stats = gp.layer_stats("nll_pred")
    names, unit, scale = gp.unit_sq_l2_norms("nll_pred")
    _, sq = gp.sq_l2_norms("nll_pred")
    assert calls == ["nll_pred"]  # the norms read the statistics' partial sums
    torch.testing.assert_close(sq, stats.get("l2").square(), rtol=1e-5, atol=0)
    torch.testing.assert_close(unit * scale.double()[:, None] ** 2, sq.double(), rtol=1e-5, atol=0)
    gp.sq_l2_norms("confounding_sigmoid")
    assert calls == ["nll_pred", "confounding_sigmoid"]  # another loss: its own backward


def test_unit_norms_match_a_fresh_pass(bundled_model, images):
    """gradient_density's norms read from grad_*'s backward equal those of a pass that computes only them."""
    shared = GradientPass(bundled_model, images[:8])
    shared.layer_stats("nll_pred")
    alone = GradientPass(bundled_model, images[:8])
    torch.testing.assert_close(shared.unit_sq_l2_norms("nll_pred")[1], alone.unit_sq_l2_norms("nll_pred")[1],
                               rtol=1e-5, atol=1e-30)
