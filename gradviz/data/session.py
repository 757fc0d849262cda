"""``session:<name>#<digest>``: image sets that live only in one web session (e.g. an uploaded .zip).

The dashboard keeps a session's own sets in its ``st.session_state`` and registers, once, a
*resolver* (:func:`set_session_resolver`): a function that returns the sets of the session whose
script is running in the calling thread. ``load_dataset("session:…")`` — wherever it is called,
e.g. when a fitted method loads its fitting set — therefore sees the calling session's sets and
never another's. Library code and tests can instead set sets for the current context with
:func:`use_session_sets`. Outside a session (CLI) there are none and the spec fails clearly.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Callable, Mapping

from gradviz.data import ImageSet, register_dataset
from gradviz.errors import DatasetError

PREFIX = "session:"
_SETS: ContextVar[Mapping[str, ImageSet] | None] = ContextVar("gradviz_session_sets", default=None)
_RESOLVER: list[Callable[[], Mapping[str, ImageSet] | None]] = []  # at most one; set by the UI at import


def session_spec(name: str, digest: str) -> str:
    """``session_spec("digits.zip", "ab12cd34ef")`` -> ``"session:digits.zip#ab12cd34"``."""
    clean = str(name).replace(":", "_").strip() or "upload"
    return f"{PREFIX}{clean}#{digest[:8]}"


def use_session_sets(sets: Mapping[str, ImageSet] | None) -> None:
    """Make ``sets`` (keyed by the part after ``session:``) the current thread's session sets."""
    _SETS.set(dict(sets) if sets else {})


def set_session_resolver(resolver: Callable[[], Mapping[str, ImageSet] | None]) -> None:
    """Register the function returning the running session's sets (None where no session runs)."""
    _RESOLVER[:] = [resolver]


def session_sets() -> Mapping[str, ImageSet]:
    """The calling session's sets: the resolver's answer where it has one, else this context's."""
    if _RESOLVER:
        found = _RESOLVER[0]()
        if found is not None:
            return found
    return _SETS.get() or {}


def mentions_session(spec: str) -> bool:
    """Whether ``spec`` reads a session set (directly or as the set a ``fit:``/``test:`` part splits)."""
    return isinstance(spec, str) and PREFIX in spec


@register_dataset("session", "Images uploaded in this web session (e.g. a .zip as the ID set); web app only",
                  example="session:<upload>")
def load_session_set(arg: str | None, limit: int | None, seed: int) -> ImageSet:
    sets = session_sets()
    if not arg or arg not in sets:
        raise DatasetError(f"session:{arg} is not among this session's uploads (uploads belong to the web session "
                           "that made them); upload it again, or on the command line use zip:PATH / folder:PATH")
    data = sets[arg]
    return ImageSet(f"{PREFIX}{arg}", data.images, data.labels, data.paths, data.class_names, list(data.skipped))
