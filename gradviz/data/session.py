"""``session:<name>#<digest>``: image sets that live only in one web session (an uploaded .zip, or a folder
on the server decoded for it: :func:`folder_key`, whose name ends in ``/``).

The dashboard keeps a session's own sets in its ``st.session_state`` and registers, once, a
*resolver* (:func:`set_session_resolver`): a function that returns the sets of the session whose
script is running in the calling thread. ``load_dataset("session:…")`` — wherever it is called,
e.g. when a fitted method loads its fitting set — therefore sees the calling session's sets and
never another's. Library code and tests can instead set sets for the current context with
:func:`use_session_sets`. Outside a session (CLI) there are none and the spec fails clearly.

A session's own sets count in its memory budget: together they hold at most
:data:`OWN_SETS_SHARE` of ``GRADVIZ_SESSION_MEMORY_MB`` (decoded bytes, :func:`own_set_room` gives
what a new one may take; it is then decoded as a random subset that fits, or refused with the
numbers), at most :data:`MAX_OWN_SETS` of them, and the session's passes plan for the budget
less what the sets hold (:func:`held_mb`).
"""

from __future__ import annotations

import hashlib
import os
from contextvars import ContextVar
from typing import Callable, Mapping

from gradviz.data import ImageSet, register_dataset
from gradviz.errors import DatasetError

PREFIX = "session:"
OWN_SETS_SHARE = 0.5  # of a web session's memory budget: what its own ID sets may hold together
MAX_OWN_SETS = 4  # own ID sets one session may hold at once
_SETS: ContextVar[Mapping[str, ImageSet] | None] = ContextVar("gradviz_session_sets", default=None)
_RESOLVER: list[Callable[[], Mapping[str, ImageSet] | None]] = []  # at most one; set by the UI at import


def session_spec(name: str, digest: str) -> str:
    """``session_spec("digits.zip", "ab12cd34ef")`` -> ``"session:digits.zip#ab12cd34"``."""
    clean = str(name).replace(":", "_").strip() or "upload"
    return f"{PREFIX}{clean}#{digest[:8]}"


def folder_key(folder: str | os.PathLike) -> str:
    """The session key of a server folder used as an own ID set: ``"mine/#ab12cd34"`` for ``/data/mine`` (its
    name and ``/``, then a digest of the resolved path, so two folders of one name stay apart)."""
    path = str(folder)
    name = os.path.basename(path.rstrip("/")) + "/"
    return session_spec(name, hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest())[len(PREFIX):]


def is_folder_key(key: str) -> bool:
    """Whether a session key (the part after ``session:``) names a folder's set (:func:`folder_key`)."""
    return key.rsplit("#", 1)[0].endswith("/")


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


def held_bytes(sets: Mapping[str, ImageSet]) -> int:
    """Bytes of the decoded images ``sets`` hold."""
    return sum(int(d.images.numel()) * d.images.element_size() for d in sets.values())


def held_mb(sets: Mapping[str, ImageSet]) -> int:
    """MiB of the decoded images ``sets`` hold (rounded up): what a session's passes plan without."""
    return -(-held_bytes(sets) // 2**20)


def own_set_room(sets: Mapping[str, ImageSet], replacing: str | None = None,
                 session_mb: int | None = None) -> tuple[int, str]:
    """(bytes one more own ID set may decode to, that bound in words) for a session holding ``sets``
    (``replacing``: the key of a set the new one replaces, not counted). DatasetError when the session
    already holds :data:`MAX_OWN_SETS` sets."""
    from gradviz.config import settings

    others = {k: v for k, v in sets.items() if k != replacing}
    if len(others) >= MAX_OWN_SETS:
        raise DatasetError(f"this session holds {len(others)} own ID sets, the most it may ({MAX_OWN_SETS}); "
                           "forget them (the button under the ID set switch) before adding another")
    total_mb = int(session_mb if session_mb is not None else settings().session_memory_mb)
    share = int(total_mb * OWN_SETS_SHARE * 2**20)
    held = held_bytes(others)
    why = (f"{OWN_SETS_SHARE:.0%} of this session's {total_mb:,} MB (GRADVIZ_SESSION_MEMORY_MB) for its own ID sets"
           + (f", less {held / 2**20:,.0f} MB held by {len(others)} set(s) already" if others else ""))
    return max(0, share - held), why


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
