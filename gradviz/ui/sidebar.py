"""The shared sidebar: model, ID set, OOD sets, methods, samples, seed -> ``st.session_state.gv_config``."""

from __future__ import annotations

import streamlit as st

from gradviz.config import settings
from gradviz.data.corruptions import list_corruptions
from gradviz.methods import list_methods
from gradviz.models import list_models
from gradviz.models import zoo  # noqa: F401  (registers the bundled model)
from gradviz.scoring import RunConfig

BUILTIN_SETS = ["mnist", "mnist:train", "letters", "noise-uniform", "noise-gaussian"]
DEFAULT_OOD = ["letters", "noise-uniform", "corrupt:gaussian_noise:5"]
TORCHVISION_SETS = ["MNIST", "FashionMNIST", "KMNIST", "EMNIST", "CIFAR10", "CIFAR100", "SVHN", "Omniglot"]


def dataset_options() -> list[str]:
    """Specs offered in the pickers: built-ins, every corruption at severity 3 and 5, torchvision."""
    corr = [f"corrupt:{c}:{s}" for c in list_corruptions() for s in (3, 5)]
    return BUILTIN_SETS + corr + [f"torchvision:{n}" for n in TORCHVISION_SETS]


def ensure_frame() -> None:
    """Make sure the page runs inside ``app.py``'s frame (sidebar, navigation, wide layout).

    Streamlit treats a folder named ``pages/`` beside the main script as a legacy multipage
    app until ``st.navigation`` has run once in the server process: a fresh server whose
    first request is a deep link (``/compare``) would run the page alone. Switch the server
    to navigation mode and rerun, which executes ``app.py`` and then this page.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a future Streamlit without the legacy mode
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def _seed_widgets(cfg: RunConfig, methods: list[str]) -> None:
    """First run of a session: start the widgets from an existing ``gv_config`` (tests, links)."""
    ss = st.session_state
    if ss.get("gv_seeded"):
        return
    ss["gv_seeded"] = True
    if not isinstance(ss.get("gv_config"), RunConfig):
        return
    options = dataset_options()
    if cfg.id in options:
        ss.setdefault("gv_id", cfg.id)
    ss.setdefault("gv_ood", [o for o in cfg.ood if o in options and o != cfg.id])
    extra = [o for o in cfg.ood if o not in options]
    if extra:
        ss.setdefault("gv_extra", extra[0])
    ss.setdefault("gv_methods", [m for m in cfg.method_names() if m in methods])
    if cfg.limit:
        ss.setdefault("gv_limit", int(min(max(100, cfg.limit), settings().max_samples_web)))
    ss.setdefault("gv_seed", int(cfg.seed))


def current_config() -> RunConfig:
    """The run configuration chosen in the sidebar (defaults before the sidebar has run)."""
    return st.session_state.get("gv_config") or RunConfig()


def render_sidebar() -> RunConfig:
    """Draw the control panel and store the resulting config in session state."""
    cfg_default = RunConfig()
    all_methods = [m.name for m in list_methods()]
    _seed_widgets(st.session_state.get("gv_config") or cfg_default, all_methods)
    sb = st.sidebar
    sb.header("Controls")
    names = [m.name for m in list_models()]
    model = sb.selectbox("Model", names, index=0, key="gv_model",
                         help="The bundled model works offline. torchvision models: use 'Other model' below.")
    with sb.expander("Other model (torchvision)"):
        arch = st.text_input("torchvision architecture", value="", key="gv_arch", placeholder="e.g. resnet18",
                             help="Downloads ImageNet weights when online.")
    if arch.strip():
        model = f"torchvision:{arch.strip()}"
    options = dataset_options()
    id_spec = sb.selectbox("In-distribution (ID) set", options, index=0, key="gv_id")
    ood = sb.multiselect("OOD sets", [o for o in options if o != id_spec], default=[o for o in DEFAULT_OOD if o != id_spec],
                         key="gv_ood", help="Corruptions use the ID test images. Add a folder or torchvision set below.")
    with sb.expander("Add a dataset by name"):
        extra = st.text_input("spec", key="gv_extra", placeholder="folder:mydata/cats  or  corrupt:fog:2",
                              help=f"folder: paths must lie under {', '.join(str(r) for r in settings().allowed_roots)}")
    if extra.strip() and extra.strip() not in ood:
        ood = [*ood, extra.strip()]
    methods = sb.multiselect("Methods", all_methods, default=all_methods, key="gv_methods")
    limit = sb.slider("Samples per set", 100, settings().max_samples_web, cfg_default.limit or 1000, step=100, key="gv_limit")
    seed = int(sb.number_input("Seed", 0, 10_000, 0, key="gv_seed"))
    params: dict[str, dict] = {}
    with sb.expander("Method parameters"):
        for info in list_methods():
            if info.name not in methods:
                continue
            for pname, default in info.defaults.items():
                if isinstance(default, str):
                    text = st.text_input(f"{info.name}: {pname}", value=default, key=f"gv_p_{info.name}_{pname}")
                    if text.strip() and text.strip() != default:
                        params.setdefault(info.name, {})[pname] = text.strip()
                    continue
                if isinstance(default, bool) or not isinstance(default, (int, float)):
                    continue
                value = st.number_input(f"{info.name}: {pname}", value=float(default), key=f"gv_p_{info.name}_{pname}",
                                        format="%g")
                if value != float(default):
                    params.setdefault(info.name, {})[pname] = type(default)(value)
    sb.caption("Runs locally: your data is not sent anywhere.")
    cfg = RunConfig(model=model, id=id_spec, ood=ood, methods=methods or all_methods, limit=int(limit), seed=seed,
                    params=params)
    st.session_state["gv_config"] = cfg
    return cfg
