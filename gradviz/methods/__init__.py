"""Uncertainty methods: one module each (paper + formula in its docstring), one registry.

Importing this package registers every method; use :func:`list_methods` to see them.
"""

import importlib

from gradviz.methods.registry import ModelOutputs, get_method, list_methods, register, resolve_methods, run_method

# Registration order is display order: baselines first, then gradient methods.
_MODULES = [
    "baselines", "odin", "mahalanobis", "gradnorm", "confounding", "gaia", "oberdiek",
]
for _name in _MODULES:
    importlib.import_module(f"gradviz.methods.{_name}")

__all__ = ["ModelOutputs", "get_method", "list_methods", "register", "resolve_methods", "run_method"]
