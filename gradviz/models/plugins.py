"""Your own architecture: packaging entry points (group ``gradviz.models``) and ``file.py:build``.

A plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."gradviz.models"]
    my-net = "mypkg.models:build"

and ``build()`` (no arguments) returns the network with its card, as any of

- a :class:`~gradviz.models.GradvizModel` (``GradvizModel(net, card)``),
- a tuple ``(net, card)`` where ``card`` is a :class:`~gradviz.models.ModelCard` or a dict
  with at least ``input_size``, ``mean``, ``std`` and ``class_names``,
- an ``nn.Module`` carrying the card as its ``card`` attribute.

``my-net`` then appears in ``gradviz list``, the CLI (``--model my-net``) and the dashboard's
Model picker. For local work, ``--model path/to/file.py:build`` imports that file and calls
``build`` the same way. Both run the user's own code, so they are loaded only where the
person running gradviz asked for them: an installed package, the command line, or the
server configuration of the dashboard (``GRADVIZ_MODELS`` or ``streamlit run app.py --
--model file.py:build``, see :func:`server_model_specs`) — never from a browser.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import sys
import threading
from pathlib import Path
from typing import Sequence

from torch import nn

from gradviz.errors import ModelError
from gradviz.models.card import ModelCard

GROUP = "gradviz.models"
FILE_SUFFIX = ".py:"
ENV_MODELS = "GRADVIZ_MODELS"  # ";"-separated file.py:build specs the dashboard may load
_LOCK = threading.Lock()
_ENTRY_POINTS: dict[tuple, dict] = {}


def plugin_entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Installed ``gradviz.models`` entry points by name (first one wins; rescanned when sys.path changes)."""
    key = tuple(sys.path)
    with _LOCK:
        if key not in _ENTRY_POINTS:
            found: dict[str, importlib.metadata.EntryPoint] = {}
            for ep in importlib.metadata.entry_points(group=GROUP):
                found.setdefault(ep.name, ep)
            _ENTRY_POINTS.clear()
            _ENTRY_POINTS[key] = found
        return dict(_ENTRY_POINTS[key])


def describe_plugin(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    where = f" from {dist.name} {dist.version}" if dist is not None else ""
    return f"plugin {ep.value}{where}"


def is_file_spec(name: str) -> bool:
    """``path/to/file.py:build`` (a function in a Python file)."""
    return isinstance(name, str) and FILE_SUFFIX in name and not name.endswith(FILE_SUFFIX)


def parse_file_spec(spec: str) -> tuple[Path, str]:
    """``"models/net.py:build"`` -> (Path("models/net.py"), "build")."""
    path, _, func = str(spec).rpartition(":")
    if not path.endswith(".py") or not func.isidentifier():
        raise ModelError(f"expected path/to/file.py:function, got {spec!r}")
    return Path(path).expanduser(), func


def net_and_card(obj, name: str) -> tuple[nn.Module, ModelCard]:
    """What a builder returned -> (the eager network, its validated card) (see the module doc for the accepted
    forms); :func:`gradviz.models.resolver.finish` then checks the card with one dry forward pass, as for an
    upload."""
    from gradviz.models import GradvizModel
    from gradviz.models.compiled import uncompiled

    if isinstance(obj, GradvizModel):
        return obj.net, obj.card.validate()
    card = None
    if isinstance(obj, tuple) and len(obj) == 2:
        obj, card = obj
    elif isinstance(obj, nn.Module):
        card = getattr(obj, "card", None)
    if not isinstance(obj, nn.Module):
        raise ModelError(f"{name}: the builder returned {type(obj).__name__}; expected an nn.Module with its card "
                         "((net, card), GradvizModel(net, card), or net.card = ...)")
    if card is None:
        raise ModelError(f"{name}: the builder returned a network without a card; return (net, card) with "
                         "card = ModelCard(...) or a dict with input_size, mean, std and class_names")
    if isinstance(card, dict):
        card = ModelCard.from_dict({"name": name, **card})
    if not isinstance(card, ModelCard):
        raise ModelError(f"{name}: the card must be a ModelCard or a dict, got {type(card).__name__}")
    return uncompiled(obj), card.validate()  # hooks and per-sample gradients need the eager module


def _call(builder, name: str):
    if not callable(builder):
        raise ModelError(f"{name}: {builder!r} is not callable")
    try:
        return net_and_card(builder(), name)
    except ModelError:
        raise
    except Exception as exc:  # the user's own code: report it as theirs, with the type and message
        raise ModelError(f"{name}: the builder raised {type(exc).__name__}: {str(exc)[:200]}") from exc


def build_plugin(name: str) -> tuple[nn.Module, ModelCard]:
    """Import and call the entry point ``name`` of the group ``gradviz.models``: (net, card)."""
    eps = plugin_entry_points()
    if name not in eps:
        raise ModelError(f"no gradviz.models plugin named {name!r}; installed: {', '.join(eps) or 'none'}")
    try:
        builder = eps[name].load()
    except Exception as exc:  # ImportError, AttributeError, or the plugin's own import-time error
        raise ModelError(f"plugin {name!r} ({eps[name].value}) could not be imported: {type(exc).__name__}: {exc}") from exc
    return _call(builder, name)


def build_from_file(spec: str) -> tuple[nn.Module, ModelCard]:
    """Import ``file.py`` (as a private module) and call its ``function`` (``spec = file.py:function``): (net, card)."""
    path, func = parse_file_spec(spec)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    resolved = path.resolve()
    module_name = "gradviz_user_model_" + hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    loader_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if loader_spec is None or loader_spec.loader is None:
        raise ModelError(f"cannot import {path} as a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    try:
        sys.modules[module_name] = module  # dataclasses and pickling-free helpers look their module up here
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ModelError(f"{path} could not be imported: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if not hasattr(module, func):
        names = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise ModelError(f"{path} has no function {func!r}; callables in it: {', '.join(names[:8]) or 'none'}")
    return _call(getattr(module, func), spec)


def server_model_specs(argv: Sequence[str] | None = None, environ: dict | None = None) -> list[str]:
    """The ``file.py:build`` models the person running the dashboard allowed (server configuration).

    From ``GRADVIZ_MODELS`` (``;``-separated) and from ``--model SPEC`` arguments after the
    script (``streamlit run app.py -- --model net.py:build``). Never from a browser.
    """
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    specs = [s.strip() for s in environ.get(ENV_MODELS, "").split(";") if s.strip()]
    for i, arg in enumerate(argv):
        if arg == "--model" and i + 1 < len(argv):
            specs.append(argv[i + 1].strip())
        elif arg.startswith("--model="):
            specs.append(arg.split("=", 1)[1].strip())
    return list(dict.fromkeys(s for s in specs if s))
