"""The shared sidebar: model, ID set, OOD sets, methods, samples, seed -> ``st.session_state.gv_config``."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import streamlit as st

from gradviz.config import settings
from gradviz.data import dataset_options
from gradviz.methods import list_methods
from gradviz.methods.registry import get_method
from gradviz.models import zoo  # noqa: F401  (registers the bundled model)
from gradviz.scoring import RunConfig
from gradviz.ui import id_set, model_panel

MAX_SPEC_CHARS = 4096  # the browser stops a giant paste; the library refuses folder paths over 1,024 with a message

_FRAME = threading.local()


@contextmanager
def frame() -> Iterator[None]:
    """``app.py`` runs the selected page inside this block: the page then knows the frame is drawn, and its
    work is the session's work on the server (:func:`gradviz.ui.server.session_work`)."""
    from gradviz.ui.server import session_work

    _FRAME.active = True
    try:
        with session_work():
            yield
    finally:
        _FRAME.active = False


def ensure_frame() -> None:
    """Make sure the page runs inside ``app.py``'s frame (sidebar, navigation, wide layout).

    Streamlit treats a folder named ``pages/`` beside the main script as a legacy multipage
    app until ``st.navigation`` has run once in the server process: a fresh server whose
    first request is a deep link (``/compare``) runs the page alone. Switch the server to
    navigation mode and rerun once, which executes ``app.py`` and then this page. Where the
    page still runs alone (``AppTest.switch_page`` resets that mode on every run), draw the
    shared sidebar here so the page sees the same controls.
    """
    if getattr(_FRAME, "active", False):
        return
    try:
        from streamlit.runtime.pages_manager import PagesManager

        PagesManager.uses_pages_directory = False
    except ImportError:  # a Streamlit without the legacy mode
        pass
    if not st.session_state.get("gv_framed"):
        st.session_state["gv_framed"] = True
        st.rerun()
    render_sidebar()


def _card_or_none(model: str):
    """The chosen model's card where the model is already loaded or cheap to load (None on error)."""
    from gradviz.errors import GradvizError
    from gradviz.ui.cache import get_model

    try:
        return get_model(model).card
    except GradvizError:
        return None


def current_config() -> RunConfig:
    """The run configuration chosen in the sidebar (defaults before the sidebar has run)."""
    return st.session_state.get("gv_config") or RunConfig()


