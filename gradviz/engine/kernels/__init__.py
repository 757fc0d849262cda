"""The compiled statistics kernel (``fused_stats.c``): ctypes bindings and a loader that never
crashes the process (see :mod:`.loader`)."""

from gradviz.engine.kernels.binding import FusedKernel, transposed_weight
from gradviz.engine.kernels.loader import (
    MODES, build_in_background, compiled_status, cpu_features, fused_kernel, resolve_mode, source_version, warm_up,
)

__all__ = ["FusedKernel", "transposed_weight", "MODES", "build_in_background", "compiled_status", "cpu_features",
           "fused_kernel", "resolve_mode", "source_version", "warm_up"]
