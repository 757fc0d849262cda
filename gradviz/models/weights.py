"""Reading weights files safely: safetensors, or ``torch.load(weights_only=True)``. Never pickle.

A safetensors file is opened in two steps (:class:`WeightsFile`): its header is parsed and checked
first — every entry's dtype, shape and byte range consistent and inside the file, at most
:data:`MAX_TENSORS` tensors, no deep nesting — and turned into shape-only (``meta``) tensors that
the caller compares with the architecture; only then are the tensors made (:meth:`WeightsFile.tensors`).
A file that declares more than it holds, or tensors the network does not have, costs no memory.

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
import math
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
    To compare the file with an architecture before any tensor is made, use :func:`open_weights`.
    """
    return open_weights(path).tensors()


def _load_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a torch file (weights_only) or of a safetensors file whose header was checked."""
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
    return state


FORMAT_HEADER_MAX = 100 * 1024**2  # the format's own bound on the JSON header (what sniffing accepts)
SAFETENSORS_HEADER_MAX = 16 * 1024**2  # what gradviz parses: 100,000 tensors' entries take about 10 MB
MAX_TENSORS = 100_000  # far above any real network (a ViT-g has ~1,000), far below what costs memory to list
MAX_DIM = 2**31  # one dimension of a declared shape (only an empty tensor could declare more)
MAX_NDIM = 16
_DTYPES = {name: getattr(torch, attr) for name, attr in {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "U16": "uint16", "U32": "uint32", "U64": "uint64",
    "C64": "complex64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz"}.items() if hasattr(torch, attr)}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _refuse(name: str, why: str) -> ModelError:
    return ModelError(f"{_clean(name)}: refused — {why}")


def safetensors_shapes(header: bytes, data_len: int, name: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors a safetensors header declares, as shape-only ``meta`` tensors (no memory), checked.

    ``header`` is the JSON after the 8-byte length; ``data_len`` the bytes that follow it. Every entry
    must have a known dtype, a shape and ``data_offsets`` whose byte range matches shape × dtype size,
    lies inside the data and overlaps no other; at most :data:`MAX_TENSORS` entries (counted before the
    JSON is parsed), and no nesting deeper than Python's parser takes. One :class:`ModelError` otherwise.
    """
    _check_header_length(len(header), name)
    if header.count(b"{") > MAX_TENSORS + 2:  # every tensor entry is one object: an upper bound, before parsing
        raise _refuse(name, f"the file declares more than {MAX_TENSORS:,} tensors; no network gradviz reads has as many")
    try:
        parsed = json.loads(header)
    except RecursionError:
        raise _refuse(name, "its safetensors header is nested too deeply (a real header is a flat list of "
                            "tensors); re-export with safetensors.torch.save_file(model.state_dict(), ...)") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or a number with too many digits
        raise _refuse(name, f"damaged safetensors header ({_reason(exc, 120)})") from None
    if not isinstance(parsed, dict):
        raise _refuse(name, "damaged safetensors header (not a JSON object)")
    meta = parsed.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise _refuse(name, "damaged safetensors header (__metadata__ must map names to text)")
    if not parsed:
        raise ModelError(f"{_clean(name)}: the safetensors file holds no tensors")
    if len(parsed) > MAX_TENSORS:
        raise _refuse(name, f"the file declares {len(parsed):,} tensors; at most {MAX_TENSORS:,}")
    spans, shapes = [], {}
    for key, entry in parsed.items():
        shapes[key] = _declared(key, entry, data_len, name)
        spans.append((entry["data_offsets"][0], entry["data_offsets"][1], key))
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise _refuse(name, f"tensors {_short_key(first)} and {_short_key(second)} claim the same bytes")
    return shapes


def _brief(value, n: int = 60) -> str:
    """A short text of a header value that may be huge (a list of millions of numbers)."""
    if isinstance(value, list) and len(value) > MAX_NDIM:
        value = [*value[:MAX_NDIM], "…"]
    return _reason(ValueError(str(value)), n)


def _short_key(key: str, n: int = 60) -> str:
    key = _clean(key)
    return repr(key if len(key) <= n else key[: n - 1] + "…")


