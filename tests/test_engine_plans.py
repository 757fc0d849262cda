"""One test per parameter kind: each plan alone against the float64 per-sample autograd loop, on
small modules built to exercise it (attention projections, norms, broadcast parameters, the generic
fallback, shared weights), and the clear error for what the engine cannot see."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradviz.errors import GradvizError
from gradviz.engine import coverage, layer_gradient_stats, layer_sq_l2_norms

from engine_reference import assert_stats_close, batch, reference_stats, wrap


def _check(net: nn.Module, size, expect_kinds: set[str], loss: str = "nll_pred", n: int = 3, classes: int = 10):
    """Exact statistics (all six, every group), the L2-only path, and the plan kinds the coverage names."""
    torch.manual_seed(0)
    model = wrap(net, size, classes).double()
    x = batch(size, n, seed=1)
    ref = reference_stats(model, x, loss)
    for compile_mode in ("off", "auto"):
        assert_stats_close(layer_gradient_stats(model, x, loss=loss, c_kernel=compile_mode), ref, rtol=1e-5)
    names, sq = layer_sq_l2_norms(model, x, loss=loss)
    want = torch.stack([ref[g]["l2"] ** 2 for g in names], 1)
    assert ((sq.double() - want).abs() / want.clamp_min(1e-300)).max() < 1e-6
    report = coverage(model)
    kinds = {k for r in report.rows for k in r["kind"].split(" + ")}
    assert expect_kinds <= kinds, kinds
    assert report.fraction == 1.0
    return report


class _Tokens(nn.Module):
    """Patches -> tokens -> attention (nn.MultiheadAttention in several configurations) -> head."""

    def __init__(self, batch_first: bool, cross: bool, mask: bool, weights: bool, kdim: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.pos = nn.Parameter(torch.randn(1, 5, 8) * 0.1)
        self.norm = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.kv = nn.Linear(8, kdim) if kdim else None
        self.head = nn.Linear(8, 10)
        self.batch_first, self.cross, self.mask, self.weights = batch_first, cross, mask, weights

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)  # (B, 4, 8)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        q = self.norm(t)
        kv = torch.tanh(q) if self.cross else q
        if self.kv is not None:
            kv = self.kv(kv)
        pad = torch.zeros(t.shape[0], 5, dtype=torch.bool)
        pad[:, -1] = True  # the last token is padding: masked out of every attention
        if not self.batch_first:
            q, kv = q.transpose(0, 1), kv.transpose(0, 1)
        out, _ = self.attn(q, kv, kv, key_padding_mask=pad if self.mask else None, need_weights=self.weights)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return self.head((t + out)[:, 0])


@pytest.mark.parametrize("batch_first, cross, mask, weights, kdim", [
    (True, False, False, False, None),  # a ViT block: one packed projection, SDPA
    (False, False, True, True, None),  # sequence-first, padding mask, averaged weights asked for
    (True, True, False, False, None),  # cross-attention: the packed weight used in three pieces
    (True, True, True, False, 6),  # separate k/v projection weights (kdim != embed dim)
])
def test_multihead_attention_projections(batch_first, cross, mask, weights, kdim):
    report = _check(_Tokens(batch_first, cross, mask, weights, kdim), (1, 8, 8), {"linear", "broadcast", "layer_norm"})
    attn = next(r for r in report.rows if r["group"] == "attn")
    assert attn["parameters"].startswith("in_proj_weight" if not kdim else "q_proj_weight")


class _Norms(nn.Module):
    """GroupNorm, a LayerNorm over two dimensions, a channels-last LayerNorm, an affine-free norm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.gn = nn.GroupNorm(3, 6)
        self.ln2d = nn.LayerNorm([6, 6])  # over (H, W)
        self.ln_last = nn.LayerNorm(6, elementwise_affine=True, bias=False)
        self.plain = nn.LayerNorm(6, elementwise_affine=False)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        y = self.ln2d(self.gn(self.conv(x)))
        y = self.plain(self.ln_last(y.permute(0, 2, 3, 1)))  # channels last
        return self.head(y.mean((1, 2)))


