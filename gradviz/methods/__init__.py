"""Uncertainty methods: one module each (paper + formula in its docstring), one registry.

Importing this package imports every module in this folder (except ``registry`` and private
``_*`` helpers), which registers its methods: adding a method is adding a file. Use
:func:`list_methods` to see them (ordered by family, then year).
"""

import importlib
import pkgutil

from gradviz.methods.registry import (FAMILIES, ModelOutputs, get_method, list_methods, methods_by_family, register,
                                      resolve_methods, run_method)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "registry" and not _module.startswith("_"):
        importlib.import_module(f"gradviz.methods.{_module}")

__all__ = ["FAMILIES", "ModelOutputs", "get_method", "list_methods", "methods_by_family", "register",
           "resolve_methods", "run_method"]
