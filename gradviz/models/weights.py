"""Reading weights files safely: safetensors, or ``torch.load(weights_only=True)``. Never pickle."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gradviz.errors import ModelError

MAX_WEIGHTS_BYTES = 2 * 1024**3


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
            raise ModelError(f"cannot read safetensors file {path.name}: {exc}") from None
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for code-carrying pickles, RuntimeError for truncation
            raise ModelError(
                f"refused weights file {path.name}: not a plain tensor state dict "
                f"(only safetensors or weights-only torch files are read): {str(exc).splitlines()[0][:200]}"
            ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path.name} does not hold a state dict of tensors")
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
