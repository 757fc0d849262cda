"""Reading weights files safely: safetensors, or ``torch.load(weights_only=True)``. Never pickle.

Weights holding NaN or infinite values are refused (they score every sample alike). Messages
never repeat torch's advice to retry with ``weights_only=False`` and carry no terminal escapes.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import nn

from gradviz.errors import ModelError

MAX_WEIGHTS_BYTES = 2 * 1024**3
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f]")
_ADVICE = ("weights_only", "trusted source", "torch.load", "arbitrary code", "pytorch.org")


def _reason(exc: BaseException, n: int = 160) -> str:
    """The informative line of a loader's error: escapes removed, torch's "retry unsafely" advice dropped."""
    lines = [" ".join(_ESCAPES.sub("", line).split()) for line in str(exc).splitlines()]
    useful = [line for line in lines if line and not any(a in line for a in _ADVICE)]
    text = useful[0] if useful else type(exc).__name__
    return text if len(text) <= n else text[: n - 1] + "…"


def _clean(text: str) -> str:
    return _ESCAPES.sub("", text)


def _check_finite(state: dict[str, torch.Tensor], name: str) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelError(f"weights file {name}: {len(bad)} tensor(s) hold NaN or infinite values (e.g. {_clean(bad[0])!r}); "
                         "such a model scores every sample alike — retrain or re-export the weights")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (``.safetensors``, or a torch file read with weights_only).

    Raises :class:`ModelError` for a missing, truncated, oversized or code-carrying file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ModelError(f"weights file is empty: {path.name}")
    if size > MAX_WEIGHTS_BYTES:
        raise ModelError(f"weights file is larger than {MAX_WEIGHTS_BYTES // 1024**2} MiB: {path.name}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            state = load_file(str(path))
        except Exception as exc:  # safetensors raises several types for damaged headers
            raise ModelError(f"cannot read safetensors file {_clean(path.name)}: {_reason(exc)}") from None
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # the file asks for code (or objects) beyond plain tensors
            raise ModelError(
                f"refused weights file {_clean(path.name)}: not a plain tensor state dict (it would need to run code "
                f"from the file, which gradviz never does; save it with safetensors or torch.save(model.state_dict())): "
                f"{_reason(exc)}"
            ) from None
        except Exception as exc:  # RuntimeError for a truncated zip, EOFError, ...
            raise ModelError(f"cannot read weights file {_clean(path.name)} (damaged, or not a torch weights file): "
                             f"{_reason(exc, 100)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{_clean(path.name)} does not hold a state dict of tensors")
    _check_finite(state, _clean(path.name))
    return state


def apply_state_dict(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``net`` strictly, turning mismatches into one readable error."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("wrong shapes: " + "; ".join(wrong[:3]))
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise ModelError(f"{source} does not fit this architecture: " + ", ".join(parts))
    net.load_state_dict(state, strict=True)
