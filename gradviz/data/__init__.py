"""Datasets by name (a *spec* string), each returning images the model can take.

Specs: ``mnist`` (held-out split), ``mnist:train``, ``letters``, ``noise-uniform``,
``noise-gaussian``, ``corrupt:<name>:<severity>``, ``folder:PATH``, ``torchvision:NAME``.
See :func:`list_datasets`. Every loader returns an :class:`ImageSet` whose images are
float32 in [0, 1] at the model card's input size and channels (:func:`adapt_images`).

Paths: loaders that read a path the user names (``folder:``) are registered with
``reads_paths=True``; :func:`load_dataset` hands them ``allowed_roots``. The web app always
passes ``settings().allowed_roots``; the CLI (run by the server's owner) passes none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gradviz.errors import DatasetError
from gradviz.models.card import ModelCard

__all__ = ["ImageSet", "load_dataset", "list_datasets", "dataset_options", "register_dataset", "adapt_images",
           "check_spec", "short_spec", "DATASETS"]


@dataclass
class ImageSet:
    """A batch of images with their provenance. Labels are -1 where unknown (OOD sets)."""

    spec: str
    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64, -1 = no label
    paths: list[str] | None = None  # source file per image (folder/upload sets)
    class_names: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) not loaded
    # (file, what the decoder did: "EXIF orientation applied")
    notes: list[tuple[str, str]] = field(default_factory=list)
    decoded_pixels: int = 0  # pixels decoded from files (uploads, folders): what pixel budgets count

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, idx: np.ndarray | list[int]) -> "ImageSet":
        idx = np.asarray(idx, dtype=np.int64)
        paths = [self.paths[i] for i in idx] if self.paths is not None else None
        return ImageSet(self.spec, self.images[torch.as_tensor(idx)], self.labels[idx], paths, self.class_names,
                        self.skipped, self.notes, self.decoded_pixels)


@dataclass
class DatasetEntry:
    """Registry row. ``load(arg, n, seed)`` returns native images (N, c, h, w) in [0, 1] + labels."""

    prefix: str
    description: str
    load: Callable[..., ImageSet]
    offline: bool = True
    example: str = ""
    reads_paths: bool = False  # ``load`` takes ``allowed_roots=`` and must refuse paths outside them
    offers: Callable[[], list[str]] = lambda: []  # specs the dashboard's pickers offer (none: typed by name)
    check: Callable[[str | None], object] | None = None  # raises DatasetError for a bad argument, loading nothing


DATASETS: dict[str, DatasetEntry] = {}
# The modules whose @register_dataset run on first use; their order is the order of list_datasets() and the pickers.
_MODULES = ("mnist", "letters", "noise", "corruptions", "folder", "zipset", "splits", "session", "tv")


def register_dataset(prefix: str, description: str, offline: bool = True, example: str = "", reads_paths: bool = False,
                     offers: Sequence[str] | Callable[[], list[str]] | None = None,
                     check: Callable[[str | None], object] | None = None):
    """Decorator: ``fn(arg: str | None, limit: int | None, seed: int) -> ImageSet`` handles ``prefix[:arg]``.

    ``reads_paths``: the argument names a path on the server; ``fn`` then also takes
    ``allowed_roots`` (None = anywhere, for the CLI) and refuses paths outside them.
    ``offers``: the specs of this kind that the dashboard lists in its dataset pickers (a list, or a
    function returning one); by default none — the kind is then added by name.
    ``check``: ``check(arg)`` raises :class:`DatasetError` for an argument the loader would refuse (a severity, a
    split share), so a run configuration is refused before anything is loaded."""
    listed = offers if callable(offers) else (lambda specs=tuple(offers or ()): list(specs))

    def deco(fn):
        DATASETS[prefix] = DatasetEntry(prefix, description, fn, offline, example or prefix, reads_paths, listed, check)
        return fn

    return deco


def _ensure_registered() -> None:
    import importlib

    for name in _MODULES:  # importing a module runs its @register_dataset decorators
        importlib.import_module(f"gradviz.data.{name}")


def _rank(entry: DatasetEntry) -> int:
    module = entry.load.__module__.rsplit(".", 1)[-1]
    return _MODULES.index(module) if module in _MODULES else len(_MODULES)


def list_datasets() -> list[DatasetEntry]:
    """All dataset kinds with a description and an example spec, in :data:`_MODULES` order."""
    _ensure_registered()
    return sorted(DATASETS.values(), key=_rank)  # stable: registration order within a module


def dataset_options() -> list[str]:
    """Every spec the dashboard offers in its ID and OOD pickers, from the registry (each kind's ``offers``)."""
    return [spec for entry in list_datasets() for spec in entry.offers()]


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"corrupt:fog:3"`` -> ``("corrupt", "fog:3")``; ``"letters"`` -> ``("letters", None)``."""
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetError("empty dataset name")
    prefix, _, arg = spec.strip().partition(":")
    return prefix, (arg or None)


# Generated sets (letters, noise) make ``limit`` images, at most this many (a limit is "at most N per set", and
# MNIST's 60,000 training digits are already more than a run needs): a huge limit never renders billions of images.
MAX_GENERATED = 50_000


def generated_count(limit: int | None, default: int) -> int:
    """How many images a generated set makes: ``limit`` (else ``default``), capped at :data:`MAX_GENERATED`."""
    return min(int(limit or default), MAX_GENERATED)


UPLOAD_PREFIX = "upload"  # images uploaded in the dashboard (gradviz.data.images.upload_spec); never loadable by name


def short_spec(spec: object, n: int = 80) -> str:
    """``spec`` cut to ``n`` characters for messages (a pasted 5,000-character path stays readable)."""
    text = str(spec)
    return text if len(text) <= n else f"{text[:n - 1]}… ({len(text):,} characters)"


def check_spec(spec: str) -> str:
    """A problem with ``spec``'s kind (unknown, or an upload), or "" — a check without loading anything."""
    _ensure_registered()
    prefix, _ = parse_spec(spec)
    if prefix == UPLOAD_PREFIX:
        return (f"{short_spec(spec)!r} names images uploaded in the dashboard, which a run configuration cannot carry; "
                "put them in a folder and use folder:PATH")
    if prefix not in DATASETS:
        known = ", ".join(e.example for e in DATASETS.values())
        return f"unknown dataset {short_spec(spec)!r}; known: {known}"
    check = DATASETS[prefix].check
    if check is not None:
        try:
            check(parse_spec(spec)[1])
        except DatasetError as exc:
            return str(exc)
    return ""


def load_dataset(spec: str, card: ModelCard | None = None, limit: int | None = None, seed: int = 0,
                 allowed_roots: Sequence[str | Path] | None = None) -> ImageSet:
    """Load ``spec`` (see module doc), at most ``limit`` images, adapted to ``card``'s input.

    ``allowed_roots``: where a path-reading spec (``folder:``) may read; None = anywhere (CLI)."""
    if limit is not None and int(limit) <= 0:
        raise DatasetError(f"limit must be a positive number of samples, got {limit}")
    problem = check_spec(spec)
    if problem:
        raise DatasetError(problem)
    prefix, arg = parse_spec(spec)
    entry = DATASETS[prefix]
    if entry.reads_paths:
        data = entry.load(arg, limit, seed, allowed_roots=allowed_roots)
    else:
        data = entry.load(arg, limit, seed)
    data.spec = spec
    if len(data) == 0:
        raise DatasetError(f"dataset {short_spec(spec)!r} holds no usable images")
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
            x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]) if x.shape[1] >= 3 \
                else x.mean(1, keepdim=True)
        else:
            raise DatasetError(f"cannot convert {x.shape[1]}-channel images to {c} channels")
    if tuple(x.shape[-2:]) != (h, w):
        mode = getattr(card, "interpolation", "bilinear")  # the card's (timm's pretrained_cfg), bilinear by default
        if mode == "nearest":
            x = F.interpolate(x, size=(h, w), mode="nearest")
        else:
            x = F.interpolate(x, size=(h, w), mode=mode, align_corners=False, antialias=True)
    # Out of place: ``x`` may be an expanded view (grey -> RGB at the card's size), where an in-place
    # clamp is refused, or the caller's own tensor (same channels and size), which must stay untouched.
    return x.clamp(0, 1).contiguous()
