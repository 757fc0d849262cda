"""The engine's rules: every registered layer kind, served by its rule alone (fast plans, strategies and
folding switched off), is exact against the float64 per-sample autograd loop; a rule registered with the
decorator is all the capture and the engine need to serve a new kind."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradviz.engine import coverage, layer_gradient_stats
from gradviz.engine.plans import fast_plans
from gradviz.engine.rules import RULES, registry, rule, rule_of

from engine_reference import assert_stats_close, batch, randomise_bn, reference_stats, wrap


class _EveryKind(nn.Module):
    """conv2d (strided, grouped, dilated, 'same') with BatchNorm, GroupNorm, tokens through LayerNorm,
    attention and a Linear over tokens, and a head: every kind with a fast plan, in one network."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(2, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, groups=4, dilation=2, padding="same", bias=False)
        self.gn = nn.GroupNorm(2, 8)
        self.norm = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.mlp = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))  # (B, 8, 4, 4)
        h = self.gn(torch.tanh(self.grouped(h)))
        t = self.norm(h.flatten(2).transpose(1, 2))  # (B, 16, 8)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.head(torch.tanh(self.mlp(t)).mean(1))


def test_every_kind_is_exact_from_its_rule_alone():
    torch.manual_seed(0)
    model = randomise_bn(wrap(_EveryKind(), (2, 8, 8))).double()
    x = batch((2, 8, 8), 3, seed=1)
    ref = reference_stats(model, x, "nll_pred")
    with fast_plans(False):
        assert_stats_close(layer_gradient_stats(model, x, c_kernel="off"), ref, rtol=1e-5)
        plain = coverage(model)
    paths = {r["group"]: r["path"] for r in plain.rows}
    for group, kind in [("stem", "conv2d"), ("bn", "batch_norm"), ("grouped", "conv2d"), ("gn", "group_norm"),
                        ("norm", "layer_norm"), ("attn", "linear"), ("mlp", "linear"), ("head", "linear")]:
        assert f"{kind} (rule)" in paths[group], (group, paths[group])
    fast = {r["group"]: r["path"] for r in coverage(model).rows}  # outside the block: fast plans again
    assert fast["bn"] == "batch_norm (folded)" and "(rule)" not in fast["head"]
    assert_stats_close(layer_gradient_stats(model, x), ref, rtol=1e-5)


@pytest.fixture
def scratch_registry():
    """The registry as it was, after the test (a test may register a rule)."""
    rules, functions = dict(RULES), dict(registry._BY_FUNCTION)
    yield
    RULES.clear(), RULES.update(rules)
    registry._BY_FUNCTION.clear(), registry._BY_FUNCTION.update(functions)


class _PRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 6)
        self.act = nn.PReLU(6, init=0.3)
        self.head = nn.Linear(6, 10)

    def forward(self, x):
        return self.head(self.act(self.embed(x.flatten(1))))


def test_a_rule_registered_with_the_decorator_serves_a_new_kind(scratch_registry):
    torch.manual_seed(0)
    model = wrap(_PRelu(), (1, 4, 4)).double()
    x = batch((1, 4, 4), 3, seed=2)
    assert rule_of(torch.prelu) is None
    assert "generic" in {r["group"]: r["kind"] for r in coverage(model).rows}["act"]

    @rule("prelu", torch.prelu, signature=("input", "weight"))
    def prelu(layer, activations, backprops):  # y = max(0, x) + w·min(0, x) per channel (dimension 1)
        n, w = activations.shape[0], layer["weight"]
        prod = (backprops * activations.clamp(max=0)).reshape(n, w.numel() if w.numel() > 1 else 1, -1)
        return {"weight": prod.sum(-1).reshape(n, *w.shape) if w.numel() > 1 else prod.sum((1, 2)).reshape(n, 1)}

    assert {r["group"]: r["path"] for r in coverage(model).rows}["act"] == "prelu (rule)"
    assert_stats_close(layer_gradient_stats(model, x), reference_stats(model, x, "nll_pred"), rtol=1e-5)
    with pytest.raises(ValueError, match="registered already"):
        rule("prelu", torch.relu, signature=("input",))(prelu)
    with pytest.raises(ValueError, match="belong to the rule 'linear'"):
        rule("dense", torch.nn.functional.linear, signature=("input", "weight"))(prelu)
