"""The per-sample gradient engine on CNNs agrees with a float64 per-sample autograd loop, on every
path (eager and compiled, every strategy, chunking, sub-batches), and leaves the model clean."""

from __future__ import annotations

import time
import weakref
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradviz.engine.api as engine_api
from gradviz.engine import CALIBRATION
from gradviz.engine.plans.conv import ConvPlan
from gradviz.errors import GradvizError
from gradviz.engine import (
    LOSSES, GradientPass, head_gradient_stats, layer_gradient_stats, layer_sq_l2_norms, parametrised_layers,
)
from gradviz.models.zoo import random_model

from engine_reference import require_kernel
from engine_reference import (
    REFERENCE_LOSSES, assert_stats_close, batch, conv_variants_model, randomise_bn, reference_stats, wrap,
)


def _mnist_model():
    return randomise_bn(random_model("mnist-cnn", 10, (1, 28, 28), seed=0))


def _resnet_model():
    return randomise_bn(random_model("resnet18", 10, (3, 32, 32), seed=0))


@lru_cache(maxsize=None)
def _case(kind: str):
    """(float32 model, float64 model, batch) for ``kind`` in {"mnist", "resnet"}."""
    if kind == "mnist":
        return _mnist_model(), _mnist_model().double(), batch((1, 28, 28), 4, seed=1)
    return _resnet_model(), _resnet_model().double(), batch((3, 32, 32), 3, seed=2)


@lru_cache(maxsize=None)
def _reference(kind: str, loss: str) -> dict:
    _, model64, x = _case(kind)
    return reference_stats(model64, x, loss)


def _sq_close(names, sq, ref, rtol=1e-5):
    want = torch.stack([ref[n]["l2"] ** 2 for n in names], 1)
    assert ((sq.double() - want).abs() / want.clamp_min(1e-300)).max() < rtol


