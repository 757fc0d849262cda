"""Datasets by name (a *spec* string), each returning images the model can take.

Specs: ``mnist`` (held-out split), ``mnist:train``, ``letters``, ``noise-uniform``,
``noise-gaussian``, ``corrupt:<name>:<severity>``, ``folder:PATH``, ``torchvision:NAME``.
See :func:`list_datasets`. Every loader returns an :class:`ImageSet` whose images are
float32 in [0, 1] at the model card's input size and channels (:func:`adapt_images`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from gradviz.errors import DatasetError
from gradviz.models.card import ModelCard

__all__ = ["ImageSet", "load_dataset", "list_datasets", "register_dataset", "adapt_images", "DATASETS"]


@dataclass
class ImageSet:
    """A batch of images with their provenance. Labels are -1 where unknown (OOD sets)."""

    spec: str
    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64, -1 = no label
    paths: list[str] | None = None  # source file per image (folder/upload sets)
    class_names: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) not loaded

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, idx: np.ndarray | list[int]) -> "ImageSet":
        idx = np.asarray(idx, dtype=np.int64)
        paths = [self.paths[i] for i in idx] if self.paths is not None else None
        return ImageSet(self.spec, self.images[torch.as_tensor(idx)], self.labels[idx], paths, self.class_names, self.skipped)


@dataclass
class DatasetEntry:
    """Registry row. ``load(arg, n, seed)`` returns native images (N, c, h, w) in [0, 1] + labels."""

    prefix: str
    description: str
    load: Callable[..., ImageSet]
    offline: bool = True
    example: str = ""


DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(prefix: str, description: str, offline: bool = True, example: str = ""):
    """Decorator: ``fn(arg: str | None, limit: int | None, seed: int) -> ImageSet`` handles ``prefix[:arg]``."""

    def deco(fn):
        DATASETS[prefix] = DatasetEntry(prefix, description, fn, offline, example or prefix)
        return fn

    return deco


def _ensure_registered() -> None:
    # Importing the modules runs their @register_dataset decorators.
    from gradviz.data import corruptions, folder, letters, mnist, noise, session, splits, tv, zipset  # noqa: F401


def list_datasets() -> list[DatasetEntry]:
    """All dataset kinds with a description and an example spec."""
    _ensure_registered()
    return list(DATASETS.values())


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"corrupt:fog:3"`` -> ``("corrupt", "fog:3")``; ``"letters"`` -> ``("letters", None)``."""
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetError("empty dataset name")
    prefix, _, arg = spec.strip().partition(":")
    return prefix, (arg or None)


def load_dataset(spec: str, card: ModelCard | None = None, limit: int | None = None, seed: int = 0) -> ImageSet:
    """Load ``spec`` (see module doc), at most ``limit`` images, adapted to ``card``'s input."""
    _ensure_registered()
    if limit is not None and int(limit) <= 0:
        raise DatasetError(f"limit must be a positive number of samples, got {limit}")
    prefix, arg = parse_spec(spec)
    if prefix not in DATASETS:
        known = ", ".join(e.example for e in DATASETS.values())
        raise DatasetError(f"unknown dataset {spec!r}; known: {known}")
    data = DATASETS[prefix].load(arg, limit, seed)
    data.spec = spec
    if len(data) == 0:
        raise DatasetError(f"dataset {spec!r} holds no usable images")
    if limit is not None and len(data) > limit:
        data = data.subset(np.arange(int(limit)))
    if card is not None:
        data.images = adapt_images(data.images, card)
    return data


def adapt_images(images: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """Convert (N, c, h, w) images in [0, 1] to the card's (C, H, W): grey<->RGB, resize with the card's
    interpolation (bilinear unless the card says bicubic or nearest; antialiased)."""
    c, h, w = card.input_size
    x = images.float()
    if x.shape[1] != c:
        if x.shape[1] == 1:
            x = x.expand(-1, c, -1, -1)
        elif c == 1:
            x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]) if x.shape[1] >= 3 else x.mean(1, keepdim=True)
        else:
            raise DatasetError(f"cannot convert {x.shape[1]}-channel images to {c} channels")
    if tuple(x.shape[-2:]) != (h, w):
        mode = getattr(card, "interpolation", "bilinear")  # the card's (timm's pretrained_cfg), bilinear by default
        if mode == "nearest":
            x = F.interpolate(x, size=(h, w), mode="nearest")
        else:
            x = F.interpolate(x, size=(h, w), mode=mode, align_corners=False, antialias=True)
    return x.clamp_(0, 1).contiguous()
