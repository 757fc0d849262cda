"""On-disk results cache: arrays keyed by (model digest, dataset spec, method, params, ...).

Every key also holds :func:`code_version` — the package version plus a hash of every source
file of the package (each ``.py`` under ``gradviz/`` and the C kernel sources, found by
:func:`source_files`, never listed by hand) — so a change to any code that a number passes
through (a method, the engine, a model, a dataset loader, the scoring pipeline) makes every
cached result a miss instead of a stale answer.

Each entry is one ``.npz`` file written atomically (temporary file in the same folder,
fsync, ``os.replace``), so a killed computation never leaves a half-written entry. The
entry carries a SHA-256 of its arrays; a damaged or foreign file is detected on read,
deleted, and treated as a miss (the caller recomputes). Least-recently-used entries are
evicted when the folder grows past ``max_mb``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from gradviz import __version__
from gradviz.config import settings

SCHEMA = 1
_META = "__meta__"
PACKAGE_DIR = Path(__file__).resolve().parent.parent
# Every source of the package: a score passes through models/, data/, scoring.py, methods/, engine/ and more,
# so each one counts (a hand-written list goes stale as files move; these globs cannot).
SOURCE_GLOBS = ("**/*.py", "**/*.c", "**/*.h")
_RECHECK_S = 1.0  # stat the sources at most once a second (cache_key runs several times per page rerun)
_code_lock = threading.Lock()
_code_memo: dict[Path, tuple[float, tuple, str]] = {}  # root -> (checked at, (path, mtime, size)..., version)


def source_files(root: Path | None = None) -> list[Path]:
    """Every source file under ``root`` (default: this package): ``.py`` files and the C kernel sources, sorted."""
    root = Path(root) if root is not None else PACKAGE_DIR
    return sorted({p for pattern in SOURCE_GLOBS for p in root.glob(pattern)
                   if p.is_file() and "__pycache__" not in p.relative_to(root).parts})


def code_version(root: Path | None = None) -> str:
    """Package version + a hash of every source file under ``root`` (default: this package; :func:`source_files`).

    Rehashed only when a file's path, size or modification time changes (checked at most once a
    second), so an edited method makes new keys even in a running server.
    """
    root = Path(root) if root is not None else PACKAGE_DIR
    now = time.monotonic()
    with _code_lock:
        memo = _code_memo.get(root)
        if memo is not None and now - memo[0] < _RECHECK_S:
            return memo[2]
    files = source_files(root)
    signature = tuple((p.relative_to(root).as_posix(), st.st_mtime_ns, st.st_size) for p in files for st in [p.stat()])
    if memo is not None and memo[1] == signature:
        version = memo[2]
    else:
        h = hashlib.sha256(__version__.encode())
        for p in files:
            data = p.read_bytes()
            h.update(f"{p.relative_to(root).as_posix()}\0{len(data)}\0".encode())  # unambiguous file boundaries
            h.update(data)
        version = f"{__version__}+{h.hexdigest()[:16]}"
    with _code_lock:
        _code_memo[root] = (now, signature, version)
    return version


def cache_key(**parts: Any) -> str:
    """Stable hex key of keyword parts (JSON with sorted keys; values must be JSON-able) and of
    :func:`code_version`: results computed by other scoring code never share a key."""
    blob = json.dumps({**parts, "_code": code_version()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


class ResultStore:
    """A folder of checksummed ``.npz`` entries (safe for concurrent readers and writers)."""

    def __init__(self, root: str | Path | None = None, max_mb: float | None = None) -> None:
        cfg = settings()
        self.root = Path(root) if root is not None else cfg.cache_dir / "results"
        self.max_bytes = int((max_mb if max_mb is not None else cfg.cache_max_mb) * 1024**2)
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"invalid cache key {key!r}")
        return self.root / f"{key}.npz"

    def get(self, key: str) -> tuple[dict[str, np.ndarray], dict] | None:
        """(arrays, meta) of a valid entry, or None (absent, damaged or of another schema)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files if k != _META}
                meta = json.loads(str(npz[_META]))
            if meta.get("schema") != SCHEMA or meta.get("sha256") != _digest(arrays):
                raise ValueError("checksum or schema mismatch")
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, json.JSONDecodeError):
            path.unlink(missing_ok=True)  # damaged: drop it, the caller recomputes
            return None
        try:
            os.utime(path)  # LRU bookkeeping
        except OSError:
            pass
        return arrays, meta

    def put(self, key: str, arrays: dict[str, np.ndarray], meta: dict | None = None) -> Path:
        """Write an entry atomically and evict old ones if the folder is over budget."""
        path = self._path(key)
        self.root.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        full_meta = {**(meta or {}), "schema": SCHEMA, "sha256": _digest(arrays), "code": code_version()}
        buf = io.BytesIO()
        entries: dict[str, Any] = {**arrays, _META: np.array(json.dumps(full_meta, default=str))}  # savez's **kwds
        np.savez(buf, **entries)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(buf.getvalue())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.evict()
        return path

    def evict(self) -> int:
        """Delete least-recently-used entries until the folder fits ``max_mb``; returns how many."""
        with self._lock:
            try:
                entries = sorted((p.stat().st_mtime, p.stat().st_size, p) for p in self.root.glob("*.npz"))
            except (FileNotFoundError, OSError):
                return 0
            total = sum(size for _, size, _ in entries)
            removed = 0
            for _, size, p in entries:
                if total <= self.max_bytes:
                    break
                p.unlink(missing_ok=True)
                total -= size
                removed += 1
            return removed

    def clear(self) -> None:
        for p in self.root.glob("*.npz"):
            p.unlink(missing_ok=True)