def test_group_norm_and_layer_norm_affine_parameters():
    _check(_Norms(), (2, 6, 6), {"group_norm", "layer_norm", "conv2d", "linear"}, classes=4)


class _Broadcast(nn.Module):
    """Parameters broadcast over the batch: a layer scale (in place and not), a reshaped gamma (a derived
    tensor), a bias table gathered by an index buffer and added to per-sample scores, sub/rsub."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.randn(4, 1, 1))
        self.gamma = nn.Parameter(torch.randn(4))
        self.table = nn.Parameter(torch.randn(7, 2))
        self.register_buffer("index", torch.randint(0, 7, (4, 4)))
        self.shift = nn.Parameter(torch.randn(4, 1, 1))
        self.offset = nn.Parameter(torch.randn(1))
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        y = self.conv(x) * self.scale
        y = y.clone().mul_(self.gamma.reshape(1, -1, 1, 1))
        bias = self.table[self.index].permute(2, 0, 1)  # (2, 4, 4) from a gathered table
        y = y + bias.sum(0)
        y = (self.shift - y).tanh() - self.offset
        return self.head(y.mean((2, 3)))


def test_parameters_broadcast_over_the_batch():
    report = _check(_Broadcast(), (1, 4, 4), {"broadcast"})
    paths = {r["group"]: r["path"] for r in report.rows}
    assert "derived" in paths["table"] and "derived" in paths["gamma"]


class _Generic(nn.Module):
    """Uses with no plan of their own: matmul with a bare weight, PReLU, conv1d, a weight shared by two
    layers (the same module called twice), and an embedding looked up with the batch's own indices."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 12) * 0.3)
        self.prelu = nn.PReLU(12)
        self.conv1d = nn.Conv1d(1, 3, 5, padding=2)
        self.shared = nn.Linear(12, 12)
        self.embed = nn.Embedding(5, 12)
        self.head = nn.Linear(12 * 3, 10)

    def forward(self, x):
        h = x.flatten(1) @ self.w  # (B, 12)
        h = self.prelu(h)
        h = self.shared(torch.tanh(self.shared(h)))  # one module, two calls
        idx = (x.flatten(1)[:, :12].sigmoid() * 4.99).long()  # per-sample indices in [0, 5)
        h = h + self.embed(idx).mean(1)
        h = self.conv1d(h.unsqueeze(1)).flatten(1)
        return self.head(h)


def test_generic_fallback_and_shared_weights():
    report = _check(_Generic(), (1, 4, 4), {"generic"})
    shared = next(r for r in report.rows if r["group"] == "shared")
    assert "generic" in shared["kind"]  # two uses of one weight: summed exactly, not a fast plan


