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
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

from gradviz.config import ASSETS
from gradviz.errors import ModelError
from gradviz.models.card import ModelCard
from gradviz.models.compiled import uncompiled
from gradviz.models.hooks import forward_hooks

if TYPE_CHECKING:
    from gradviz.models.resolver import Bundled

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
    """A row of :func:`list_models`: name, one-line description, whether it works offline, where it comes from
    (``bundled`` or ``plugin``) and, for a bundled model, its :class:`~gradviz.models.resolver.Bundled` source."""

    name: str
    description: str
    offline: bool
    source: str = "bundled"
    origin: "Bundled | None" = None


MODEL_REGISTRY: dict[str, ModelEntry] = {}


def register_model(origin: "Bundled", description: str, offline: bool = False) -> None:
    """Add a bundled model (a :class:`~gradviz.models.resolver.Bundled` source) under its spec."""
    MODEL_REGISTRY[origin.spec] = ModelEntry(origin.spec, description, offline, "bundled", origin)


def list_models() -> list[ModelEntry]:
    """Registered models: the bundled ones first, then installed ``gradviz.models`` plugins (not imported)."""
    from gradviz.models import zoo  # noqa: F401  (registers the bundled models)
    from gradviz.models.plugins import describe_plugin, plugin_entry_points

    plugins = [ModelEntry(n, describe_plugin(ep), offline=True, source="plugin")
               for n, ep in plugin_entry_points().items() if n not in MODEL_REGISTRY]
    return [*MODEL_REGISTRY.values(), *plugins]


def load_model(name: str = "mnist-cnn", weights: str | Path | None = None, device: str | torch.device = "cpu", *,
               allow_code: bool = False) -> GradvizModel:
    """Build the model ``name`` (see :func:`list_models`), optionally with a weights file.

    ``name`` may also be ``torchvision:<arch>`` or ``timm:<name>``, an installed plugin, or
    ``path/to/file.py:build`` — the last runs that file, so only with ``allow_code=True`` (the
    command line, or the dashboard's server configuration). Weights files are read without
    unpickling code (safetensors or ``weights_only=True``). How each kind is found and built:
    :mod:`gradviz.models.resolver`.
    """
    from gradviz.models.resolver import load

    model = load(name, weights, allow_code=allow_code)
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise ModelError(f"cannot move the model to {device!r}: {exc}") from None
    model.eval()
    return model


BUNDLED_WEIGHTS = ASSETS / "mnist_cnn.safetensors"
BUNDLED_CARD = ASSETS / "mnist_cnn.json"
