"""Fitted methods shipped with the bundled models, so that a first visit does not wait for the fits.

Every fitted method (Mahalanobis, KNN, GROOD, …) of the bundled ``mnist-cnn`` and ``mnist-vit`` is fitted
once on the embedded default fit set (``mnist:train``, the 4,000 training digits) with its default
parameters, and its fitted state is written beside the weights as ``assets/<model>.fits.safetensors``
(``python -m gradviz fits`` regenerates the files). A safetensors file holds tensors only and JSON in its
header: reading it runs no code, and a state is only rebuilt into the method's own class (or a class of
the method's module), attribute by attribute.

A shipped state is used only when its key matches the fit that would be made exactly (:func:`state_key`):
the model's parameters and card (:func:`gradviz.scoring.model_inputs`), the method and all of its
parameters (defaults included), a digest of the fit images as the model sees them and of their labels,
and a digest of the method's module and the shared fitting code. Anything else (another model, other
weights, a parameter changed in the sidebar, an own ID set, an edited method) fits as before. The code in the
key is the method module's and the shared fitting code's syntax tree without imports, docstrings and
decorators, so a moved import or a reworded description keeps the shipped fits. That a
shipped state equals a fresh fit (up to floating-point noise) is checked by ``tests/test_prefit.py``;
``python -m gradviz fits --check`` checks it against the files on disk.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradviz.config import asset_path
from gradviz.errors import GradvizError
from gradviz.methods.registry import MethodInfo, MethodRunner

__all__ = ["SUFFIX", "BUNDLED", "state_key", "shipped_state", "write_fits", "shipped_files", "compare_states",
           "fit_bundled"]

FORMAT = 1
SUFFIX = ".fits.safetensors"
BUNDLED = ("mnist-cnn", "mnist-vit")  # the models whose fits ship (the default fit set, default parameters)
_SCALARS = (bool, int, float, str, type(None))

_lock = threading.Lock()
_index: dict[str, tuple[Path, dict]] | None = None  # model digest -> (file, its header's entries)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class _CodeOnly(ast.NodeTransformer):
    """A module's syntax tree without imports, docstrings and decorators: what it computes, not where it imports
    from (a moved module) or how it is described (the registration's texts)."""

    def visit_Import(self, node):  # noqa: N802  (ast.NodeTransformer's naming)
        return None

    visit_ImportFrom = visit_Import

    def generic_visit(self, node):
        super().generic_visit(node)
        if hasattr(node, "decorator_list"):
            node.decorator_list = []
        body = getattr(node, "body", None)
        if isinstance(body, list):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body and \
                    isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body = body[1:]
            node.body = body or [ast.Pass()]
        return node


# CPython 3.11's AST constructor keeps its recursion depth in shared state: two threads parsing at once (the
# server's warm-up jobs, one per model) fail with "AST constructor recursion depth mismatch".
_AST_LOCK = threading.Lock()


def code_text(source: str) -> str:
    """The code of Python ``source`` as it counts in the key (:class:`_CodeOnly`), as text."""
    with _AST_LOCK:
        return ast.dump(_CodeOnly().visit(ast.parse(source)))


@functools.lru_cache(maxsize=None)
def _code_of(module) -> str:
    """:func:`code_text` of a module's source, once per process (a module's source does not change under it)."""
    return code_text(inspect.getsource(module))


def code_digest(info: MethodInfo) -> str:
    """Digest of the code of the method's module and of the fitting code every fitted method shares (syntax trees
    without imports, docstrings and decorators: see :class:`_CodeOnly`)."""
    from gradviz.methods import _fitting

    return _sha((_code_of(inspect.getmodule(info.impl)) + _code_of(_fitting)).encode())


def state_key(model, info: MethodInfo, params: dict, images: torch.Tensor, labels) -> dict:
    """What a fitted state depends on (see the module docstring), as a JSON-able dict."""
    from gradviz.scoring import images_digest, model_inputs

    label_bytes = np.ascontiguousarray(np.asarray(labels, dtype=np.int64)).tobytes()
    return {"format": FORMAT, "model": model_inputs(model), "method": info.name,
            "params": json.loads(json.dumps(params, sort_keys=True)), "images": images_digest(images),
            "labels": _sha(label_bytes), "code": code_digest(info)}


# ----------------------------------------------------------------------------- state <-> tensors + JSON


def _flatten(prefix: str, obj: Any, module: str, tensors: dict[str, torch.Tensor]) -> dict:
    """The attributes of ``obj`` as a JSON description; its tensors and arrays go into ``tensors``."""
    out = {}
    for name, value in vars(obj).items():
        key = f"{prefix}.{name}"
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().cpu().contiguous()
            out[name] = {"kind": "tensor"}
        elif isinstance(value, np.ndarray):
            tensors[key] = torch.from_numpy(np.ascontiguousarray(value).copy())
            out[name] = {"kind": "ndarray"}
        elif isinstance(value, np.generic):
            out[name] = {"kind": "value", "value": value.item()}
        elif isinstance(value, _SCALARS):
            out[name] = {"kind": "value", "value": value}
        elif type(value).__module__ == module:  # a helper object of the method's own module (e.g. a Gaussian)
            out[name] = {"kind": "object", "class": type(value).__name__,
                         "attrs": _flatten(key, value, module, tensors)}
        else:
            raise GradvizError(f"{prefix}: attribute {name!r} of type {type(value).__name__} cannot be shipped")
    return out


def _build(cls: type, prefix: str, attrs: dict, module, tensors) -> Any:
    obj = cls.__new__(cls)
    for name, spec in attrs.items():
        key, kind = f"{prefix}.{name}", spec["kind"]
        if kind == "tensor":
            value = tensors[key]
        elif kind == "ndarray":
            value = tensors[key].numpy()
        elif kind == "value":
            value = spec["value"]
        elif kind == "object":
            helper = getattr(module, spec["class"], None)
            if not isinstance(helper, type) or helper.__module__ != module.__name__:
                raise GradvizError(f"{prefix}: {spec['class']!r} is not a class of {module.__name__}")
            value = _build(helper, key, spec["attrs"], module, tensors)
        else:
            raise GradvizError(f"{prefix}: unknown attribute kind {kind!r}")
        setattr(obj, name, value)
    return obj


def write_fits(path: str | Path, model, runners: list[MethodRunner], images: torch.Tensor, labels) -> Path:
    """Write the fitted ``runners`` of ``model`` (fitted on ``images``, ``labels``) to ``path`` (safetensors)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    entries = {}
    for r in runners:
        if r.state is None:
            raise GradvizError(f"{r.info.name} is not fitted")
        entries[r.info.name] = {"key": state_key(model, r.info, r.params, images, labels),
                                "attrs": _flatten(r.info.name, r.state, r.info.impl.__module__, tensors)}
    header = {"gradviz_fits": json.dumps({"format": FORMAT, "model": model.digest, "entries": entries},
                                         sort_keys=True)}
    path = Path(path)
    save_file(tensors, str(path), metadata=header)
    path.chmod(0o644)  # package data, readable like the weights beside it
    global _index
    with _lock:
        _index = None  # read the folder afresh
    return path


def shipped_files(folder: str | Path | None = None) -> dict[str, tuple[Path, dict]]:
    """{model digest: (file, its entries)} of the fit files in ``folder`` (default: the bundled assets); headers
    only, read once per process for the assets."""
    global _index
    from safetensors import SafetensorError, safe_open

    if folder is None:
        with _lock:
            if _index is not None:
                return _index
    found = {}
    for path in sorted(Path(folder or asset_path()).glob(f"*{SUFFIX}")):
        try:
            with safe_open(str(path), framework="pt") as fh:
                header = json.loads((fh.metadata() or {}).get("gradviz_fits", "{}"))
        except (OSError, ValueError, SafetensorError):  # an unreadable file is no shipped fit
            continue
        if header.get("format") == FORMAT and isinstance(header.get("entries"), dict):
            found[str(header.get("model"))] = (path, header["entries"])
    if folder is None:
        with _lock:
            _index = found
    return found


def shipped_state(model, runner: MethodRunner, images: torch.Tensor, labels, folder: str | Path | None = None):
    """The shipped fitted state of ``runner`` on ``model``, fitted on ``images``/``labels``, or None when none
    ships for exactly this (model, method, parameters, fit set, code)."""
    import importlib

    from safetensors import safe_open

    found = shipped_files(folder).get(getattr(model, "digest", None))
    entry = found[1].get(runner.info.name) if found else None
    if entry is None or entry["key"] != state_key(model, runner.info, runner.params, images, labels):
        return None
    prefix = f"{runner.info.name}."
    with safe_open(str(found[0]), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys() if k.startswith(prefix)}
    module = importlib.import_module(runner.info.impl.__module__)
    return _build(runner.info.impl, runner.info.name, entry["attrs"], module, tensors)


def compare_states(a: Any, b: Any, rtol: float = 1e-4, atol: float = 1e-6, where: str = "") -> list[str]:
    """Differences between two fitted states (tensors and arrays within ``rtol``/``atol``, the rest equal)."""
    va, vb = vars(a), vars(b)
    if set(va) != set(vb):
        return [f"{where}: attributes {sorted(va)} vs {sorted(vb)}"]
    out = []
    for name in va:
        x, y, at = va[name], vb[name], f"{where}.{name}"
        if isinstance(x, (torch.Tensor, np.ndarray)) or isinstance(y, (torch.Tensor, np.ndarray)):
            xa, ya = np.asarray(x), np.asarray(y)
            if xa.shape != ya.shape or xa.dtype != ya.dtype:
                out.append(f"{at}: {xa.dtype}{xa.shape} vs {ya.dtype}{ya.shape}")
            elif not np.allclose(xa, ya, rtol=rtol, atol=atol, equal_nan=True):
                err = np.nanmax(np.abs(xa.astype(np.float64) - ya.astype(np.float64)))
                out.append(f"{at}: differs by up to {err:.3g}")
        elif hasattr(x, "__dict__") and not isinstance(x, _SCALARS):
            out += compare_states(x, y, rtol, atol, at)
        elif isinstance(x, float) and isinstance(y, float):
            if not np.isclose(x, y, rtol=rtol, atol=atol):
                out.append(f"{at}: {x!r} vs {y!r}")
        elif x != y:
            out.append(f"{at}: {x!r} vs {y!r}")
    return out


def fit_bundled(name: str, methods: list[MethodInfo] | None = None, limit: int | None = None):
    """(model, fitted runners, fit images, labels): ``name``'s fitted methods (default: all of them, default
    parameters) freshly fitted on the default fit set (``limit``: its first images only, for a quick check)."""
    from gradviz.data import load_dataset
    from gradviz.methods.registry import list_methods
    from gradviz.models import load_model
    from gradviz.runconfig import RunConfig

    model = load_model(name)
    cfg = RunConfig(model=name)
    data = load_dataset(cfg.fit_set, model.card, seed=cfg.seed, limit=limit)
    runners = [info.create().fit(model, data.images, data.labels)
               for info in (methods or [m for m in list_methods() if m.needs_fit])]
    return model, runners, data.images, data.labels
