"""The shared sidebar: model, ID set, OOD sets, methods, samples, seed -> ``st.session_state.gv_config``."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import streamlit as st

from gradviz.config import settings
from gradviz.data import dataset_options
from gradviz.methods import list_methods
from gradviz.models import list_models
from gradviz.models import zoo  # noqa: F401  (registers the bundled model)
from gradviz.scoring import RunConfig

MAX_SPEC_CHARS = 4096  # the browser stops a giant paste; the library refuses folder paths over 1,024 with a message

_FRAME = threading.local()


@contextmanager
def frame() -> Iterator[None]:
    """``app.py`` runs the selected page inside this block: the page then knows the frame is drawn."""
    _FRAME.active = True
    try:
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


def current_config() -> RunConfig:
    """The run configuration chosen in the sidebar (defaults before the sidebar has run)."""
    return st.session_state.get("gv_config") or RunConfig()


def render_sidebar() -> RunConfig:
    """Draw the control panel and store the resulting config in session state.

    Widgets start from the current ``gv_config`` (the last choice, or one a test or link put
    there), so the controls and the config never disagree, even where Streamlit has dropped a
    widget's state (e.g. between page scripts).
    """
    cur = current_config()
    all_methods = [m.name for m in list_methods()]  # ordered by family
    families = {m.name: m.family for m in list_methods()}
    sb = st.sidebar
    sb.header("Controls")
    names = [m.name for m in list_models()]
    model = sb.selectbox("Model", names, index=names.index(cur.model) if cur.model in names else 0, key="gv_model",
                         help="The bundled model works offline. torchvision models: use 'Other model' below.")
    with sb.expander("Other model (torchvision)"):
        arch = st.text_input("torchvision architecture", key="gv_arch", placeholder="e.g. resnet18",
                             value=cur.model.split(":", 1)[1] if cur.model.startswith("torchvision:") else "",
                             help="Downloads ImageNet weights when online.")
    if arch.strip():
        model = f"torchvision:{arch.strip()}"
    options = dataset_options()
    id_spec = sb.selectbox("In-distribution (ID) set", options, index=options.index(cur.id) if cur.id in options else 0,
                           key="gv_id")
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
    limit = sb.slider("Samples per set", 100, max_samples, int(min(max(100, cur.limit or 1000), max_samples)), step=100,
                      key="gv_limit")
    seed = int(sb.number_input("Seed", 0, 10_000, int(cur.seed), key="gv_seed"))
    params: dict[str, dict] = {}
    with sb.expander("Method parameters"):
        for info in list_methods():
            if info.name not in methods:
                continue
            for pname, default in info.defaults.items():
                start = cur.params.get(info.name, {}).get(pname, default)
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
                                        key=f"gv_p_{info.name}_{pname}", help=f"default {default:g}; {span}".strip("; "))
                if value != default:
                    params.setdefault(info.name, {})[pname] = value
    sb.caption("Runs locally: your data is not sent anywhere.")
    cfg = RunConfig(model=model, id=id_spec, ood=ood, methods=methods or all_methods, limit=int(limit), seed=seed,
                    params=params)
    st.session_state["gv_config"] = cfg
    return cfg
