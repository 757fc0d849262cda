"""Conv1d (audio, spectra, token sequences): ∇W = Σ_p δ_p ⊗ window_p, ∇b = Σ_p δ_p.

For input x (n, Cin, L) and output gradient δ (n, O, P), output position p of a conv with kernel k,
stride s and dilation r reads the window x[:, :, p·s + j·r] (j < k) of the padded input; per group,
∇W[o, c, j] = Σ_p δ[o, p] · x[c, p·s + j·r]."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gradviz.engine.rules.registry import rule


def _one(v) -> int:
    return int(v) if isinstance(v, int) else int(v[0])


@rule("conv1d", torch.conv1d, signature=("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
      defaults={"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1},
      accepts=lambda layer: layer["input"].dim() == 3,
      workspace=lambda layer: layer["input"][0].numel() * layer["weight"].shape[-1])  # the windows, copied
def conv1d(layer: dict, activations: torch.Tensor, backprops: torch.Tensor) -> dict[str, torch.Tensor]:
    w, g = layer["weight"], int(layer["groups"])
    o, k = w.shape[0], w.shape[2]
    stride, dilation, padding = _one(layer["stride"]), _one(layer["dilation"]), layer["padding"]
    if isinstance(padding, str):  # 'same' pads (one more at the end where odd), 'valid' does not
        total = dilation * (k - 1) if padding == "same" else 0
        pad = (total // 2, total - total // 2)
    else:
        pad = (_one(padding),) * 2
    x = F.pad(activations, pad)  # (n, Cin, L')
    n, p = x.shape[0], backprops.shape[-1]
    windows = x.unfold(2, dilation * (k - 1) + 1, stride)[:, :, :p, ::dilation]  # (n, Cin, P, k)
    windows = windows.reshape(n, g, -1, p, k)
    d = backprops.reshape(n, g, o // g, p)
    grad_w = torch.einsum("ngop,ngcpk->ngock", d, windows).reshape(n, *w.shape)
    return {"weight": grad_w, "bias": backprops.sum(-1)}