class _Hidden(nn.Module):
    """A weight used where the capture cannot see it (torch functions overrides disabled)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 8))
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        with torch._C.DisableTorchFunction():
            h = torch.mm(x.flatten(1), self.w)
        return self.head(h)


def test_a_parameter_the_capture_cannot_see_is_a_clear_error():
    model = wrap(_Hidden(), (1, 4, 4)).double()
    x = batch((1, 4, 4), 2)
    report = coverage(model)
    status = {r["group"]: r["status"] for r in report.rows}
    assert status == {"w": "NOT COVERED", "head": "covered"} and report.fraction < 1.0
    with pytest.raises(GradvizError, match="w"):
        report.check()
    with pytest.raises(GradvizError, match="cannot see"):
        layer_gradient_stats(model, x)


class _Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(16, 10)
        self.aux = nn.Linear(16, 10)  # never called (an auxiliary head at inference)

    def forward(self, x):
        return self.body(x.flatten(1))


def test_unused_parameters_have_zero_gradient_and_are_reported():
    model = wrap(_Unused(), (1, 4, 4)).double()
    x = batch((1, 4, 4), 2)
    res = layer_gradient_stats(model, x)
    assert res.layers == ["body", "aux"]  # unreached groups last
    assert (res.get("l1", ["aux"]) == 0).all()
    assert_stats_close(res, reference_stats(model, x, "nll_pred"), rtol=1e-6)
    status = {r["group"]: r["status"] for r in coverage(model).rows}
    assert status == {"body": "covered", "aux": "unused"}


def test_batch_layout_that_is_not_sample_major_is_refused():
    """A use whose rows interleave the samples (or mix them) gives one clear error, not wrong numbers."""

    class _Interleaved(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            b = x.shape[0]
            t = x.reshape(b, 4, 4).transpose(0, 1).reshape(-1, 4)  # rows (position, sample): interleaved
            t = self.lin(t)
            return self.head(t.reshape(4, b, 4).transpose(0, 1).reshape(b, -1))

    class _Mixing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            h = x.flatten(1)
            return self.head(h - h.mean(0, keepdim=True))  # statistics across the batch: samples interact

    for net in (_Interleaved(), _Mixing()):
        model = wrap(net, (1, 4, 4)).double()
        with pytest.raises(GradvizError, match="whole samples"):
            layer_gradient_stats(model, batch((1, 4, 4), 3))
        assert coverage(model).fraction < 1.0


def test_calibration_never_tries_the_gram_form_where_it_would_explode(monkeypatch, fresh_calibration):
    """The Gram form costs P²·(Og+Kg) per group: on a depthwise 7×7 conv over 32×32 positions that is ~1M
    entries per channel and sample (ConvNeXt at 224²: 12 GB for one L2 call). Calibration skips it there but
    still times it on a token Linear (P = 17), where it can win; forced, it serves any layer exactly."""
    from gradviz.engine.plans.dense import DensePlan

    tried: dict[str, set[str]] = {}
    real = DensePlan.plans

    def spy(self):
        out = real(self)
        tried.setdefault(self.kind, set()).update(name for name, _ in out)
        return out

    monkeypatch.setattr(DensePlan, "plans", spy)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 7, padding=3, groups=8), nn.Flatten(2),
                        nn.Linear(32 * 32, 17), Transpose(), nn.Linear(8, 24), nn.Flatten(), nn.Linear(17 * 24, 10))
    model = wrap(net, (1, 32, 32))
    x = batch((1, 32, 32), 3, seed=2)
    names, sq = layer_sq_l2_norms(model, x, loss="nll_pred")
    ref = reference_stats(model, x, "nll_pred")
    want = torch.stack([ref[n]["l2"] ** 2 for n in names], 1)
    assert ((sq.double() - want).abs() / want).max() < 1e-4
    assert "gram" not in tried["conv2d"] and "gram" in tried["linear"]


class Transpose(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


class _RowsFromParameters(nn.Module):
    """A tensor computed from a parameter alone but carrying the batch dimension: repeated per sample (XCiT's
    position encoding: reduced exactly through row 0), or scaled by the row index (rows differ: refused)."""

    def __init__(self, differ: bool) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(16) * 0.3)
        self.head = nn.Linear(16, 10)
        self.differ = differ

    def forward(self, x):
        b = x.shape[0]
        rows = torch.arange(1, b + 1, dtype=x.dtype).view(b, 1) if self.differ else torch.ones(b, 1, dtype=x.dtype)
        return self.head(x.flatten(1) + (self.pos.tanh().repeat(b, 1) * rows))


def test_a_parameter_tensor_with_the_batch_dimension_is_exact_when_repeated_and_refused_when_rows_differ():
    _check(_RowsFromParameters(differ=False), (1, 4, 4), {"broadcast"})
    model = wrap(_RowsFromParameters(differ=True), (1, 4, 4)).double()
    with pytest.raises(GradvizError, match="add of a tensor of shape \\(2, 16\\) computed from the parameters "
                                           "of pos alone differs between batch rows"):
        layer_gradient_stats(model, batch((1, 4, 4), 2))
