"""The per-sample gradient engine's public API (the engine itself lives in :mod:`gradviz.engine`)."""

from gradviz.engine import (  # noqa: F401  (re-exported)
    FORWARD_BATCH, LOSSES, STATS, GradientPass, LayerStats, coverage, head_gradient_stats, layer_gradient_stats,
    layer_parameters, layer_sq_l2_norms, parametrised_layers,
)

__all__ = ["STATS", "LOSSES", "FORWARD_BATCH", "LayerStats", "GradientPass", "coverage", "layer_gradient_stats",
           "layer_sq_l2_norms", "head_gradient_stats", "parametrised_layers", "layer_parameters"]
