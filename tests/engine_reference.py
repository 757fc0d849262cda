"""The slow, obvious reference the engine is checked against: one float64 backward per sample.

Shared by the engine's tests (not a test module itself)."""

from __future__ import annotations

import copy
import os

import pytest

import torch
import torch.nn.functional as F
from torch import nn

from gradviz.engine import LOSSES, STATS, LayerStats, layer_parameters
from gradviz.models import GradvizModel
from gradviz.models.card import ModelCard

# Per-sample losses whose logit gradients LOSSES claims in closed form.
REFERENCE_LOSSES = {
    "nll_pred": lambda z: -z.log_softmax(-1)[z.argmax(-1)],
    "confounding_sigmoid": lambda z: F.softplus(-z).sum(),  # -Σ log σ(z_c)
    "confounding_softmax": lambda z: -z.log_softmax(-1).sum(),  # -Σ log p_c
}


def wrap(net: nn.Module, input_size, classes: int = 10) -> GradvizModel:
    """A GradvizModel around ``net`` with a plain card (mean 0.5, std 0.25)."""
    c = input_size[0]
    card = ModelCard(name="t", architecture=type(net).__name__, input_size=tuple(input_size), mean=(0.5,) * c,
                     std=(0.25,) * c, class_names=[str(i) for i in range(classes)])
    return GradvizModel(net, card).eval()


def batch(shape, n, seed=0) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


def randomise_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial running statistics and affine parameters for every BatchNorm2d."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.3)
            if m.affine:
                with torch.no_grad():
                    m.weight.copy_(torch.randn(c, generator=g) * 0.5 + 1.0)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model


def reference_stats(model: GradvizModel, x: torch.Tensor, loss: str) -> dict[str, dict[str, torch.Tensor]]:
    """{group: {stat: (B,)}} from one float64 autograd backward per sample, every parameter of every
    group (the engine's grouping: :func:`layer_parameters`). The loss enters through its precise logit
    gradient (LOSSES, itself checked against autograd), so a saturated softmax loses no digits."""
    net64 = copy.deepcopy(model.net).double()  # the wrapper holds a lock: copy the network only
    mean, std = model.mean.double(), model.std.double()
    groups = layer_parameters(model)
    params = dict(net64.named_parameters())
    names = list(groups)
    plist = [params[q] for g in names for q, _ in groups[g]]
    rows: dict[str, list[torch.Tensor]] = {g: [] for g in names}
    # PyTorch's CPU eval-mode BatchNorm backward returns wrong ∇γ, ∇β for ONE sample whose output gradient has
    # channels-last strides (a (1, C, H, W) map flattened and transposed into tokens: timm LeViT's stem); a
    # contiguous copy of that gradient gives the right ones (the engine computes them from δ and x itself)
    for m in net64.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.register_forward_hook(lambda _m, _i, out: out.register_hook(torch.Tensor.contiguous) and None)
    for b in range(x.shape[0]):
        z = net64((x[b:b + 1].double() - mean) / std)
        grads = torch.autograd.grad(z, plist, grad_outputs=LOSSES[loss](z.detach()), allow_unused=True)
        k = 0
        for g in names:
            n = len(groups[g])
            v = torch.cat([(gr if gr is not None else torch.zeros_like(p)).reshape(-1)
                           for gr, p in zip(grads[k:k + n], plist[k:k + n])])
            k += n
            rows[g].append(torch.stack([v.abs().sum(), v.norm(), v.max(), v.min(), v.mean(), v.std(unbiased=False)]))
    return {g: dict(zip(STATS, torch.stack(r).unbind(1))) for g, r in rows.items()}


def assert_stats_close(res: LayerStats, ref: dict[str, dict[str, torch.Tensor]], rtol: float) -> None:
    """Every statistic of every reported group within ``rtol``: relative to its own size (l1, l2) or to
    the group's RMS entry (mean, max, min, std, which may be near 0: a one-entry group's std is 0)."""
    assert set(res.layers) == set(ref), (sorted(set(res.layers) ^ set(ref)))
    for i, (name, numel) in enumerate(zip(res.layers, res.numels)):
        want = ref[name]
        rms = want["l2"] / numel ** 0.5
        for s in res.stats:
            got = res.values[:, i, res.stats.index(s)].double()
            scale = rms if s in ("mean", "max", "min", "std") else want[s].abs()
            err = ((got - want[s]).abs() / scale.clamp_min(1e-300)).max().item()
            assert err < rtol, f"{name} {s}: relative error {err:.2e}"


def require_kernel() -> None:
    """Skip a test that needs the compiled statistics kernel where it cannot be built — except where
    ``GRADVIZ_REQUIRE_KERNEL=1`` (CI, which has a compiler): there a missing kernel fails the test."""
    from gradviz.engine.kernels import compiled_status, warm_up

    if warm_up() != "ready":
        reason = f"compiled kernel unavailable here: {compiled_status()}"
        if os.environ.get("GRADVIZ_REQUIRE_KERNEL") == "1":
            pytest.fail(reason + " (GRADVIZ_REQUIRE_KERNEL=1)")
        pytest.skip(reason)


def conv_variants_model() -> GradvizModel:
    """Grouped, dilated, strided, biased, reflect-padded convs, a 1x1-output conv, in-place ReLUs
    (the first layer's output is modified in place: its gradient comes from a tensor hook)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=True), nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, stride=2, dilation=2, padding=2, groups=2), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
        nn.Conv2d(6, 6, 3, padding="same", padding_mode="reflect", bias=False),
        nn.Conv2d(6, 7, 2, padding="same"),  # an even kernel: 'same' pads unevenly
        nn.Conv2d(7, 8, 5),  # 5x5 input -> 1x1 output: rank-one path
        nn.Flatten(), nn.Linear(8, 5),
    )
    return randomise_bn(wrap(net, (2, 9, 9), 5)).double()
