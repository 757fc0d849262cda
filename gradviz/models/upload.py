"""Weights uploaded in the web app: an architecture + a ``.safetensors`` file + a card -> a model.

Nothing here touches the disk: the bytes are sniffed and their header checked
(:func:`gradviz.models.weights.open_weights_bytes`), the declared names and shapes compared with
the chosen architecture before any tensor is made
(:func:`gradviz.models.resolver.fit_weights`), then decoded in memory, loaded strictly,
and the card is checked with one dry forward pass. The model is named
``upload:<file>#<digest>``; the digest covers the weights *and* the card, so two uploads that
differ in either never share a cached result. The caller keeps the model in the uploading
session only (``st.session_state``).
"""

from __future__ import annotations

import hashlib

from gradviz.config import settings
from gradviz.errors import ModelError
from gradviz.models.card import ModelCard

PREFIX = "upload:"


def upload_name(filename: str, digest: str) -> str:
    return f"{PREFIX}{filename}#{digest[:8]}"


def model_from_upload(arch: str, data: bytes, filename: str, card: ModelCard | None = None, *,
                      form: dict[str, str] | None = None, max_mb: int | None = None, allow_code: bool = False,
                      max_params: int | None = None, max_side: int | None = None):
    """A :class:`~gradviz.models.GradvizModel` from uploaded safetensors ``data`` for ``arch``.

    ``card`` replaces the architecture's default card; ``form`` (``input_size``, ``mean``,
    ``std``, ``class_names`` as typed, empty = keep) then edits it; the result is checked
    against the network. Every
    problem ends in one :class:`ModelError` naming it: not ``.safetensors``, over the size limit
    (``GRADVIZ_MAX_WEIGHTS_MB``), a pickle / TorchScript / ``.pt2`` in disguise, NaN/inf values,
    missing or unexpected keys, shape mismatches, a card that does not fit; with ``max_params`` /
    ``max_side`` (the web app's bounds) a torchvision / timm network of more parameters (counted on the
    meta device, before it is built) or a card wider or taller than that.
    """
    from gradviz.models.card import card_from_form
    from gradviz.models.resolver import finish, fit_weights, resolve
    from gradviz.models.weights import open_weights_bytes

    filename = str(filename or "weights.safetensors")
    if not filename.lower().endswith(".safetensors"):
        raise ModelError(f"{filename}: only .safetensors weights are accepted from the browser (never pickles or code)")
    limit_mb = int(max_mb or settings().max_weights_mb)
    weights = open_weights_bytes(data, filename, max_bytes=limit_mb * 2**20)
    source = resolve(arch, allow_code=allow_code, architecture=True)
    if max_params is not None:
        from gradviz.runtime.budget import check_parameters_web

        check_parameters_web(arch, weights.shapes, max_params)
    if max_side is not None and card is not None:  # the checks before the network is built
        from gradviz.runtime.budget import check_side_web

        check_side_web(card, max_side)
    net, default = fit_weights(source, weights)
    card = (card or default).validate()
    if form and any(str(v).strip() for v in form.values()):
        card = card_from_form(card, **{k: str(v) for k, v in form.items()})
    if max_side is not None:
        from gradviz.runtime.budget import check_side_web

        check_side_web(card, max_side)
    model = finish(net, card, filename)
    digest = hashlib.sha256((model.digest + model.card.to_json()).encode()).hexdigest()[:16]
    model.digest = digest
    model.card.name = upload_name(filename, digest)
    model.card.weights = f"uploaded {filename}"
    if not model.card.architecture:
        model.card.architecture = arch
    model.card.extra = {**model.card.extra, "uploaded_architecture": arch}
    return model
