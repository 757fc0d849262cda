"""``timm:<name>``: any model of PyTorch Image Models (timm), pretrained or with a weights file.

- Online, ``timm.create_model(name, pretrained=True)`` downloads the weights from the Hugging
  Face Hub (timm's own source). Offline (``HF_HUB_OFFLINE=1``, or the Hub unreachable within a
  few seconds) the weights come from a ``.safetensors`` file (``--weights``, or an upload in
  the web app); with neither, one :class:`ModelError` says what to do.
- Never waiting forever: a probe first asks the Hub for an answer (connect *and* reply) within
  ``HUB_PROBE_TIMEOUT_S``; during the download every Hub request waits at most
  ``HUB_READ_TIMEOUT_S`` for the server (connect, each read) and no new request (the client's
  retries included) starts after ``HUB_DEADLINE_S``. A Hub that accepts connections but never
  answers ends in one :class:`ModelError` within seconds, not the client's ~400 s of retries.
- The card comes from timm's ``pretrained_cfg``: input size, mean/std, interpolation, and the
  class names where timm knows them (ImageNet-1k/22k label sets via ``infer_imagenet_subset``).
  A JSON card beside a weights file (same stem) replaces it.
"""

from __future__ import annotations

import contextvars
import http.client
import os
import ssl
import threading
import time
from urllib.parse import urlparse

import torch
from torch import nn

from gradviz.errors import ModelError
from gradviz.models.card import INTERPOLATIONS, ModelCard

PREFIX = "timm:"
HUB_PROBE_TIMEOUT_S = 3.0  # the probe: connect and the first answer
HUB_READ_TIMEOUT_S = 15.0  # any one Hub request: connect, and each read of its answer
HUB_DEADLINE_S = 60.0  # no Hub request starts later than this after the download began
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("gradviz_hub_deadline", default=None)
_CLIENT_LOCK = threading.Lock()


class HubTimeout(Exception):
    """The Hub download ran past its deadline. Not an HTTP client error, so the Hub client does not retry it."""


def _timm():
    try:
        import timm
    except ImportError:
        raise ModelError("timm is not installed; pip install timm==1.0.31 (it is pinned in requirements.txt)") from None
    return timm


def check_name(name: str) -> str:
    """``name`` (stripped) when timm knows that model, else :class:`ModelError` naming similar ones."""
    name = str(name).strip()
    timm = _timm()
    if not name or not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:5] if name else []
        hint = f"; similar: {', '.join(close)}" if close else "; e.g. resnet18, vit_tiny_patch16_224, convnext_atto"
        raise ModelError(f"unknown timm model {name!r}{hint}")
    return name


def _offline_reason() -> str | None:
    """Why the Hugging Face Hub cannot be used now (None: it can): a HEAD request that must be answered, with
    any status, within HUB_PROBE_TIMEOUT_S (a server that accepts the connection and stays silent fails it)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:  # read once when huggingface_hub was first imported
        return "HF_HUB_OFFLINE was set when the Hub client was loaded"
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    if url.scheme == "https":
        liveness = ssl.create_default_context()  # only "does it answer": the download checks certificates
        liveness.check_hostname, liveness.verify_mode = False, ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, port, timeout=HUB_PROBE_TIMEOUT_S, context=liveness)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=HUB_PROBE_TIMEOUT_S)
    try:
        conn.request("HEAD", "/")
        conn.getresponse()
        return None
    except TimeoutError:
        return f"{host} did not answer within {HUB_PROBE_TIMEOUT_S:g} s"
    except (OSError, http.client.HTTPException) as exc:
        return f"{host} is not reachable ({type(exc).__name__})"
    finally:
        conn.close()


def _bound_request(request) -> None:
    """A request hook on the Hub client: inside a gradviz download, cap the request's timeouts at
    HUB_READ_TIMEOUT_S and the time left, and start no request after the deadline (huggingface_hub's client
    otherwise waits 10–60 s per try and retries five times per file). Elsewhere it does nothing."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise HubTimeout(f"no answer from the Hub within {HUB_DEADLINE_S:g} s")
    cap = min(left, HUB_READ_TIMEOUT_S)
    asked = dict(request.extensions.get("timeout") or {})
    request.extensions["timeout"] = {k: cap if asked.get(k) is None else min(asked[k], cap)
                                     for k in ("connect", "read", "write", "pool")}


def _bound_hub_client() -> None:
    """Add :func:`_bound_request` to the Hub's shared client (once per client; a new client gets it again)."""
    from huggingface_hub import get_session

    with _CLIENT_LOCK:
        session = get_session()
        if _bound_request not in session.event_hooks["request"]:
            session.event_hooks = {**session.event_hooks, "request": [*session.event_hooks["request"], _bound_request]}


