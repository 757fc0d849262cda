"""Reading weights files safely: safetensors, or ``torch.load(weights_only=True)``. Never pickle.

Weights holding NaN or infinite values are refused (they score every sample alike). Messages
never repeat torch's advice to retry with ``weights_only=False`` and carry no terminal escapes.
Weights from a browser (:func:`read_safetensors_bytes`) are read as safetensors only, from
memory: the bytes are sniffed first, so a pickle, a ``torch.save`` zip, TorchScript or an
exported ``.pt2`` renamed ``.safetensors`` is refused by name and never parsed, and every
tensor is checked for NaN/inf.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import struct
import zipfile
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
    check_finite(state, f"weights file {_clean(path.name)}")
    return state


SAFETENSORS_HEADER_MAX = 100 * 1024 * 1024  # the format's own bound on the JSON header


def _examples(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", … ({len(keys) - n} more)" if len(keys) > n else "")


def apply_state_dict(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``net`` strictly, turning mismatches into one readable error
    (a few of the missing / unexpected keys and of the shape mismatches are named)."""
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
            parts.append("wrong shapes: " + "; ".join(wrong[:3]) + (f"; … ({len(wrong)} in all)" if len(wrong) > 3 else ""))
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_examples(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_examples(unexpected)}")
        raise ModelError(f"{source} does not fit this architecture — " + "; ".join(parts))
    net.load_state_dict(state, strict=True)


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or infinite values (naming a few tensors): such a model scores every
    sample alike (files and uploads alike)."""
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise ModelError(f"{source} holds NaN or infinite values in {len(bad)} tensor(s): {_examples(bad)} — such a "
                         "model scores every sample alike; retrain or re-export the weights")


def _zip_kind(data: bytes) -> str:
    """What a zip archive with PyTorch inside is, from its member names only (nothing is unpickled)."""
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return "a zip archive"
    tails = {n.split("/", 1)[-1] for n in names}
    if any(t.startswith("code/") or t == "constants.pkl" for t in tails):
        return "a TorchScript archive (torch.jit.save)"
    if "archive_format" in tails or any(t.startswith("models/") for t in tails):
        return "an exported program (.pt2, torch.export.save)"
    if "data.pkl" in tails:
        return "a torch.save checkpoint (a pickle inside a zip)"
    return "a zip archive"


def sniff_weights(data: bytes) -> str | None:
    """None for bytes that start like safetensors; else what they look like (pickle, zip, ...)."""
    if data[:4] == b"PK\x03\x04":
        return _zip_kind(data)
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (e.g. a legacy torch.save file)"
    if data[:2] == b"\x1f\x8b":
        return "a gzip archive"
    if len(data) < 10:
        return "too short to be a safetensors file"
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len == 0 or header_len > min(SAFETENSORS_HEADER_MAX, len(data) - 8) or data[8:9] != b"{":
        return "not a safetensors file (no valid header)"
    return None


def read_safetensors_bytes(data: bytes, name: str = "upload", max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """A state dict from untrusted safetensors bytes (a browser upload), decoded in memory.

    Refused with a :class:`ModelError` naming the problem: empty or oversized files, pickles,
    ``torch.save`` / TorchScript / ``.pt2`` archives renamed ``.safetensors``, damaged headers,
    files without tensors, and NaN/inf weights.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ModelError(f"{name}: expected file bytes")
    data = bytes(data)
    if not data:
        raise ModelError(f"{name}: empty file (0 bytes)")
    if max_bytes is not None and len(data) > max_bytes:
        raise ModelError(f"{name}: {len(data) / 2**20:.1f} MB exceeds the weights limit of {max_bytes / 2**20:.0f} MB "
                         "(GRADVIZ_MAX_WEIGHTS_MB)")
    kind = sniff_weights(data)
    if kind is not None:
        raise ModelError(f"{name}: refused — this is {kind}, not safetensors. Only .safetensors weights are read from "
                         "the browser (never pickles or code); convert with safetensors.torch.save_file(model.state_dict(), ...)"
                         if not kind.startswith(("not ", "too ")) else f"{name}: refused — {kind}")
    try:
        header = json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{name}: refused — damaged safetensors header ({exc})") from None
    if not isinstance(header, dict) or not [k for k in header if k != "__metadata__"]:
        raise ModelError(f"{name}: the safetensors file holds no tensors")
    try:
        from safetensors.torch import load

        state = load(data)
    except Exception as exc:  # safetensors raises several types for damaged files
        raise ModelError(f"{name}: refused — cannot read the safetensors data ({str(exc).splitlines()[0][:160]})") from None
    check_finite(state, name)
    return state