def render_sidebar() -> RunConfig:
    """Draw the control panel and store the resulting config in session state.

    Widgets start from the current ``gv_config`` (the last choice, or one a test or link put
    there), so the controls and the config never disagree, even where Streamlit has dropped a
    widget's state (e.g. between page scripts).
    """
    from gradviz.runtime.budget import set_session_budget

    from gradviz.data.session import held_mb
    from gradviz.ui.private import session_sets

    set_session_budget(held_mb=held_mb(session_sets()))  # every pass of this run: the session's budget less its sets
    cur = current_config()
    all_methods = [m.name for m in list_methods()]  # ordered by family
    families = {m.name: m.family for m in list_methods()}
    sb = st.sidebar
    sb.header("Controls")
    model = model_panel.render(sb, cur.model)
    id_set.apply_pending()
    options = dataset_options()
    id_options = [*options, *id_set.own_specs()]
    id_spec = sb.selectbox("In-distribution (ID) set", id_options,
                           index=id_options.index(cur.id) if cur.id in id_options else 0, key="gv_id",
                           format_func=id_set.label)
    fit_set = id_set.fit_spec_for(id_spec) or RunConfig.fit_set
    seed_now = int(st.session_state.get("gv_seed", cur.seed))  # the Seed widget below, as last set
    note = id_set.note_for(id_spec)
    if note:
        sb.caption(note + f" Seed {seed_now}.")
    id_set.render(sb, seed_now, lambda: _card_or_none(model))
    ood = sb.multiselect("OOD sets", [o for o in options if o != id_spec],
                         default=[o for o in cur.ood if o in options and o != id_spec], key="gv_ood",
                         help="Corruptions use the ID test images. Add a folder or torchvision set below.")
    custom = [o for o in cur.ood if o not in options]
    with sb.expander("Add a dataset by name"):
        roots = ", ".join(str(r) for r in settings().allowed_roots)
        extra = st.text_input("spec", key="gv_extra", value=custom[0][:MAX_SPEC_CHARS] if custom else "",
                              max_chars=MAX_SPEC_CHARS, placeholder="folder:mydata/cats  or  corrupt:fog:2",
                              help=f"folder: paths must lie under {roots} (GRADVIZ_ALLOWED_ROOTS, set by whoever runs "
                                   "this server); a relative path starts at the first of them.")
    if extra.strip() and extra.strip() not in ood:
        ood = [*ood, extra.strip()]
    methods = sb.multiselect("Methods (by family: output, feature, gradient)", all_methods,
                             default=[m for m in cur.method_names() if m in all_methods], key="gv_methods",
                             format_func=lambda m: f"{m} · {families[m]}")
    max_samples = settings().max_samples_web
    if max_samples > 100:
        limit = sb.slider("Samples per set", 100, max_samples, int(min(max(100, cur.limit or 1000), max_samples)),
                          step=100, key="gv_limit")
    else:  # a server capped at 100 or fewer: nothing to choose (a slider needs min < max)
        limit = max_samples
        sb.caption(f"Samples per set: {limit} (the server's limit, GRADVIZ_MAX_SAMPLES_WEB)")
    seed = int(sb.number_input("Seed", 0, 10_000, int(cur.seed), key="gv_seed"))
    params: dict[str, dict] = {}
    with sb.expander("Method parameters"):
        for info in list_methods():
            if info.name not in methods:
                continue
            for pname, default in info.defaults.items():
                start = cur.params.get(info.name, {}).get(pname, default)
                if pname in info.choices:  # one of a few settings (each stated in the method's intuition text)
                    allowed = list(info.choices[pname])
                    value = st.selectbox(f"{info.name}: {pname}", allowed, key=f"gv_p_{info.name}_{pname}",
                                         index=allowed.index(start) if start in allowed else allowed.index(default),
                                         help=f"default {default}; see the method's description on the Learn page")
                    if value != default:
                        params.setdefault(info.name, {})[pname] = value
                    continue
                if isinstance(default, str):
                    text = st.text_input(f"{info.name}: {pname}", value=str(start), key=f"gv_p_{info.name}_{pname}")
                    if text.strip() and text.strip() != default:
                        params.setdefault(info.name, {})[pname] = text.strip()
                    continue
                if isinstance(default, bool) or not isinstance(default, (int, float)):
                    continue
                low, high = info.bounds.get(pname, (None, None))  # checked by the library, which says the range
                span = f"from {low:g} to {high:g}" if low is not None and high is not None else ""
                whole = isinstance(default, int)  # a whole-number parameter gets a whole-number box
                value = st.number_input(f"{info.name}: {pname}", value=int(start) if whole else float(start),
                                        step=1 if whole else None, format=None if whole else "%g",
                                        key=f"gv_p_{info.name}_{pname}",
                                        help=f"default {default:g}; {span}".strip("; "))
                if value != default:
                    params.setdefault(info.name, {})[pname] = value
    sb.caption("Runs locally: your data is not sent anywhere.")
    methods = methods or all_methods
    if fit_set != RunConfig.fit_set and not id_set.labelled(id_spec):  # no labels to fit on: leave those methods out
        unfitted = [m for m in all_methods if not get_method(m).needs_fit]
        methods = [m for m in methods if m in unfitted] or unfitted
    cfg = RunConfig(model=model, id=id_spec, ood=ood, methods=methods, limit=int(limit), seed=seed,
                    params=params, fit_set=fit_set)
    st.session_state["gv_config"] = cfg
    return cfg
