"""Limits and locations, with safe defaults, overridable by environment variables.

| setting            | env var                     | default              |
|--------------------|-----------------------------|----------------------|
| cache_dir          | GRADVIZ_CACHE_DIR           | ~/.cache/gradviz     |
| data_root          | GRADVIZ_DATA_ROOT           | ~/.cache/gradviz/data|
| allowed_roots      | GRADVIZ_ALLOWED_ROOTS (os.pathsep-separated) | data_root |
| max_upload_mb      | GRADVIZ_MAX_UPLOAD_MB       | 20                   |
| max_upload_files   | GRADVIZ_MAX_UPLOAD_FILES    | 64                   |
| max_weights_mb     | GRADVIZ_MAX_WEIGHTS_MB      | 200                  |
| max_zip_mb         | GRADVIZ_MAX_ZIP_MB          | 100                  |
| max_pixels         | GRADVIZ_MAX_PIXELS          | 16_000_000           |
| max_upload_pixels  | GRADVIZ_MAX_UPLOAD_PIXELS   | 256_000_000          |
| max_session_pixels | GRADVIZ_MAX_SESSION_PIXELS  | 1_024_000_000        |
| max_samples_web    | GRADVIZ_MAX_SAMPLES_WEB     | 5000                 |
| chunk_mib          | GRADVIZ_CHUNK_MIB           | 16                   |
| cache_max_mb       | GRADVIZ_CACHE_MAX_MB        | 512                  |
| compile            | GRADVIZ_COMPILE (auto/on/off) | auto               |
| fold_bn            | GRADVIZ_FOLD_BN (on/off)    | on                   |
| torch_threads      | GRADVIZ_TORCH_THREADS       | 0 = 1 in the web server unless OMP_NUM_THREADS is set |
| memory_mb          | GRADVIZ_MEMORY_MB           | CLI: 50 % of MemAvailable |
| session_memory_mb  | GRADVIZ_SESSION_MEMORY_MB   | 2048 (web, per session) |
| max_params_web     | GRADVIZ_MAX_PARAMS_WEB      | 100_000_000          |
| max_side_web       | GRADVIZ_MAX_SIDE_WEB        | 384                  |

``memory_mb`` is the memory budget every pass plans its batch for (gradviz.runtime.budget); unset, the
command line takes half of the memory available when a pass starts. The web app plans each
session's passes for ``session_memory_mb`` instead, and refuses models of more than
``max_params_web`` parameters (counted before they are built) and cards wider than ``max_side_web``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        return default
    return value if value > 0 else default


def _default_cache() -> Path:
    return Path(os.environ.get("GRADVIZ_CACHE_DIR", Path.home() / ".cache" / "gradviz")).expanduser()


@dataclass(frozen=True)
class Settings:
    """Resolved settings (immutable; :func:`settings` resolves them once per environment)."""

    cache_dir: Path
    data_root: Path
    allowed_roots: tuple[Path, ...]
    max_upload_mb: int = 20
    max_upload_files: int = 64
    max_pixels: int = 16_000_000
    max_upload_pixels: int = 256_000_000  # decoded pixels per upload (all files together)
    max_session_pixels: int = 1_024_000_000  # decoded pixels of all uploads of one web session
    max_samples_web: int = 5000
    chunk_mib: int = 16
    cache_max_mb: int = 512
    compile: str = "auto"
    fold_bn: bool = True
    max_weights_mb: int = 200
    max_zip_mb: int = 100
    memory_mb: int | None = None  # None: a share of the available memory (gradviz.runtime.budget)
    session_memory_mb: int = 2048
    max_params_web: int = 100_000_000
    max_side_web: int = 384
    torch_threads: int = 0  # torch threads of the web server; 0 = see server_torch_threads


def server_torch_threads() -> int | None:
    """Torch threads for the web server: ``GRADVIZ_TORCH_THREADS`` when set; None (torch follows it) when
    ``OMP_NUM_THREADS`` is set; else 1. A stroke or a click scores one image or a small batch, where the
    OpenMP threads of one pass wait on each other (and on other sessions) longer than they save: 1 thread
    was 6× faster per stroke on a busy 2-core machine and no slower on a quiet one (README, the Playground).
    The command line keeps torch's default (its batches are large)."""
    chosen = settings().torch_threads
    if chosen > 0:
        return chosen
    return None if os.environ.get("OMP_NUM_THREADS", "").strip() else 1


def settings() -> Settings:
    """Current settings from the environment (cheap: resolved once per distinct environment; call
    where needed)."""
    # The key is every variable a setting can read (all GRADVIZ_*, and HOME for the default cache),
    # so a new setting needs no list kept in step with it.
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith("GRADVIZ_") or k == "HOME")
    return _resolve(tuple(env))


@lru_cache(maxsize=16)
def _resolve(env: tuple[tuple[str, str], ...]) -> Settings:
    """Settings for one snapshot of those variables (paths are parsed once, not on every call)."""
    cache = _default_cache()
    data_root = Path(os.environ.get("GRADVIZ_DATA_ROOT", cache / "data")).expanduser()
    roots_env = os.environ.get("GRADVIZ_ALLOWED_ROOTS", "")
    roots = tuple(Path(p).expanduser() for p in roots_env.split(os.pathsep) if p.strip()) or (data_root,)
    return Settings(
        cache_dir=cache,
        data_root=data_root,
        allowed_roots=roots,
        max_upload_mb=_env_int("GRADVIZ_MAX_UPLOAD_MB", 20),
        max_upload_files=_env_int("GRADVIZ_MAX_UPLOAD_FILES", 64),
        max_pixels=_env_int("GRADVIZ_MAX_PIXELS", 16_000_000),
        max_upload_pixels=_env_int("GRADVIZ_MAX_UPLOAD_PIXELS", 256_000_000),
        max_session_pixels=_env_int("GRADVIZ_MAX_SESSION_PIXELS", 1_024_000_000),
        max_samples_web=_env_int("GRADVIZ_MAX_SAMPLES_WEB", 5000),
        chunk_mib=_env_int("GRADVIZ_CHUNK_MIB", 16),
        cache_max_mb=_env_int("GRADVIZ_CACHE_MAX_MB", 512),
        compile=os.environ.get("GRADVIZ_COMPILE", "auto").strip().lower() or "auto",
        fold_bn=os.environ.get("GRADVIZ_FOLD_BN", "on").strip().lower() not in ("off", "0", "false", "no"),
        max_weights_mb=_env_int("GRADVIZ_MAX_WEIGHTS_MB", 200),
        max_zip_mb=_env_int("GRADVIZ_MAX_ZIP_MB", 100),
        memory_mb=_env_int("GRADVIZ_MEMORY_MB", 0) or None,
        session_memory_mb=_env_int("GRADVIZ_SESSION_MEMORY_MB", 2048),
        max_params_web=_env_int("GRADVIZ_MAX_PARAMS_WEB", 100_000_000),
        max_side_web=_env_int("GRADVIZ_MAX_SIDE_WEB", 384),
        torch_threads=_env_int("GRADVIZ_TORCH_THREADS", 0),
    )


def asset_path(name: str = "") -> Path:
    """The bundled file ``name`` (weights, cards), or the folder of them for ``""``: ``gradviz/_assets`` in an
    installed package (read through importlib.resources), else the checkout's top-level ``assets/``."""
    packaged = resources.files("gradviz").joinpath("_assets")
    folder = Path(str(packaged)) if packaged.is_dir() else Path(__file__).resolve().parent.parent / "assets"
    return folder / name if name else folder


ASSETS = asset_path()
