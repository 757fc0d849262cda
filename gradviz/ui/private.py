"""What belongs to one browser session only: uploaded models and own ID sets.

Session-state keys:

| key             | holds                                                                    |
|-----------------|--------------------------------------------------------------------------|
| ``gv_models``   | {``upload:<file>#<digest>``: GradvizModel} weights this session uploaded |
| ``gv_id_sets``  | {``<name>#<digest>``: ImageSet} native images of its zip and folder sets |
| ``gv_id_notes`` | {ID spec: text} how each own ID set was split, shown on the pages        |

``st.cache_resource`` hands one object to every session, so none of these go through it:
they stay in ``st.session_state`` (memory, dropped with the session), results computed from
them are memoised per session, and nothing derived from them is written to the disk cache.
"""

from __future__ import annotations

import streamlit as st

from gradviz.data import ImageSet
from gradviz.data.session import PREFIX as SESSION_PREFIX
from gradviz.data.session import mentions_session, set_session_resolver
from gradviz.models.upload import PREFIX as UPLOAD_PREFIX


def _current_sets():
    """The id sets of the session whose script runs in this thread (None outside any session)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    if ctx is None:
        return None
    return ctx.session_state["gv_id_sets"] if "gv_id_sets" in ctx.session_state else {}


set_session_resolver(_current_sets)


def session_models() -> dict:
    return st.session_state.setdefault("gv_models", {})


def session_sets() -> dict[str, ImageSet]:
    return st.session_state.setdefault("gv_id_sets", {})


def id_notes() -> dict[str, str]:
    return st.session_state.setdefault("gv_id_notes", {})


def is_private_model(name: str) -> bool:
    return isinstance(name, str) and name.startswith(UPLOAD_PREFIX)


def is_private(cfg) -> bool:
    """Whether ``cfg`` reads this session's own uploads (model weights or a session set)."""
    specs = [cfg.id, cfg.fit_set, *cfg.ood]
    return is_private_model(cfg.model) or any(mentions_session(s) for s in specs)


def check_owned(cfg) -> None:
    """Refuse a config naming uploads this session does not hold (before any cache is consulted)."""
    from gradviz.errors import DatasetError, ModelError

    if is_private_model(cfg.model) and cfg.model not in session_models():
        raise ModelError(f"{cfg.model} is not among this session's uploaded models (uploads belong to the session "
                         "that made them); upload the weights again")
    for spec in [cfg.id, cfg.fit_set, *cfg.ood]:
        if mentions_session(spec):
            name = spec[spec.index(SESSION_PREFIX) + len(SESSION_PREFIX):]
            if name not in session_sets():
                raise DatasetError(f"{spec} is not among this session's own ID sets; add it again (upload the "
                                   ".zip or name the folder)")
