"""Uploaded images for the pages, and the lists of files skipped or altered while loading.

Uploads are decoded once per upload (``st.cache_data`` keyed by the files' upload ids, not by
hashing their bytes on every rerun), each image reduced to the model's input size while it is
decoded (:func:`gradviz.data.images.uploads_to_imageset`). Two pixel budgets bound the work a web
user can cause: ``settings().max_upload_pixels`` per upload and ``settings().max_session_pixels``
over every upload of one browser session (counted in ``st.session_state["gv_upload_pixels"]``,
an upload counted once however often the page reruns). Files beyond a budget get a message.
"""

from __future__ import annotations

import hashlib

import pandas as pd
import streamlit as st

from gradviz.data.appearance import IdLook, describe_id, unlike
from gradviz.config import settings
from gradviz.data import ImageSet, short_spec
from gradviz.data.images import ALLOWED_FORMATS, uploads_to_imageset
from gradviz.reporting.plaintext import md_text
from gradviz.runconfig import RunConfig
from gradviz.scoring import images_digest
from gradviz.ui.cache import get_dataset, get_model

UPLOAD_TYPES = [f.lower() for f in ALLOWED_FORMATS] + ["jpg", "tif"]
UPLOAD_LABEL = "Images (PNG, JPEG, BMP, TIFF, WebP, GIF)"
UPLOAD_HELP = "Decoded locally and reduced to the model's input size; nothing leaves this machine."


def upload_max_mb() -> int:
    """Per-file image upload limit in MB (GRADVIZ_MAX_UPLOAD_MB): the browser refuses bigger files at once
    (Streamlit's own server.maxUploadSize is the largest limit of any uploader, the weights')."""
    return settings().max_upload_mb


@st.cache_data(max_entries=8, show_spinner="Decoding uploaded images…")
def _decode(ids: tuple, model: str, weights: str | None, budget: int, limit_text: str, clean_up: bool, _files: tuple):
    """(ImageSet | None, errors) of the files ``ids`` names; ``_files`` ((name, bytes), ...) is not hashed."""
    return uploads_to_imageset(list(_files), get_model(model, weights).card, max_total_pixels=budget,
                               pixels_setting=limit_text, clean_up=clean_up)


def _budget(key: str) -> tuple[int, str]:
    """Pixels this upload may decode: the per-upload limit, or what is left of the session's."""
    cfg = settings()
    seen: dict = st.session_state.setdefault("gv_upload_pixels", {})
    if key in seen:  # the same upload again (a rerun): the same arguments, so the cached decode is reused
        return seen[key][0], seen[key][1]
    left = max(0, cfg.max_session_pixels - sum(pixels for _, _, pixels in seen.values()))
    if left < cfg.max_upload_pixels:
        return left, (f"what is left of this session's {cfg.max_session_pixels:,}, GRADVIZ_MAX_SESSION_PIXELS; "
                      "reload the page for a new session")
    return cfg.max_upload_pixels, "GRADVIZ_MAX_UPLOAD_PIXELS"


def decode_uploads(files: list | None, cfg: RunConfig,
                   clean_up: bool = False) -> tuple[ImageSet | None, list[tuple[str, str]]]:
    """Streamlit ``UploadedFile`` objects -> (an OOD ImageSet at ``cfg``'s model input, or None; errors per file).
    ``clean_up``: through the Playground camera's clean-up (:func:`gradviz.data.images.uploads_to_imageset`)."""
    if not files:
        return None, []
    ids = tuple((f.file_id, f.name, f.size) for f in files)
    key = hashlib.sha256(repr((ids, clean_up)).encode()).hexdigest()[:16]  # a cleaned decode counts on its own
    budget, limit_text = _budget(key)
    data, errors = _decode(ids, cfg.model, cfg.weights, budget, limit_text, clean_up,
                           _files=tuple((f.name, f.getvalue()) for f in files))
    st.session_state["gv_upload_pixels"][key] = (budget, limit_text, data.decoded_pixels if data is not None else 0)
    return data, errors


@st.cache_data(max_entries=16, show_spinner=False)
def _id_look(model: str, weights: str | None, spec: str, limit: int | None, seed: int) -> IdLook:
    """How the ID set looks (gradviz.data.appearance.describe_id): three numbers, computed once per choice."""
    return describe_id(get_dataset(model, weights, spec, limit, seed).images, short_spec(spec, 60))


def offer_clean_up(files: list, data: ImageSet, cfg: RunConfig, key: str) -> ImageSet:
    """Say which uploads look unlike the ID set (:func:`gradviz.data.appearance.unlike`) and offer the Playground
    camera's clean-up, on by default when one does; the uploads (cleaned up or not) as the model will see them."""
    reasons = unlike(data.images, _id_look(cfg.model, cfg.weights, cfg.id, cfg.limit, cfg.seed))
    flagged = [(path, why) for path, why in zip(data.paths or [], reasons) if why]
    for path, why in flagged[:5]:
        st.warning(f"{md_text(path)} looks unlike the ID set: {why}. The model has seen nothing like it, so its prediction and "
                   "scores say little about what it shows. The clean-up below (on by default for such an upload) "
                   "redraws it the way the MNIST digits were made.", icon=":material/contrast:")
    if len(flagged) > 5:
        st.warning(f"… and {len(flagged) - 5} more uploads look unlike the ID set.")
    on = st.toggle("Clean up like the Playground camera: invert dark ink on light paper, subtract the paper, centre "
                   "the digit by mass in a 20/28 box", value=bool(flagged),
                   key=f"{key}_{images_digest(data.images)[:12]}")  # each new upload starts from its own default
    if not on:
        return data
    cleaned, errors = decode_uploads(files, cfg, clean_up=True)
    show_upload_errors(errors)
    return cleaned if cleaned is not None else data


def show_upload_errors(errors: list[tuple[str, str]]) -> None:
    """One warning per refused file (a handful), or one warning listing them when there are many."""
    if len(errors) <= 5:
        for _, message in errors:
            st.warning(md_text(message))
        return
    st.warning(f"{len(errors)} files were not loaded; first: {md_text(errors[0][1])}")
    with st.expander(f"All {len(errors)} files not loaded"):
        st.dataframe(pd.DataFrame(errors, columns=["file", "reason"]), hide_index=True, width="stretch")


def show_file_reports(skipped: dict[str, list[tuple[str, str]]], notes: dict[str, list[tuple[str, str]]],
                      key: str) -> None:
    """An expander listing, per dataset, the files skipped (with the reason) and what the decoder did to others."""
    n_skipped = sum(len(v) for v in skipped.values())
    n_notes = sum(len(v) for v in notes.values())
    if not n_skipped and not n_notes:
        return
    rows = [(spec, file, f"skipped: {reason.removeprefix(f'{file}: ')}") for spec, items in skipped.items()
            for file, reason in items]
    rows += [(spec, file, note) for spec, items in notes.items() for file, note in items]
    title = " · ".join(part for part in (f"{n_skipped} file(s) skipped" if n_skipped else "",
                                         f"{n_notes} file(s) altered while decoding" if n_notes else "") if part)
    with st.expander(f"Loading report: {title}", icon=":material/info:"):
        st.dataframe(pd.DataFrame(rows, columns=["dataset", "file", "what happened"]), hide_index=True,
                     width="stretch", key=key)


def set_reports(sets: list[ImageSet]) -> tuple[dict, dict]:
    """(skipped, notes) of loaded sets, keyed by spec, for :func:`show_file_reports`."""
    return ({d.spec: list(d.skipped) for d in sets if d.skipped}, {d.spec: list(d.notes) for d in sets if d.notes})
