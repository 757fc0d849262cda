"""Conv2d: ∇W = Δ Uᵀ per group, with U the unfolded input (Cin/g·kh·kw × P) and Δ (O/g × P)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gradviz.engine.rules.registry import rule


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


@rule("conv2d", torch.conv2d, signature=("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
      defaults={"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1},
      accepts=lambda layer: layer["input"].dim() == 4,
      workspace=lambda layer: layer["input"][0].numel() * layer["weight"][0, 0].numel())  # the unfolded input
def conv2d(layer: dict, activations: torch.Tensor, backprops: torch.Tensor) -> dict[str, torch.Tensor]:
    w, g = layer["weight"], int(layer["groups"])
    kernel, dilation, padding = tuple(w.shape[2:]), _pair(layer["dilation"]), layer["padding"]
    x = activations
    if isinstance(padding, str):  # 'same' pads (possibly one more at the end), 'valid' does not
        if padding == "same":
            tot = [d * (k - 1) for d, k in zip(dilation, kernel)]
            x = F.pad(x, (tot[1] // 2, tot[1] - tot[1] // 2, tot[0] // 2, tot[0] - tot[0] // 2))
        padding = 0
    n, o = x.shape[0], w.shape[0]
    u = F.unfold(x, kernel, dilation, _pair(padding), _pair(layer["stride"]))  # (n, Cin·kh·kw, P)
    u = u.reshape(n, g, -1, u.shape[-1])
    d = backprops.reshape(n, g, o // g, -1)  # (n, g, O/g, P)
    grad_w = torch.einsum("ngop,ngkp->ngok", d, u).reshape(n, *w.shape)
    return {"weight": grad_w, "bias": backprops.reshape(n, o, -1).sum(-1)}