def _declared(key: str, entry, data_len: int, name: str) -> torch.Tensor:
    """One header entry, checked, as a meta tensor of its dtype and shape."""
    what = f"tensor {_short_key(key)}"
    if not (isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}):
        raise _refuse(name, f"damaged safetensors header ({what} needs exactly dtype, shape and data_offsets)")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise _refuse(name, f"{what} has the unknown dtype {_brief(dtype, 20)}; known: {', '.join(_DTYPES)}")
    if not (isinstance(shape, list) and len(shape) <= MAX_NDIM and all(_is_int(d) and 0 <= d <= MAX_DIM for d in shape)):
        raise _refuse(name, f"{what} declares the shape {_brief(shape)}; expected up to {MAX_NDIM} "
                            f"sizes of 0–{MAX_DIM:,}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_len):
        raise _refuse(name, f"{what} points outside the file's {data_len:,} data bytes (data_offsets "
                            f"{_brief(offsets)}); the file is truncated or damaged")
    dt = _DTYPES[dtype]
    need, have = math.prod(shape) * dt.itemsize, offsets[1] - offsets[0]
    if need != have:
        raise _refuse(name, f"{what} declares the shape {tuple(shape)} ({need:,} bytes of {dtype}) but holds {have:,} "
                            "bytes; the file is damaged")
    return torch.empty(shape, dtype=dt, device="meta")


class WeightsFile:
    """A weights file opened without making its tensors: ``shapes`` (name -> tensor with the declared shape
    and dtype; ``meta`` tensors for safetensors, so no memory) to compare with an architecture, then
    :meth:`tensors` to read them (NaN/inf refused)."""

    def __init__(self, name: str, shapes: dict[str, torch.Tensor], read) -> None:
        self.name, self.shapes, self._read = name, shapes, read

    def tensors(self) -> dict[str, torch.Tensor]:
        state = self._read()
        check_finite(state, self.name)
        return state


def _check_header_length(length: int, name: str) -> None:
    if length > SAFETENSORS_HEADER_MAX:
        raise _refuse(name, f"its safetensors header is {length / 2**20:.0f} MB; at most "
                            f"{SAFETENSORS_HEADER_MAX // 2**20} MB (about {MAX_TENSORS:,} tensors) is read")


def _header_of_file(path: Path, size: int) -> bytes:
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _refuse(path.name, "too short to be a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length == 0 or length > size - 8:
            raise _refuse(path.name, "not a safetensors file (its header length does not fit the file)")
        _check_header_length(length, path.name)
        return f.read(length)


def open_weights(path: str | Path) -> WeightsFile:
    """A weights file on disk, opened for checking (see :class:`WeightsFile`): a ``.safetensors`` file's
    header is read and checked against the file's size; a torch file is read whole (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ModelError(f"weights file is empty: {path.name}")
    if size > MAX_WEIGHTS_BYTES:
        raise ModelError(f"weights file is larger than {MAX_WEIGHTS_BYTES // 1024**2} MiB: {path.name}")
    name = f"weights file {_clean(path.name)}"
    if path.suffix != ".safetensors":
        state = _load_torch_file(path)
        return WeightsFile(name, state, lambda: state)
    header = _header_of_file(path, size)
    shapes = safetensors_shapes(header, size - 8 - len(header), path.name)
    return WeightsFile(name, shapes, lambda: _load_torch_file(path))


def open_weights_bytes(data: bytes, name: str = "upload", max_bytes: int | None = None) -> WeightsFile:
    """Untrusted safetensors bytes (a browser upload), sniffed and their header checked (see
    :func:`read_safetensors_bytes` for what is refused); tensors are made by :meth:`WeightsFile.tensors`."""
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
    length = struct.unpack("<Q", data[:8])[0]
    _check_header_length(length, name)  # before the header is copied out
    shapes = safetensors_shapes(data[8:8 + length], len(data) - 8 - length, name)

    def read() -> dict[str, torch.Tensor]:
        try:
            from safetensors.torch import load

            return load(data)
        except Exception as exc:  # safetensors raises several types for damaged files
            raise ModelError(f"{name}: refused — cannot read the safetensors data ({_reason(exc)})") from None

    return WeightsFile(name, shapes, read)


def _examples(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", … ({len(keys) - n} more)" if len(keys) > n else "")


def check_state_fits(net: nn.Module, shapes: dict[str, torch.Tensor], source: str) -> None:
    """Raise one readable :class:`ModelError` unless ``shapes`` (a state dict, or a file's declared
    ``meta`` tensors) has exactly ``net``'s keys and shapes (a few missing / unexpected keys and shape
    mismatches are named). Compares shapes only: nothing is read or allocated."""
    shapes = {k.removeprefix("module."): v for k, v in shapes.items()}
    expected = net.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in shapes]
    unexpected = [_clean(k)[:80] for k in shapes if k not in expected]
    wrong = [
        f"{k}: file {tuple(shapes[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in shapes and tuple(shapes[k].shape) != tuple(v.shape)
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


def apply_state_dict(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``net`` strictly, turning mismatches into one readable error
    (see :func:`check_state_fits`)."""
    check_state_fits(net, state, source)
    net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)


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
    if header_len == 0 or header_len > min(FORMAT_HEADER_MAX, len(data) - 8) or data[8:9] != b"{":
        return "not a safetensors file (no valid header)"
    return None


def read_safetensors_bytes(data: bytes, name: str = "upload", max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """A state dict from untrusted safetensors bytes (a browser upload), decoded in memory.

    Refused with a :class:`ModelError` naming the problem: empty or oversized files, pickles,
    ``torch.save`` / TorchScript / ``.pt2`` archives renamed ``.safetensors``, damaged or hostile
    headers (see :func:`safetensors_shapes`), files without tensors, and NaN/inf weights.
    """
    return open_weights_bytes(data, name, max_bytes).tensors()
