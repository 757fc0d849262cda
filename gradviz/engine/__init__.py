"""The per-sample gradient engine: exact per-sample gradient statistics of every parameter, at the
speed of about one forward+backward, for any image classifier (CNNs, vision transformers, ...).

Oberdiek et al. 2018 and Lee & AlRegib 2020 need, for each sample b and each layer l, statistics of
the per-sample gradient ∇_{θ_l} ℓ_b. A batched backward only yields the batch *sum* of parameter
gradients, so the engine never asks autograd for them:

1. :mod:`.capture` — one forward under a ``TorchFunctionMode`` records every *use* of a parameter
   (the call where it meets the batch), with its inputs, and hooks its output;
2. :mod:`.gradient_pass` — per loss, ONE backward from the logits delivers each use's output
   gradient δ, exact per sample in eval mode; the use's plan reduces it in the hook, while hot;
3. :mod:`.rules` — one decorated function per layer kind (conv1d, conv2d, linear, the norms):
   ``(layer, activations, backprops) -> per-sample gradients``; the capture's tables come from them;
4. :mod:`.plans` — the plan of each use: its kind's rule, or, as an optional layer on top, a fast
   plan (conv2d with BatchNorm folded into it, :mod:`.folding`; linear over any leading dimensions;
   norms) whose strategy :mod:`.calibrate` times per layer; parameters broadcast over the batch; an
   exact generic fallback for any other op. ``with plans.fast_plans(False):`` serves every kind from
   its rule alone, with the same results;
5. :mod:`.kernels` — the compiled C statistics kernel (``c_kernel=``) and its crash-proof loader;
   :mod:`.reduce` — the five partial sums the six statistics are finished from.

:func:`coverage` reports, per parameter group, which plan computes it.

Adding a layer kind
-------------------
One file in ``gradviz/engine/rules/`` (imported in ``rules/__init__.py``) and one test. The rule
names the torch functions of the kind and their positional arguments, and turns a chunk of rows
into per-row gradients of the arguments that are parameters::

    @rule("conv1d", torch.conv1d, signature=("input", "weight", "bias", "stride", "padding",
          "dilation", "groups"), defaults={"bias": None, "stride": 1, "padding": 0, "dilation": 1,
          "groups": 1}, accepts=lambda layer: layer["input"].dim() == 3)
    def conv1d(layer, activations, backprops):  # (n, Cin, L), (n, O, P): n rows
        ...
        return {"weight": grad_w, "bias": backprops.sum(-1)}  # (n, O, Cin/g, k), (n, O)

``layer`` holds the call's arguments by name; the engine adds up the rows of one sample (a sample
may own several rows, sample-major), sizes the chunks to the memory budget, sums weights shared by
several uses and reduces to the statistics. The test compares the engine with the float64 per-sample
autograd loop (``tests/engine_reference.py``; ``tests/test_engine_conv1d.py`` is the example) and
checks that ``coverage`` names the kind. A fast plan for the kind (a :class:`~.plans.base.Plan`
subclass in :data:`~.plans.FAST_PLANS`) is optional and must give the rule's numbers.
"""

from gradviz.engine.api import (
    FORWARD_BATCH, LayerStats, head_gradient_stats, layer_gradient_stats, layer_parameters, layer_sq_l2_norms,
    parametrised_layers,
)
from gradviz.engine.calibrate import CALIBRATION
from gradviz.engine.coverage import Coverage, coverage
from gradviz.engine.gradient_pass import GradientPass
from gradviz.engine.losses import LOSSES
from gradviz.engine.plans import fast_plans
from gradviz.engine.reduce import STATS
from gradviz.engine.rules import rule

__all__ = ["STATS", "LOSSES", "FORWARD_BATCH", "CALIBRATION", "LayerStats", "GradientPass", "Coverage", "coverage",
           "layer_gradient_stats", "layer_sq_l2_norms", "head_gradient_stats", "parametrised_layers",
           "layer_parameters", "rule", "fast_plans"]
