"""Models by name: the bundled ``mnist-cnn`` and ``mnist-vit``, torchvision and timm architectures,
installed plugins (entry-point group ``gradviz.models``) and, from the command line,
``path/to/file.py:build``.

Every model is wrapped in a :class:`GradvizModel`: it takes images in [0, 1] of the card's
input size, normalises them itself, and exposes the penultimate features and the last
linear layer (the "head") that the closed-form methods need.
"""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from gradviz.config import ASSETS
from gradviz.errors import ModelError
from gradviz.models.card import ModelCard
from gradviz.models.compiled import uncompiled
from gradviz.models.hooks import forward_hooks
from gradviz.models.weights import open_weights

__all__ = ["GradvizModel", "ModelCard", "load_model", "list_models", "register_model", "MODEL_REGISTRY"]


class GradvizModel(nn.Module):
    """A classifier plus its card: ``forward(x)`` takes (B, C, H, W) images in [0, 1].

    The object may be shared between sessions and threads (``st.cache_resource``), so it is
    kept in ``eval()`` mode, never holds hooks or ``.grad`` outside a ``with`` block, and
    ``lock`` (re-entrant) serialises passes on it: every forward takes it, and callers that
    run a backward pass (or register hooks) hold it for the whole forward+backward.
    """

    def __init__(self, net: nn.Module, card: ModelCard) -> None:
        super().__init__()
        self.net = uncompiled(net)  # hooks and per-sample gradients need the eager module
        _uncache_attention_biases(self.net)
        self.card = card
        c = card.channels
        self.register_buffer("mean", torch.tensor(card.mean, dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(card.std, dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.lock = threading.RLock()
        self.head = _last_linear(net)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(True)
        self.digest = state_digest(net)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) in [0, 1] -> (B, K)
        # Every forward takes the lock: while one thread has hooks registered (GAIA, the
        # gradient engine, captum), another thread's forward must not run through them.
        with self.lock:
            return self.net(self.normalize(x))

    @contextmanager
    def capture_features(self) -> Iterator[dict]:
        """Within the block, every forward stores the head's input (B, D) in ``out["h"]``."""
        store: dict = {}

        def pre_hook(_module, args):
            store["h"] = args[0].flatten(1)

        with forward_hooks(self, pre_hooks={self.head: pre_hook}):
            yield store

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, K), penultimate features (B, D)) in one no-grad forward."""
        with torch.no_grad(), self.capture_features() as store:
            logits = self(x)
        return logits, store["h"]


def _uncached_attention_biases(self: nn.Module, device: torch.device) -> torch.Tensor:
    return self.attention_biases[:, self.attention_bias_idxs]


def _uncache_attention_biases(net: nn.Module) -> None:
    """Attention modules that cache their bias table across eval-mode forwards (timm LeViT, EfficientFormer,
    TinyViT: ``attention_bias_cache``) recompute it every forward instead. A cached table is either detached
    (filled under no_grad: ``attention_biases`` would get no gradient) or holds the graph of the forward that
    filled it (the next backward through it fails: "backward through the graph a second time"). The gather is
    cheap; the override is a bound method, so a deep copy of the network keeps it."""
    import types

    for m in net.modules():
        if isinstance(getattr(m, "attention_bias_cache", None), dict) and hasattr(m, "attention_biases") \
                and hasattr(m, "attention_bias_idxs") and callable(getattr(m, "get_attention_biases", None)):
            m.attention_bias_cache.clear()
            m.get_attention_biases = types.MethodType(_uncached_attention_biases, m)


def _last_linear(net: nn.Module) -> nn.Linear:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError("the model has no final nn.Linear layer; gradviz needs one (the classifier head)")
    return linears[-1]


def state_digest(net: nn.Module) -> str:
    """Short sha256 of the parameters and buffers: the model's identity in cache keys."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class ModelEntry:
    """A registry row: name, one-line description, a builder ``(weights) -> model``, and where it
    comes from (``bundled`` or ``plugin``)."""

    name: str
    description: str
    build: Callable[..., GradvizModel]
    offline: bool
    source: str = "bundled"


MODEL_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, description: str, offline: bool = False):
    """Decorator: add a builder ``fn(weights: str | None) -> GradvizModel`` under ``name``."""

    def deco(fn: Callable[..., GradvizModel]):
        MODEL_REGISTRY[name] = ModelEntry(name, description, fn, offline)
        return fn

    return deco


def _plugin_entry(name: str, description: str) -> ModelEntry:
    def build(weights: str | Path | None = None) -> GradvizModel:
        from gradviz.models.architectures import model_from_weights
        from gradviz.models.plugins import build_plugin

        if weights is None:
            return build_plugin(name)
        return model_from_weights(name, open_weights(weights))

    return ModelEntry(name, description, build, offline=True, source="plugin")


def list_models() -> list[ModelEntry]:
    """Registered models: the bundled ones first, then installed ``gradviz.models`` plugins (not imported)."""
    from gradviz.models import zoo  # noqa: F401  (registers the builders)
    from gradviz.models.plugins import describe_plugin, plugin_entry_points

    plugins = [_plugin_entry(n, describe_plugin(ep)) for n, ep in plugin_entry_points().items() if n not in MODEL_REGISTRY]
    return [*MODEL_REGISTRY.values(), *plugins]


def load_model(name: str = "mnist-cnn", weights: str | Path | None = None, device: str | torch.device = "cpu", *,
               allow_code: bool = False) -> GradvizModel:
    """Build the model ``name`` (see :func:`list_models`), optionally with a weights file.

    ``name`` may also be ``torchvision:<arch>`` or ``timm:<name>``, an installed plugin, or
    ``path/to/file.py:build`` — the last runs that file, so only with ``allow_code=True`` (the
    command line, or the dashboard's server configuration). Weights files are read without
    unpickling code (safetensors or ``weights_only=True``).
    """
    from gradviz.models import plugins, timm_models, zoo

    if name in MODEL_REGISTRY:
        model = MODEL_REGISTRY[name].build(weights)
    elif name.startswith("torchvision:"):
        model = zoo.torchvision_model(name.split(":", 1)[1], weights)
    elif name.startswith(timm_models.PREFIX):
        model = timm_models.timm_model(name[len(timm_models.PREFIX):], weights)
    elif plugins.is_file_spec(name):
        from gradviz.models.architectures import model_from_weights

        if not allow_code:
            raise ModelError(f"{name} runs a Python file; it is loaded only when the person running gradviz asks for it "
                             "(command line --model, or the dashboard's server configuration GRADVIZ_MODELS)")
        model = plugins.build_from_file(name) if weights is None else \
            model_from_weights(name, open_weights(weights), allow_code=True)
    elif name in plugins.plugin_entry_points():
        model = _plugin_entry(name, "").build(weights)
    elif name.startswith("upload:"):
        raise ModelError(f"{name} was uploaded in a web session and lives only there; load its architecture with "
                         "--model <arch> --weights FILE.safetensors instead")
    else:
        known = ", ".join(m.name for m in list_models()) + ", torchvision:<arch>, timm:<name>, path/to/file.py:build"
        raise ModelError(f"unknown model {name!r}; known: {known}")
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise ModelError(f"cannot move the model to {device!r}: {exc}") from None
    model.eval()
    return model


BUNDLED_WEIGHTS = ASSETS / "mnist_cnn.safetensors"
BUNDLED_CARD = ASSETS / "mnist_cnn.json"