@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_stat_of_every_layer_matches_autograd_mnist_cnn(loss, mode):
    _, model, x = _case("mnist")
    res = layer_gradient_stats(model, x, loss=loss, c_kernel=mode)
    assert len(res.layers) == 19 and res.values.dtype == torch.float32 and res.values.shape == (4, 19, 6)
    assert_stats_close(res, _reference("mnist", loss), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_stat_of_every_layer_matches_autograd_resnet18(loss, mode):
    _, model, x = _case("resnet")
    res = layer_gradient_stats(model, x, loss=loss, c_kernel=mode)
    assert_stats_close(res, _reference("resnet", loss), rtol=1e-5)


class _Reordered(nn.Module):
    """Modules registered in another order than the forward runs them (head first)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(6, 3)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.conv1 = nn.Conv2d(2, 4, 3)

    def forward(self, x):
        return self.head(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


def test_one_layer_order_everywhere_the_forward_order():
    """LayerStats and parametrised_layers list the groups in the order the forward reaches them,
    not the order the modules were registered in."""
    model = wrap(_Reordered(), (2, 8, 8), 3)
    x = batch((2, 8, 8), 2)
    res = layer_gradient_stats(model, x, stats=("l2",))
    assert res.layers == [n for n, _ in parametrised_layers(model)] == ["conv1", "conv2", "head"]
    assert [n for n, _ in parametrised_layers(model.net)] == ["head", "conv2", "conv1"]  # no input: registration
    assert [n for n, _ in parametrised_layers(model.net, x)] == ["conv1", "conv2", "head"]


@pytest.mark.slow
def test_float32_model_close_to_float64_reference(mode):
    model, _, x = _case("resnet")
    assert_stats_close(layer_gradient_stats(model, x, c_kernel=mode), _reference("resnet", "nll_pred"), rtol=1e-3)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_sq_l2_norms_match_autograd(loss):
    _, model, x = _case("resnet")
    names, sq = layer_sq_l2_norms(model, x, loss=loss)
    _sq_close(names, sq, _reference("resnet", loss))


def test_losses_are_gradients_of_reference_losses():
    z = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    for name, fn in REFERENCE_LOSSES.items():
        want = torch.stack([torch.autograd.grad(fn(z[b]), z)[0][b] for b in range(5)])
        assert torch.allclose(LOSSES[name](z.detach()), want, atol=1e-12), name


def test_results_independent_of_chunk_size_and_batch():
    model = _mnist_model()
    x = batch((1, 28, 28), 6, seed=5)
    big = layer_gradient_stats(model, x, chunk_mib=256)
    calls = []
    # eager: every conv is materialised chunk by chunk (the compiled direct plan needs no chunks)
    tiny = layer_gradient_stats(model, x, chunk_mib=0.01, progress=lambda d, t: calls.append((d, t)), c_kernel="off")
    assert torch.allclose(big.values, tiny.values, rtol=1e-5, atol=1e-7)
    assert calls[-1][0] == calls[-1][1] and len(calls) > len(big.layers)  # one call per chunk
    part = layer_gradient_stats(model, x[2:4])
    assert torch.allclose(big.values[2:4], part.values, rtol=1e-4, atol=1e-6)
    _, sq_big = layer_sq_l2_norms(model, x, loss="nll_pred", chunk_mib=256)
    _, sq_tiny = layer_sq_l2_norms(model, x, loss="nll_pred", chunk_mib=0.01)
    assert torch.allclose(sq_big, sq_tiny, rtol=1e-5)
    assert torch.allclose(sq_big, big.get("l2") ** 2, rtol=1e-4)


def test_sub_batches_concatenate(monkeypatch):
    model = _mnist_model()
    x = batch((1, 28, 28), 5, seed=6)
    whole = layer_gradient_stats(model, x, stats=("l2", "max"))
    monkeypatch.setattr(engine_api, "FORWARD_BATCH", 2)
    split = layer_gradient_stats(model, x, stats=("l2", "max"))
    assert torch.allclose(whole.values, split.values, rtol=1e-4, atol=1e-7)


def test_model_left_clean_no_hooks_no_grad_eval():
    model, _, x = _case("resnet")
    layer_gradient_stats(model, x)
    layer_sq_l2_norms(model, x)
    assert not model.training
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    for p in model.parameters():
        assert p.grad is None and p.requires_grad


def test_layer_subset_and_frame():
    model = _mnist_model()
    x = batch((1, 28, 28), 3, seed=8)
    full = layer_gradient_stats(model, x)
    some = layer_gradient_stats(model, x, layers=["fc", "layer2.conv1"], stats=("l1", "std"))
    assert set(some.layers) == {"fc", "layer2.conv1"}
    for name in some.layers:
        i = full.layers.index(name)
        assert torch.allclose(some.get("l1", [name])[:, 0], full.values[:, i, 0], rtol=1e-5)
    df = full.to_frame()
    assert df.shape == (3, 19 * 6) and df.columns.names == ["layer", "stat"]
    assert df[("fc", "l2")].to_numpy() == pytest.approx(full.get("l2", ["fc"])[:, 0].numpy(), rel=1e-6)


def test_last_layer_closed_form_matches_methods_md():
    model = _mnist_model()
    x = batch((1, 28, 28), 4, seed=9)
    res = layer_gradient_stats(model, x, layers=["fc"])
    logits, h = model.logits_and_features(x)
    p = logits.softmax(-1)
    g = p - F.one_hot(p.argmax(-1), 10)
    # [W | b] gradient = g [h, 1]^T: L1 = 2(1 - p_max)(||h||_1 + 1); mean = 0 exactly
    assert torch.allclose(res.get("l1")[:, 0], 2 * (1 - p.amax(-1)) * (h.abs().sum(-1) + 1), rtol=1e-5)
    assert torch.allclose(res.get("l2")[:, 0], g.norm(dim=-1) * (h.square().sum(-1) + 1).sqrt(), rtol=1e-5)
    assert res.get("mean").abs().max() < 1e-7


def test_conv_variants_match_autograd(mode):
    """Grouped, dilated, strided, biased, reflect-padded, 'same'-padded convs and a 1x1-output conv."""
    model = conv_variants_model()
    x = batch((2, 9, 9), 3, seed=10)
    ref = reference_stats(model, x, "confounding_softmax")
    res = layer_gradient_stats(model, x, loss="confounding_softmax", chunk_mib=0.001, c_kernel=mode)
    assert_stats_close(res, ref, rtol=1e-5)
    names, sq = layer_sq_l2_norms(model, x, loss="confounding_softmax")
    _sq_close(names, sq, ref)


def test_bad_inputs_raise_clear_errors():
    model = _mnist_model()
    x = batch((1, 28, 28), 2)
    with pytest.raises(GradvizError, match="unknown loss"):
        layer_gradient_stats(model, x, loss="hinge")
    with pytest.raises(GradvizError, match="unknown statistic"):
        layer_gradient_stats(model, x, stats=("l3",))
    with pytest.raises(GradvizError, match="unknown layer"):
        layer_gradient_stats(model, x, layers=["nope"])
    with pytest.raises(GradvizError, match="chunk_mib"):
        layer_gradient_stats(model, x, chunk_mib=0)
    with pytest.raises(GradvizError, match="non-empty"):
        layer_gradient_stats(model, x[:0])
    with pytest.raises(GradvizError, match="c_kernel .* must be one of"):
        layer_gradient_stats(model, x, c_kernel="fast")
    res = layer_gradient_stats(model, x, stats=("l2",))
    with pytest.raises(GradvizError, match="not computed"):
        res.get("max")
    model.train()
    try:
        with pytest.raises(GradvizError, match="eval"):
            layer_gradient_stats(model, x)
    finally:
        model.eval()


def _watch(monkeypatch, cls, name, log):
    """Record (plan, args) of every call of ``cls.name`` (the real method still runs)."""
    real = getattr(cls, name)

    def spy(self, *args, **kwargs):
        log.append((self, args))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, spy)


@pytest.mark.parametrize("chunk_mib", [0.002, None])
@pytest.mark.parametrize("strategy", ["bmm", "conv", "gram"])
def test_every_materialisation_strategy_matches_autograd(strategy, chunk_mib, mode, monkeypatch, fresh_calibration):
    """Calibration may pick any plan: each one alone must give the autograd statistics, with U
    unfolded chunk by chunk (a tiny budget) or once for the layer (bmm's prepared operands)."""
    model = conv_variants_model()
    x = batch((2, 9, 9), 5, seed=11)
    ref = reference_stats(model, x, "confounding_sigmoid")
    used = []
    _watch(monkeypatch, ConvPlan, "parts", used)
    with CALIBRATION.forced(strategy):
        if strategy != "gram":  # gram only measures the squared norm
            res = layer_gradient_stats(model, x, loss="confounding_sigmoid", chunk_mib=chunk_mib, c_kernel=mode)
            assert_stats_close(res, ref, rtol=1e-5)
        names, sq = layer_sq_l2_norms(model, x, loss="confounding_sigmoid", chunk_mib=chunk_mib)
    _sq_close(names, sq, ref)
    assert {args[0] for plan, args in used if not plan.rank1} == {strategy}


def test_one_pass_serves_several_losses_and_leaves_the_model_clean():
    _, model, x = _case("mnist")
    gp = GradientPass(model, x)
    for loss in LOSSES:
        shared = gp.layer_stats(loss=loss, c_kernel="off")
        alone = layer_gradient_stats(model, x, loss=loss, c_kernel="off")
        assert shared.layers == alone.layers
        assert torch.allclose(shared.values, alone.values, rtol=1e-6, atol=1e-12)
        names, sq = gp.sq_l2_norms(loss=loss)
        assert torch.allclose(sq, alone.get("l2", names) ** 2, rtol=1e-5)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_scratch_buffer_stays_within_the_chunk_budget(monkeypatch, fresh_calibration):
    """Materialised gradients never exceed the budget (or one sample's gradient, if that is larger)."""
    import gradviz.engine.plans.dense as dense

    monkeypatch.setattr(dense, "_SCRATCH", __import__("threading").local())
    model, _, x = _case("resnet")
    budget_mib = 0.5
    layer_gradient_stats(model, x, chunk_mib=budget_mib, c_kernel="off")
    biggest = max(m.weight.numel() for _, m in parametrised_layers(model) if isinstance(m, nn.Conv2d))
    held = max(b.numel() for b in dense._SCRATCH.buffers.values()) * 8  # float64 model
    assert held <= max(budget_mib * 2**20, biggest * 8)


@pytest.mark.parametrize("kind", ["mnist", "variants"])
def test_direct_plan_matches_autograd_in_float32(kind, monkeypatch, fresh_calibration):
    """The compiled direct plan (float32 only) alone, on every conv it supports, vs the float64 loop."""
    require_kernel()
    if kind == "mnist":
        model, model64, x = _case("mnist")
    else:
        model64, x = conv_variants_model(), batch((2, 9, 9), 5, seed=11)
        model = conv_variants_model().float()
    ref = reference_stats(model64, x, "confounding_sigmoid")
    used = []
    _watch(monkeypatch, ConvPlan, "parts", used)
    with CALIBRATION.forced("direct"):
        res = layer_gradient_stats(model, x, loss="confounding_sigmoid", c_kernel="on")
        names, sq = layer_sq_l2_norms(model, x, loss="confounding_sigmoid", c_kernel="on")
    assert "direct" in {args[0] for _, args in used}
    assert_stats_close(res, ref, rtol=1e-4)
    _sq_close(names, sq, ref, rtol=1e-4)


class _SmallMaps(nn.Module):
    """Convs on 2×2 and 3×3 maps, where some kernel taps see one output position only (or none)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 20, 3, stride=2, padding=1)  # 4x4 -> 2x2, biased; one single tap
        self.conv2 = nn.Conv2d(20, 33, 3, padding=1, bias=False)  # 2x2 -> 2x2
        self.conv3 = nn.Conv2d(33, 17, 3, padding=2, dilation=2, bias=False)  # dilated: taps hit padding only
        self.conv4 = nn.Conv2d(17, 8, 2, padding=1)  # 2x2 -> 3x3
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.head(self.conv4(x).mean((2, 3)))


@pytest.mark.parametrize("strategy, dtype", [("bmm", torch.float64), ("direct", torch.float32)])
def test_single_position_taps_in_closed_form_match_autograd(strategy, dtype, monkeypatch, fresh_calibration):
    if strategy == "direct":
        require_kernel()
    torch.manual_seed(3)
    model = wrap(_SmallMaps(), (3, 4, 4), 4).to(dtype)
    x = batch((3, 4, 4), 5, seed=12)
    ref = reference_stats(model, x, "nll_pred")
    calls = []
    _watch(monkeypatch, ConvPlan, "_single_tap_parts", calls)  # the eager closed form (bmm)
    from gradviz.engine.kernels import FusedKernel

    real_conv = FusedKernel.conv_parts  # the compiled kernel's closed form (direct)

    def conv_parts(self, x, d, *args, **kwargs):
        if kwargs.get("single") is not None:
            calls.append(({20: "conv2", 33: "conv3"}[x.shape[1]], ()))  # input channels name the layer
        return real_conv(self, x, d, *args, **kwargs)

    monkeypatch.setattr(FusedKernel, "conv_parts", conv_parts)
    for mode in (("off", "on") if strategy == "bmm" else ("on",)):
        if mode == "on":
            require_kernel()
        calls.clear()
        with CALIBRATION.forced(strategy):
            res = layer_gradient_stats(model, x, c_kernel=mode)
            names, sq = layer_sq_l2_norms(model, x, loss="nll_pred", c_kernel=mode)
        seen = {c if isinstance(c, str) else c.use.group for c, _ in calls}
        assert seen == {"conv2", "conv3"}, seen  # conv1 has one such tap only, conv4 none
        assert_stats_close(res, ref, rtol=1e-5 if dtype == torch.float64 else 1e-4)
        _sq_close(names, sq, ref, rtol=1e-4)


@pytest.mark.parametrize("compile_mode", ["off", "on"])
def test_head_closed_form_equals_the_engine_on_the_head(compile_mode, monkeypatch):
    """head_gradient_stats (logits and features only, bias column included) = the engine's fc row."""
    if compile_mode == "on":
        require_kernel()
    monkeypatch.setenv("GRADVIZ_COMPILE", compile_mode)
    model, model64, x = _case("mnist")
    for m in (model, model64):
        logits, h = m.logits_and_features(x.to(next(m.parameters()).dtype))
        for loss in LOSSES:
            got = head_gradient_stats(m.head, logits, h, loss=loss)
            want = layer_gradient_stats(m, x, loss=loss, layers=["fc"], c_kernel="off").values[:, 0]
            assert torch.allclose(got.double(), want.double(), rtol=1e-5, atol=1e-6), loss  # mean may be 0 ± rounding


@pytest.mark.parametrize("fold", [True, False])
def test_backward_stops_at_the_first_layer_output_even_if_an_inplace_op_follows_it(fold):
    """ResNet-18's stem: conv (+ folded BN) then ReLU(inplace). The pass hands a copy downstream, so
    the stem's output stays as produced: the statistics' backward stops there (the input gradient,
    a whole extra conv backward, is never computed), and an input gradient asked for still flows."""
    _, model, x = _case("resnet")  # float64
    gp = GradientPass(model, x, fold_bn=fold)
    assert not gp.uses[0].modified
    reached = []
    gp.x_in.register_hook(lambda g: reached.append(g))
    res = gp.layer_stats("nll_pred")
    assert reached == []
    assert_stats_close(res, _reference("resnet", "nll_pred"), rtol=1e-5)
    x64 = x.double()
    logits = model(x64)
    assert torch.allclose(gp.logits, logits, atol=1e-10)  # the copy changes nothing downstream
    _, dx = gp.output_grads(gp.logits, torch.ones_like(gp.logits), [], input_grad=True)
    want = torch.autograd.functional.vjp(lambda v: model(v), x64, torch.ones_like(logits))[1]
    assert reached and torch.allclose(dx, want, atol=1e-10, rtol=1e-8)


def _watch_earlier(gp: GradientPass, late: list) -> tuple[list, list[str]]:
    """(the unchanged uses before ``late``, a list that each backward reaching one of them or the input appends to)."""
    earlier = [u for u in gp.uses if u.index < min(u.index for u in late) and not u.modified and u.source is None]
    reached: list[str] = []
    for u in earlier:
        u.out.register_hook(lambda g, name=u.group: reached.append(name))
    gp.x_in.register_hook(lambda g: reached.append("input"))
    return earlier, reached


def test_output_grads_of_later_layers_stop_at_the_earliest_one_asked_for():
    """Asking for the last stage's outputs only (GAIA-A's "auto" rule) runs the backward down to the
    earliest of them, not to the stem: no hook of an earlier use fires, and every gradient asked
    for equals autograd's w.r.t. that output."""
    _, model, x = _case("resnet")  # float64, stock ResNet-18 (in-place ReLU, residual adds)
    gp = GradientPass(model, x)
    late = [u for u in gp.uses if u.group.startswith("layer4") and not u.modified and u.source is None]
    assert len(late) >= 3
    earlier, reached = _watch_earlier(gp, late)
    cot = torch.randn_like(gp.logits)
    got, _ = gp.output_grads(gp.logits, cot, late)
    assert reached == []
    want = torch.autograd.grad(gp.logits, [u.out for u in late], cot, retain_graph=True)
    for u, g, w in zip(late, got, want):
        assert torch.allclose(g, w, rtol=1e-10, atol=1e-12), u.group
    # an output the root does not depend on (after it in the forward): zero, and no second backward
    root, after = late[0].out, late[-1]
    unrelated, _ = gp.output_grads(root, torch.ones_like(root), [late[1], after])
    assert reached == [] and not unrelated[1].any() and unrelated[1].shape == after.out.shape
    got_all, _ = gp.output_grads(gp.logits, cot, gp.uses)  # everything: the full backward still runs
    assert set(reached) >= {u.group for u in earlier}
    for u in late:
        assert torch.allclose(got_all[u.index], got[late.index(u)], rtol=1e-10, atol=1e-12), u.group


@pytest.mark.parametrize("fold", [True, False])
def test_later_outputs_changed_in_place_stop_the_backward_at_their_inputs(fold):
    """A stock ResNet changes every BatchNorm output in place (ReLU, the residual ``+=``). Asking for a late
    stage's uses, those included, still stops the backward at the stage (at the inputs the uses read), and
    every gradient equals the full backward's: GAIA-A's last two stages cost a part of a backward, not one."""
    _, model, x = _case("resnet")  # float64, stock ResNet-18
    gp = GradientPass(model, x, fold_bn=fold)
    late = [u for u in gp.uses if u.group.startswith("layer4")]
    assert any(u.modified for u in late) and any(u.op == "batch_norm" for u in late)
    earlier, reached = _watch_earlier(gp, late)
    cot = torch.randn_like(gp.logits)
    got, _ = gp.output_grads(gp.logits, cot, late)
    assert reached == []
    got_all, _ = gp.output_grads(gp.logits, cot, gp.uses)
    assert set(reached) >= {u.group for u in earlier}
    for u, g in zip(late, got):
        assert torch.allclose(g, got_all[u.index], rtol=1e-10, atol=1e-12), u.group


@pytest.mark.parametrize("fold", [True, False])
def test_each_layer_s_output_gradient_goes_once_its_layer_is_reduced(monkeypatch, fold):
    """During the statistics' backward, a layer's plan lets go of its δ (and what it built from it) once its tensor
    hook is served: when a layer is reduced, no later layer's δ is still alive (a folded BatchNorm shares its
    convolution's hook, so at most that one), where every δ used to live until the whole backward ended."""
    _, model, x = _case("resnet")  # float64, stock ResNet-18
    gp = GradientPass(model, x, fold_bn=fold)
    real, alive = GradientPass.output_grads, []

    def watched(self, root, grad, uses, input_grad=False, each=None, done=None):
        seen: list = []

        def watch(use, g):
            alive.append(sum(r() is not None for r in seen))
            if use.out is not root:  # the head's δ is the root's gradient itself, handed over without a hook
                seen.append(weakref.ref(g))
            return each(use, g)

        return real(self, root, grad, uses, input_grad=input_grad, each=watch, done=done)

    monkeypatch.setattr(GradientPass, "output_grads", watched)
    assert_stats_close(gp.layer_stats("nll_pred"), _reference("resnet", "nll_pred"), rtol=1e-5)
    assert len(alive) > 10 and max(alive) <= 1


def test_calibration_stops_timing_a_plan_that_is_clearly_slower(monkeypatch, fresh_calibration):
    """A plan far slower than the best after its warm-up run gets no third run, and its strategy is
    not tried at the other chunk sizes; the fastest plan is the one kept."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Flatten(), nn.Linear(64 * 8 * 8, 3))
    model = wrap(net, (64, 8, 8), 3)
    x = batch((64, 8, 8), 128, seed=4)
    real_plans, real_parts, calls = ConvPlan.plans, ConvPlan.parts, []

    def plans(self):  # this layer's materialising plans, at three chunk sizes each
        return [p for p in real_plans(self) if p[0] in ("bmm", "conv")]

    def parts(self, strategy, sl, buf):
        calls.append((strategy, sl.stop - sl.start))
        if strategy == "conv":
            time.sleep(0.05)  # far slower than bmm on this layer
        return real_parts(self, strategy, sl, buf)

    monkeypatch.setattr(ConvPlan, "plans", plans)
    monkeypatch.setattr(ConvPlan, "parts", parts)
    layer_gradient_stats(model, x, c_kernel="off")
    sizes = {n for s, n in calls if s == "bmm"}
    assert len(sizes) == 3, calls  # every bmm chunk size was timed
    conv = [n for s, n in calls if s == "conv"]
    assert len(conv) == 2 and len(set(conv)) == 1, calls  # warm-up and one run, one chunk size
    chosen = [p for (signature, _bucket), p in CALIBRATION.choices().items() if signature[0] == "ConvPlan"]
    assert len(chosen) == 1 and chosen[0][0] == "bmm" and chosen[0][1] in sizes


def test_forced_calibration_is_exact_and_remembers_nothing(fresh_calibration):
    """CALIBRATION.forced fixes the strategy for reproducible runs: nothing is timed or kept."""
    model, x = conv_variants_model(), batch((2, 9, 9), 4, seed=13)
    with CALIBRATION.forced("bmm", samples=1):
        a = layer_gradient_stats(model, x, c_kernel="off")
    assert CALIBRATION.choices() == {}
    b = layer_gradient_stats(model, x, c_kernel="off")
    assert CALIBRATION.choices() and torch.allclose(a.values, b.values, rtol=1e-9, atol=1e-15)


def test_a_batch_of_another_size_is_calibrated_for_itself(monkeypatch, fresh_calibration):
    """Chunks timed on a batch of one would make a batch of 32 run one sample per chunk: the batch's power-of-two
    bucket is part of the calibration key, so every layer timed on one image is timed again on 32 (exactly)."""
    from gradviz.engine.calibrate import Calibration, batch_bucket

    real, timed = Calibration._calibrate, []

    def spy(self, plan, candidates):
        timed.append((plan.batch, type(plan).__name__, plan.o, plan.k))
        return real(self, plan, candidates)

    monkeypatch.setattr(Calibration, "_calibrate", spy)
    model = conv_variants_model()
    layer_gradient_stats(model, batch((2, 9, 9), 1, seed=14), loss="confounding_softmax", c_kernel="off")
    one = {t[1:] for t in timed if t[0] == 1}
    assert one and len(fresh_calibration.choices()) == len(one)
    x = batch((2, 9, 9), 32, seed=15)
    res = layer_gradient_stats(model, x, loss="confounding_softmax", c_kernel="off")
    assert one <= {t[1:] for t in timed if t[0] == 32}  # each timed again for the larger batch
    assert len(fresh_calibration.choices()) == len(timed)  # its own entries, beside those of the batch of one
    assert_stats_close(res, reference_stats(model, x, "confounding_softmax"), rtol=1e-5)
    assert [batch_bucket(n) for n in (1, 2, 3, 24, 32, 33)] == [1, 2, 4, 32, 32, 64]


def test_a_smaller_last_batch_takes_the_larger_batch_s_choice(monkeypatch, fresh_calibration):
    """A run's last, partial batch (1 or 2 images after batches of 3) is not timed again: it takes the choice of
    the nearest larger bucket already timed, its chunk capped at its size, and stays exact."""
    from gradviz.engine.calibrate import Calibration

    real, timed = Calibration._calibrate, []

    def spy(self, plan, candidates):
        timed.append(plan.batch)
        return real(self, plan, candidates)

    monkeypatch.setattr(Calibration, "_calibrate", spy)
    model = conv_variants_model()
    layer_gradient_stats(model, batch((2, 9, 9), 8, seed=16), loss="confounding_softmax", c_kernel="off")
    assert timed and set(timed) == {8}
    entries = len(fresh_calibration.choices())
    x = batch((2, 9, 9), 3, seed=17)
    res = layer_gradient_stats(model, x, loss="confounding_softmax", c_kernel="off")
    assert set(timed) == {8} and len(fresh_calibration.choices()) == entries  # nothing timed for the 3
    assert_stats_close(res, reference_stats(model, x, "confounding_softmax"), rtol=1e-5)


@pytest.mark.slow
def test_a_small_budget_never_unfolds_the_whole_batch(monkeypatch, fresh_calibration):
    """Where U of a layer does not fit the budget it is unfolded chunk by chunk only (the folded
    convs' scaled δ included), and the statistics stay exact."""
    _, model, x = _case("resnet")
    x = torch.cat([x, x.flip(0), x * 0.5])  # 9 samples
    ref = reference_stats(model, x, "nll_pred")
    sizes = []
    real_unfold = ConvPlan._unfold
    # rank-one convs (1x1 outputs) read one window
    monkeypatch.setattr(ConvPlan, "_unfold",
                        lambda self, v: (self.rank1 or sizes.append((self.unfold_once, v.shape[0])))
                        and False or real_unfold(self, v))
    with CALIBRATION.forced("bmm"):
        res = layer_gradient_stats(model, x, chunk_mib=0.05, c_kernel="off")
    per_chunk = [n for once, n in sizes if not once]
    assert per_chunk and max(per_chunk) < x.shape[0], sizes
    assert_stats_close(res, ref, rtol=1e-5)
