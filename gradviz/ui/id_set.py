"""Sidebar: your own ID set — a .zip upload or a folder under the allowed roots, split into fit / test parts.

The zip is checked and decoded by :mod:`gradviz.data.zipset` (nothing written outside a
temporary folder that is removed at once); a folder is checked against the allowed roots
(:func:`gradviz.data.folder.resolve_folder`) and decoded by :func:`gradviz.data.folder.load_folder`.
Either's images stay in this session (:mod:`gradviz.ui.private`, as ``session:…``), bounded by the
session's budget for its own sets (:func:`gradviz.data.session.own_set_room`: a random subset that fits,
stated in the set's note, or a refusal with the numbers), and count in that budget until "Forget my own
ID sets" gives their memory back. Each becomes ``test:…`` (the ID set that is scored) and ``fit:…`` (what
fitted methods fit on), split by :mod:`gradviz.data.splits`.
"""

from __future__ import annotations

import streamlit as st

from gradviz.config import settings
from gradviz.data.session import PREFIX as SESSION_PREFIX
from gradviz.data.session import folder_key, held_mb, is_folder_key, own_set_room, session_spec
from gradviz.data.splits import DEFAULT_FIT_FRACTION, has_labels, split_id_set, split_spec, split_summary
from gradviz.data.zipset import load_zip_bytes, zip_digest
from gradviz.errors import GradvizError
from gradviz.reporting.plaintext import md_text
from gradviz.ui.private import id_notes, session_sets

PENDING = "gv_pending_id"


def apply_pending() -> None:
    """Before the ID picker is drawn: select a set that was just added (widget state may only change here)."""
    pending = st.session_state.pop(PENDING, None)
    if pending:
        st.session_state["gv_id"] = pending


def own_specs() -> list[str]:
    """This session's own ID sets (their ``test:`` specs), newest last."""
    return list(id_notes())


def fit_spec_for(id_spec: str) -> str | None:
    """The ``fit:`` spec that goes with an own ``test:`` ID spec (None for other ID sets)."""
    return "fit:" + id_spec[len("test:"):] if id_spec in id_notes() else None


def label(spec: str) -> str:
    """A readable name for an own ID spec in the picker."""
    if spec not in id_notes():
        return spec
    key = spec.split(SESSION_PREFIX, 1)[-1]
    return f"{key.rsplit('#', 1)[0]} (your {'folder' if is_folder_key(key) else '.zip'}, test part)"


def labelled(spec: str) -> bool:
    """Whether an own ID set has class labels (methods fitted on labels need them)."""
    return st.session_state.setdefault("gv_id_labelled", {}).get(spec, True)


def _add(whole, inner: str, name: str, fraction: float, seed: int, card) -> None:
    fit, test = split_id_set(whole, fraction, seed)
    id_spec = split_spec("test", inner, fraction)
    notes = id_notes()
    notes.pop(id_spec, None)
    notes[id_spec] = split_summary(name, fit, test, fraction, None, card.class_names if card else None)
    st.session_state.setdefault("gv_id_labelled", {})[id_spec] = has_labels(whole)
    skipped = list(whole.skipped)
    if skipped:
        shown = "; ".join(f"{md_text(f)}: {md_text(why)}" for f, why in skipped[:5])
        notes[id_spec] += f" Skipped {len(skipped)} file(s): {shown}{' …' if len(skipped) > 5 else ''}."
    st.session_state[PENDING] = id_spec


def render(container, seed: int, card_of_model) -> None:
    """The "your own ID set" switch and, when on, a .zip upload or a folder name, the fitting share, "Use as ID set"
    (a switch, like the weights upload: no file input in the sidebar while it is off).
    ``card_of_model()`` gives the chosen model's card (or None), asked only when a set is added."""
    on = container.toggle("Use your own images as the ID set (.zip or folder)", key="gv_id_on",
                          help="Split into a part the fitted methods fit on and a part scored as ID.")
    if session_sets():
        _offer_forget(container)
    if not on:
        return
    with container.container(border=True):
        source = st.radio("Images from", ["a .zip upload", "a folder on the server"], key="gv_id_source",
                          horizontal=True)
        fraction = st.number_input("Share used for fitting", 0.1, 0.9, DEFAULT_FIT_FRACTION, 0.05, key="gv_id_fraction",
                                   help="Fitted methods (Mahalanobis, kNN, ViM, the meta classifier, …) fit on this share; the rest is scored "
                                        "as the ID set. Split per class with the sidebar's seed.")
        try:
            if source == "a .zip upload":
                upload = st.file_uploader("Images in a .zip (class sub-folders become labels)", type=["zip"],
                                          key="gv_id_zip", max_upload_size=settings().max_zip_mb,
                                          help="Unsafe archives (paths leaving the archive, links, zip bombs) are "
                                               "refused; non-images and nested archives are skipped.")
                if upload is not None and st.button("Use as ID set", key="gv_id_add_zip"):
                    data = upload.getvalue()
                    key = session_spec(upload.name, zip_digest(data))[len(SESSION_PREFIX):]
                    room, bound = own_set_room(session_sets(), replacing=key)
                    with st.spinner("Checking and decoding the archive…"):
                        whole = load_zip_bytes(data, upload.name, seed=seed, max_bytes=room, bytes_setting=bound)
                    session_sets()[key] = whole
                    _add(whole, SESSION_PREFIX + key, upload.name, fraction, seed, card_of_model())
                    st.rerun()
            else:
                roots = ", ".join(str(r) for r in settings().allowed_roots)
                path = st.text_input("Folder", key="gv_id_folder", placeholder="e.g. my_images/",
                                     help=f"Must lie under the allowed data roots: {roots} (GRADVIZ_ALLOWED_ROOTS)")
                if path.strip() and st.button("Use as ID set", key="gv_id_add_folder"):
                    from gradviz.data.folder import load_folder, resolve_folder

                    folder = resolve_folder(path.strip(), settings().allowed_roots)
                    key = folder_key(folder)
                    room, bound = own_set_room(session_sets(), replacing=key)
                    with st.spinner("Reading the folder…"):
                        whole = load_folder(folder, settings().allowed_roots, seed=seed, max_bytes=room,
                                            bytes_setting=bound)
                    session_sets()[key] = whole
                    _add(whole, SESSION_PREFIX + key, str(folder), fraction, seed, card_of_model())
                    st.rerun()
        except GradvizError as exc:
            st.error(md_text(exc))


def _offer_forget(container) -> None:
    """A button that drops this session's own ID sets (zips and folders) and their notes: their memory is given
    back."""
    held = session_sets()
    clicked = container.button(f"Forget my own ID sets ({len(held)}, {held_mb(held):,} MB)", key="gv_id_forget",
                               help="Own ID sets (a .zip or a folder) stay in this session's memory and count in its "
                                    "budget until forgotten.")
    if not clicked:
        return
    gone = {k for k in id_notes() if SESSION_PREFIX in k}
    for spec in gone:
        id_notes().pop(spec, None)
        st.session_state.setdefault("gv_id_labelled", {}).pop(spec, None)
    held.clear()
    if st.session_state.get("gv_id") in gone:
        from gradviz.scoring import RunConfig

        st.session_state[PENDING] = RunConfig.id  # the built-in ID set again
    st.rerun()


def note_for(spec: str) -> str | None:
    return id_notes().get(spec)
