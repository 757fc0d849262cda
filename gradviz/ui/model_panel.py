"""Sidebar: the Model picker, other architectures (torchvision, timm), and uploading your own weights.

The picker offers the bundled models, installed ``gradviz.models`` plugins, the models the
server configuration names (:mod:`gradviz.ui.server`) and this session's uploads. An upload is
an architecture + a ``.safetensors`` file + a card (a JSON file or a small form), checked by
:func:`gradviz.models.upload.model_from_upload`; the model stays in this session only.
"""

from __future__ import annotations

import streamlit as st

from gradviz.config import settings
from gradviz.errors import GradvizError
from gradviz.models import list_models
from gradviz.models.card import ModelCard
from gradviz.models.plugins import is_file_spec
from gradviz.reporting.plaintext import md_text
from gradviz.ui.private import is_private_model, session_models
from gradviz.ui.server import allowed_code_models, configured_models

PENDING = "gv_pending_model"
MAX_SESSION_MODELS = 3  # uploads kept per session (the oldest is forgotten first)
NAMED_KINDS = ("torchvision:", "timm:")


def apply_pending() -> None:
    """Before the picker is drawn: select a model that was just uploaded (widget state may only change here)."""
    pending = st.session_state.pop(PENDING, None)
    if pending:
        st.session_state["gv_model"] = pending
        st.session_state["gv_arch"] = ""
        st.session_state["gv_timm"] = ""


def model_options() -> list[str]:
    """Bundled + plugins, the server's configured models, and this session's uploads."""
    names = [m.name for m in list_models()]
    return list(dict.fromkeys([*names, *configured_models(), *session_models()]))


def describe(name: str) -> str:
    """The picker's label for a model name."""
    if is_private_model(name):
        return f"{name.split(':', 1)[1]} (your upload)"
    entry = next((m for m in list_models() if m.name == name), None)
    if entry is not None:
        return f"{name} ({'plugin' if entry.source == 'plugin' else 'bundled'})"
    if is_file_spec(name):
        return f"{name} (server file)"
    return name


def render(sb, cur_model: str) -> str:
    """Draw the picker and the two expanders; return the chosen model name."""
    apply_pending()
    options = model_options()
    model = sb.selectbox("Model", options, index=options.index(cur_model) if cur_model in options else 0, key="gv_model",
                         format_func=describe,
                         help="The bundled models work offline. torchvision / timm: 'Other model'; your own "
                              "weights: 'Upload your own weights'.")
    with sb.expander("Other model (torchvision, timm)"):
        arch = st.text_input("torchvision architecture", key="gv_arch", placeholder="e.g. resnet18",
                             value=cur_model.split(":", 1)[1] if cur_model.startswith("torchvision:") else "",
                             help="Downloads ImageNet weights when online.")
        timm_name = st.text_input("timm model", key="gv_timm", placeholder="e.g. resnet18, vit_tiny_patch16_224",
                                  value=cur_model.split(":", 1)[1] if cur_model.startswith("timm:") else "",
                                  help="Pretrained weights download from the Hugging Face Hub when online; offline, "
                                       "upload a .safetensors file with 'Upload your own weights'.")
    if arch.strip():
        model = f"torchvision:{arch.strip()}"
    elif timm_name.strip():
        model = f"timm:{timm_name.strip()}"
    weights_upload(sb)
    return model


def architecture_options() -> list[str]:
    """What uploaded weights can be loaded into (torchvision / timm need a name)."""
    plugins = [m.name for m in list_models() if m.source == "plugin"]
    return ["mnist-cnn", "mnist-vit", *plugins, *sorted(allowed_code_models()), *NAMED_KINDS]


def _architecture(kind: str, name: str) -> str:
    if kind in NAMED_KINDS:
        if not name.strip():
            raise GradvizError(f"name the {kind.rstrip(':')} architecture, e.g. resnet18")
        return kind + name.strip()
    return kind


def _load(kind: str, name: str, weights, card_file, form: dict[str, str]):
    from gradviz.models.upload import model_from_upload

    if weights is None:
        raise GradvizError("choose a .safetensors weights file first")
    arch = _architecture(kind, name)
    card = ModelCard.from_json_text(card_file.getvalue(), card_file.name) if card_file is not None else None
    return model_from_upload(arch, weights.getvalue(), weights.name, card, form=form,
                             allow_code=arch in allowed_code_models(), max_params=settings().max_params_web,
                             max_side=settings().max_side_web)


def weights_upload(sb) -> None:
    """The "Upload your own weights" switch and, when on, its form (nothing runs until "Load weights").

    A switch rather than an expander: the file inputs exist only while it is on, so the sidebar holds no
    upload field a page's own uploader could be mistaken for."""
    if not sb.toggle("Upload your own weights (.safetensors)", key="gv_up_on",
                     help="An architecture + a .safetensors file + a card; the model stays in this browser session."):
        return
    with sb.container(border=True):
        done = st.session_state.pop("gv_up_msg", None)
        if done:
            st.success(done)
        with st.form("gv_up_form", border=False):
            kind = st.selectbox("Architecture", architecture_options(), key="gv_up_arch",
                                format_func=lambda k: f"{k} <name below>" if k in NAMED_KINDS else k)
            name = st.text_input("torchvision / timm name", key="gv_up_name", placeholder="e.g. resnet18")
            weights = st.file_uploader("Weights (.safetensors only)", type=["safetensors"], key="gv_up_file",
                                       max_upload_size=settings().max_weights_mb,
                                       help="Read in memory, never unpickled; kept in this browser session only.")
            card_file = st.file_uploader("Model card (JSON, optional)", type=["json"], key="gv_up_card",
                                         max_upload_size=1)
            st.caption("…or only what differs from the architecture's default card (empty = keep):")
            form = {
                "input_size": st.text_input("Input size (C, H, W)", key="gv_up_size", placeholder="3, 224, 224"),
                "mean": st.text_input("Mean per channel", key="gv_up_mean", placeholder="0.485, 0.456, 0.406"),
                "std": st.text_input("Std per channel", key="gv_up_std", placeholder="0.229, 0.224, 0.225"),
                "class_names": st.text_area("Class names (one per line, or comma-separated)", key="gv_up_classes",
                                            height=80),
            }
            submitted = st.form_submit_button("Load weights")
        if submitted:
            try:
                with st.spinner("Checking and loading the weights…"):
                    model = _load(kind, name, weights, card_file, form)
            except GradvizError as exc:
                st.error(f"Weights refused: {md_text(exc)}")
                return
            own = session_models()
            own[model.card.name] = model
            while len(own) > MAX_SESSION_MODELS:
                own.pop(next(iter(own)))
            st.session_state[PENDING] = model.card.name
            st.session_state["gv_up_msg"] = (f"Loaded {md_text(model.card.name)}: {model.card.num_classes} classes, input "
                                             f"{'×'.join(map(str, model.card.input_size))}. It is selected above.")
            st.rerun()
