"""Limits and locations: :class:`Settings`, each read from its ``GRADVIZ_<NAME>`` environment variable.

Each default is stated once, in :class:`Settings`; the README's table of settings documents every field
(``tests/test_config.py`` checks it against the class). A value that is not valid for its setting
(``GRADVIZ_CHUNK_MIB=abc``, ``GRADVIZ_MAX_ZIP_MB=-1``, ``GRADVIZ_FOLD_BN=maybe``) is a :class:`SettingsError`
naming the variable, never a silent fallback to the default.

``memory_mb`` is the memory budget every pass plans its batch for (gradviz.runtime.budget); unset, the
command line takes half of the memory available when a pass starts, at most 2,048 MB for a pass on the CPU
(larger batches are no faster there). The web app plans each
session's passes for ``session_memory_mb`` instead (less what the session's own ID sets hold), all
sessions' passes together for ``server_memory_mb`` (gradviz.runtime.ledger), and refuses models of more than
``max_params_web`` parameters (counted before they are built) and cards wider than ``max_side_web``.

The command line does not write its options into the environment: :func:`use_settings` makes a changed
copy (``settings().model_copy(update={"compile": "off"})``) the settings of the code it runs.
"""

from __future__ import annotations

import contextvars
import os
from contextlib import contextmanager
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Iterator, Literal

from pydantic import Field, PositiveInt, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails  # pydantic's own error record (a TypedDict)

from gradviz.errors import GradvizError

ENV_PREFIX = "GRADVIZ_"


class SettingsError(GradvizError):
    """An environment variable holds a value its setting does not take (the message names the variable)."""


def _default_cache() -> Path:
    return Path.home() / ".cache" / "gradviz"


class Settings(BaseSettings):
    """Resolved settings (immutable; :func:`settings` resolves them once per environment)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore", env_ignore_empty=True)

    cache_dir: Path = Field(default_factory=_default_cache)
    data_root: Path | None = None  # unset: cache_dir / "data"
    allowed_roots: Annotated[tuple[Path, ...], NoDecode] = ()  # os.pathsep-separated; empty: (data_root,)
    max_upload_mb: PositiveInt = 20
    max_upload_files: PositiveInt = 64
    max_pixels: PositiveInt = 16_000_000
    max_upload_pixels: PositiveInt = 256_000_000  # decoded pixels per upload (all files together)
    max_session_pixels: PositiveInt = 1_024_000_000  # decoded pixels of all uploads of one web session
    max_samples_web: PositiveInt = 5000
    chunk_mib: PositiveInt = 16
    cache_max_mb: PositiveInt = 512
    compile: Literal["auto", "on", "off"] = "auto"
    fold_bn: bool = True
    max_weights_mb: PositiveInt = 200
    max_zip_mb: PositiveInt = 100
    memory_mb: PositiveInt | None = None  # None: a share of the available memory (gradviz.runtime.budget)
    session_memory_mb: PositiveInt = 2048
    server_memory_mb: PositiveInt | None = None  # None: a share of the available memory (gradviz.runtime.ledger)
    session_cpu_s: PositiveInt = 600  # CPU seconds a web session's work may take in any 15 minutes
    max_params_web: PositiveInt = 100_000_000
    max_side_web: PositiveInt = 384
    torch_threads: int = Field(default=0, ge=0)  # torch threads of the web server; 0 = see server_torch_threads
    # models whose default results the web server computes in the background (gradviz.ui.warmup); comma-separated,
    # "none" for none
    warm_models: Annotated[tuple[str, ...], NoDecode] = ("mnist-cnn", "mnist-vit")

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _split_roots(cls, value):
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(os.pathsep) if p.strip())
        return value

    @field_validator("warm_models", mode="before")
    @classmethod
    def _split_models(cls, value):
        if isinstance(value, str):
            return tuple(m.strip() for m in value.split(",") if m.strip() and m.strip().lower() != "none")
        return value

    @field_validator("compile", mode="before")
    @classmethod
    def _mode(cls, value):
        if not isinstance(value, str):
            return value
        value = value.strip().lower()
        return {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}.get(value, value)

    @model_validator(mode="after")
    def _locations(self) -> "Settings":
        """Paths with ``~`` expanded; the data root and the allowed roots default to the folders above them."""
        cache = self.cache_dir.expanduser()
        data_root = (cache / "data") if self.data_root is None else Path(self.data_root).expanduser()
        roots = tuple(Path(p).expanduser() for p in self.allowed_roots) or (data_root,)
        for name, value in (("cache_dir", cache), ("data_root", data_root), ("allowed_roots", roots)):
            object.__setattr__(self, name, value)  # (frozen: set once, while validating)
        return self

    @classmethod
    def env_var(cls, name: str) -> str:
        """The environment variable of the setting ``name``."""
        return f"{ENV_PREFIX}{name.upper()}"


def _problem(error: ErrorDetails) -> str:
    name = str(error["loc"][0]) if error.get("loc") else "?"
    value = error.get("input")
    shown = repr(value if not isinstance(value, str) or len(value) <= 60 else value[:59] + "…")
    return f"{Settings.env_var(name)}={shown}: {error['msg'][:1].lower()}{error['msg'][1:]}"


def load_settings() -> Settings:
    """Settings read from the environment now; :class:`SettingsError` names every variable with a bad value."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError("invalid setting: " + "; ".join(_problem(e) for e in exc.errors())) from None


_CURRENT: contextvars.ContextVar[Settings | None] = contextvars.ContextVar("gradviz_settings", default=None)


@contextmanager
def use_settings(chosen: Settings) -> Iterator[Settings]:
    """Within the block (this thread / context), :func:`settings` returns ``chosen`` instead of the environment's."""
    token = _CURRENT.set(chosen)
    try:
        yield chosen
    finally:
        _CURRENT.reset(token)


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
    """Current settings: those of :func:`use_settings`, else the environment's (resolved once per distinct
    environment, so cheap to call where needed)."""
    chosen = _CURRENT.get()
    if chosen is not None:
        return chosen
    # The key is every variable a setting can read (all GRADVIZ_*, and HOME for the default cache),
    # so a new setting needs no list kept in step with it.
    env = sorted((k, v) for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX) or k == "HOME")
    return _resolve(tuple(env))


@lru_cache(maxsize=16)
def _resolve(env: tuple[tuple[str, str], ...]) -> Settings:
    """Settings for one snapshot of those variables (parsed once, not on every call)."""
    return load_settings()


def asset_path(name: str = "") -> Path:
    """The bundled file ``name`` (weights, cards), or the folder of them for ``""``: ``gradviz/_assets`` in an
    installed package (read through importlib.resources), else the checkout's top-level ``assets/``."""
    packaged = resources.files("gradviz").joinpath("_assets")
    folder = Path(str(packaged)) if packaged.is_dir() else Path(__file__).resolve().parent.parent / "assets"
    return folder / name if name else folder


ASSETS = asset_path()