def _timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a timeout of the Hub download."""
    while exc is not None:
        if isinstance(exc, (HubTimeout, TimeoutError)) or "Timeout" in type(exc).__name__:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _offline_error(name: str, reason: str) -> ModelError:
    return ModelError(
        f"timm:{name} needs its pretrained weights from the Hugging Face Hub, but the machine is offline ({reason}). "
        f"Offline, give a .safetensors weights file: --weights {name}.safetensors on the command line, or "
        "'Your own weights' in the web app's sidebar — or use the bundled mnist-cnn / mnist-vit"
    )


def class_names_for(net: nn.Module, num_classes: int) -> list[str]:
    """Class names timm knows for ``net`` (ImageNet label sets), else ``class 0 … class K-1``."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(net)
        if subset:
            names = [d.split(",")[0].strip() for d in ImageNetInfo(subset).label_descriptions()]
            if len(names) == num_classes:
                return names
    except Exception:  # noqa: BLE001 — label metadata is a nicety; any failure falls back to indices
        pass
    return [f"class {i}" for i in range(num_classes)]


def timm_card(net: nn.Module, name: str, num_classes: int, pretrained: bool, weights: str | None = None) -> ModelCard:
    """The card from timm's ``pretrained_cfg`` of ``net`` (input size, mean/std, interpolation, classes)."""
    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    size = tuple(int(v) for v in cfg.get("input_size", (3, 224, 224)))
    channels = size[0]
    mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))[:channels]
    std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))[:channels]
    interpolation = str(cfg.get("interpolation", "bilinear"))
    names = class_names_for(net, num_classes) if pretrained or num_classes == cfg.get("num_classes") else \
        [f"class {i}" for i in range(num_classes)]
    card = ModelCard(
        name=f"{PREFIX}{name}", architecture=f"timm {name}", input_size=size, mean=mean, std=std, class_names=names,
        description=f"timm model {name}" + (f" ({cfg.get('tag')} weights)" if pretrained and cfg.get("tag") else ""),
        weights=weights or (cfg.get("hf_hub_id") if pretrained else None),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
        extra={k: cfg[k] for k in ("hf_hub_id", "tag", "crop_pct", "license", "classifier") if k in cfg},
    )
    return card.validate()


def head_key(name: str) -> str:
    """The state-dict key of the classifier weight (timm's ``pretrained_cfg['classifier']``)."""
    timm = _timm()
    cfg = timm.models.get_pretrained_cfg(name)
    classifier = (cfg.classifier if cfg is not None and getattr(cfg, "classifier", None) else "head")
    return f"{classifier}.weight"


def num_classes_in(name: str, state: dict[str, torch.Tensor], default: int = 1000) -> int:
    """Rows of the classifier weight in ``state`` (the number of classes a weights file was trained for)."""
    key = head_key(name)
    for k in (key, f"module.{key}"):
        if k in state and state[k].ndim >= 2:
            return int(state[k].shape[0])
    return default


def build_timm(name: str, num_classes: int | None = None) -> tuple[nn.Module, ModelCard]:
    """An untrained timm ``name`` with ``num_classes`` outputs (no download) and its card."""
    timm = _timm()
    name = check_name(name)
    kwargs = {} if num_classes is None else {"num_classes": int(num_classes)}
    try:
        net = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise ModelError(f"cannot build timm:{name} with {num_classes} classes: {exc}") from None
    k = int(getattr(net, "num_classes", num_classes or 1000))
    return net.eval(), timm_card(net, name, k, pretrained=False)


def timm_pretrained(name: str) -> tuple[nn.Module, ModelCard]:
    """``timm:<name>`` with its pretrained weights from the Hub (online) and their card; offline, or when the Hub
    does not answer in time, one :class:`ModelError` saying to give a weights file."""
    timm = _timm()
    name = check_name(name)
    reason = _offline_reason()
    if reason is not None:
        raise _offline_error(name, reason)
    _bound_hub_client()
    token = _DEADLINE.set(time.monotonic() + HUB_DEADLINE_S)
    try:
        net = timm.create_model(name, pretrained=True)
    except Exception as exc:  # noqa: BLE001 — the Hub client raises many types (HTTP, cache, offline)
        if _timed_out(exc):
            raise _offline_error(name, f"the Hub did not answer within {HUB_READ_TIMEOUT_S:g} s per request, "
                                       f"{HUB_DEADLINE_S:g} s in all") from None
        raise ModelError(f"could not download pretrained weights for timm:{name} ({type(exc).__name__}: "
                         f"{(str(exc).splitlines() or [''])[0][:160]}); pass a .safetensors file instead") from None
    finally:
        _DEADLINE.reset(token)
    k = int(getattr(net, "num_classes", 1000))
    return net.eval(), timm_card(net, name, k, pretrained=True)
