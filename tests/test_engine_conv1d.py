"""Conv1d, a layer kind added as one rule (gradviz/engine/rules/conv1d.py): exact against the float64
per-sample autograd loop for strides, dilation, groups, 'same' padding (odd and even kernels), reflect
padding, no bias, and several rows per sample."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradviz.engine import coverage, layer_gradient_stats, layer_sq_l2_norms
from gradviz.engine.rules import rule_of

from engine_reference import assert_stats_close, batch, reference_stats, wrap


class _Sequences(nn.Module):
    """A (2, 4, 12) image read as two sequences of 48 values, through conv1d layers of every configuration."""

    def __init__(self) -> None:
        super().__init__()
        self.strided = nn.Conv1d(2, 6, 5, stride=2, padding=2)
        self.grouped = nn.Conv1d(6, 6, 3, dilation=2, groups=3, padding="same", padding_mode="reflect")
        self.even = nn.Conv1d(6, 4, 4, padding="same", bias=False)  # 'same' pads one more at the end
        self.rows = nn.Conv1d(1, 3, 3, stride=4)  # each sequence of a sample as its own row
        self.head = nn.Linear(4 * 24 + 2 * 3 * 12, 10)

    def forward(self, x):
        s = x.flatten(2)  # (B, 2, 48)
        h = self.even(torch.tanh(self.grouped(torch.tanh(self.strided(s)))))  # (B, 4, 24)
        r = self.rows(s.reshape(-1, 1, 48)).reshape(s.shape[0], -1)  # (B·2, 3, 12) -> (B, 72)
        return self.head(torch.cat([h.flatten(1), r], 1))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # PyTorch's note on a copy it makes
def test_conv1d_rule_is_exact_against_the_per_sample_loop():
    assert rule_of(torch.conv1d).op == "conv1d"
    torch.manual_seed(0)
    model = wrap(_Sequences(), (2, 4, 12)).double()
    x = batch((2, 4, 12), 3, seed=1)
    ref = reference_stats(model, x, "nll_pred")
    for mode in ("off", "auto"):
        assert_stats_close(layer_gradient_stats(model, x, c_kernel=mode), ref, rtol=1e-5)
    names, sq = layer_sq_l2_norms(model, x, loss="nll_pred")
    report = coverage(model)
    want = torch.stack([ref[g]["l2"] ** 2 for g in names], 1)
    assert ((sq.double() - want).abs() / want).max() < 1e-6
    kinds = {r["group"]: r["kind"] for r in report.rows}
    assert all(kinds[g] == "conv1d" for g in ("strided", "grouped", "even", "rows")), kinds
    assert report.fraction == 1.0
