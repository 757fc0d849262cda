"""The per-sample gradient engine: exact per-sample gradient statistics of every parameter, at the
speed of about one forward+backward, for any image classifier (CNNs, vision transformers, ...).

Oberdiek et al. 2018 and Lee & AlRegib 2020 need, for each sample b and each layer l, statistics of
the per-sample gradient ∇_{θ_l} ℓ_b. A batched backward only yields the batch *sum* of parameter
gradients, so the engine never asks autograd for them:

1. :mod:`.capture` — one forward under a ``TorchFunctionMode`` records every *use* of a parameter
   (the call where it meets the batch), with its inputs, and hooks its output;
2. :mod:`.gradient_pass` — per loss, ONE backward from the logits delivers each use's output
   gradient δ, exact per sample in eval mode; the use's plan reduces it in the hook, while hot;
3. :mod:`.plans` — one module per parameter kind: conv (with BatchNorm folded into it,
   :mod:`.folding`), linear over any leading dimensions, norms (BN/LN/GN), parameters broadcast over
   the batch, and an exact generic fallback; :mod:`.calibrate` picks the fastest strategy per layer;
4. :mod:`.kernels` — the compiled statistics kernel and its crash-proof loader; :mod:`.reduce` — the
   five partial sums the six statistics are finished from.

:func:`coverage` reports, per parameter group, which plan computes it.
"""

from gradviz.engine.api import (
    FORWARD_BATCH, LayerStats, head_gradient_stats, layer_gradient_stats, layer_parameters, layer_sq_l2_norms,
    parametrised_layers,
)
from gradviz.engine.calibrate import CALIBRATION
from gradviz.engine.coverage import Coverage, coverage
from gradviz.engine.gradient_pass import GradientPass
from gradviz.engine.losses import LOSSES
from gradviz.engine.reduce import STATS

__all__ = ["STATS", "LOSSES", "FORWARD_BATCH", "CALIBRATION", "LayerStats", "GradientPass", "Coverage", "coverage",
           "layer_gradient_stats", "layer_sq_l2_norms", "head_gradient_stats", "parametrised_layers",
           "layer_parameters"]
