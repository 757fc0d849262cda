"""``torchvision:NAME[:split]``: torchvision datasets, downloaded on demand into
``settings().data_root / "torchvision"`` (test split by default, ``:train`` for training).

Names (case-insensitive): MNIST, FashionMNIST, KMNIST, QMNIST, EMNIST (letters split,
images transposed upright), USPS, CIFAR10, CIFAR100, SVHN, STL10, Omniglot (evaluation
alphabets for ``test``, background for ``train``; inverted to white strokes on black like
MNIST). Labels are the dataset's own classes (``class_names`` from torchvision). When the
files are absent and the download fails (offline) one :class:`DatasetError` names the
dataset and the folder to fill. ``limit`` takes a seeded random subset *before* images are
converted, so asking for 500 CIFAR images does not decode 10,000.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, cast

import numpy as np
import torch

from gradviz.config import settings
from gradviz.data import ImageSet, register_dataset
from gradviz.errors import DatasetError

DOWNLOAD_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class TvDataset:
    """How to open one torchvision dataset: ``build(root, train, download)``."""

    name: str
    build: Callable[[str, bool, bool], Any]
    transpose: bool = False  # EMNIST stores images transposed
    invert: bool = False  # Omniglot is black on white
    listed: bool = True  # offered in the dashboard's dataset pickers (the others are typed by name)


def _tv(cls_name: str, **fixed) -> Callable[[str, bool, bool], Any]:
    def build(root: str, train: bool, download: bool):
        import torchvision.datasets as tvd

        return getattr(tvd, cls_name)(root, train=train, download=download, **fixed)

    return build


def _split_kw(cls_name: str) -> Callable[[str, bool, bool], Any]:
    def build(root: str, train: bool, download: bool):
        import torchvision.datasets as tvd

        return getattr(tvd, cls_name)(root, split="train" if train else "test", download=download)

    return build


def _omniglot(root: str, train: bool, download: bool):
    import torchvision.datasets as tvd

    return tvd.Omniglot(root, background=train, download=download)


TV_DATASETS: dict[str, TvDataset] = {
    d.name.lower(): d
    for d in (
        TvDataset("MNIST", _tv("MNIST")),
        TvDataset("FashionMNIST", _tv("FashionMNIST")),
        TvDataset("KMNIST", _tv("KMNIST")),
        TvDataset("QMNIST", _tv("QMNIST"), listed=False),
        TvDataset("EMNIST", _tv("EMNIST", split="letters"), transpose=True),
        TvDataset("USPS", _tv("USPS"), listed=False),
        TvDataset("CIFAR10", _tv("CIFAR10")),
        TvDataset("CIFAR100", _tv("CIFAR100")),
        TvDataset("SVHN", _split_kw("SVHN")),
        TvDataset("STL10", _split_kw("STL10"), listed=False),
        TvDataset("Omniglot", _omniglot, invert=True),
    )
}


def tv_root() -> Path:
    """Where torchvision datasets are stored: ``settings().data_root / "torchvision"``."""
    return cast(Path, settings().data_root) / "torchvision"  # always a Path once the settings are validated


def _reason(exc: BaseException, n: int = 200) -> str:
    """The exception's message on one line, shortened."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= n else text[: n - 1] + "…"


def open_tv_dataset(entry: TvDataset, train: bool = False) -> Any:
    """The torchvision dataset object, from disk or downloaded; offline -> one clear DatasetError."""
    root = tv_root()
    try:
        return entry.build(str(root), train, False)
    except (RuntimeError, FileNotFoundError, OSError):
        pass  # not on disk yet: try to download
    old_timeout = socket.getdefaulttimeout()
    try:
        root.mkdir(parents=True, exist_ok=True)
        # An offline machine may hang on connect otherwise. Process-wide, so restored below.
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        return entry.build(str(root), train, True)
    except Exception as exc:  # urllib/http/zip/md5 failures all mean the same thing to the user
        raise DatasetError(
            f"torchvision dataset {entry.name} is not in {root} and could not be downloaded "
            f"({type(exc).__name__}: {_reason(exc)}). Download it on a machine with internet access "
            f"and copy it into {root} (or set GRADVIZ_DATA_ROOT), or use an offline set: mnist, letters, "
            "noise-uniform, corrupt:<name>:<severity>"
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def _arrays(ds: Any, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (n, c, h, w) and int64 labels for indices ``idx`` — from ``.data`` when present."""
    data = getattr(ds, "data", None)
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = getattr(ds, "labels", None)
    if data is not None and targets is not None and len(data) == len(ds):
        x = np.asarray(data[torch.as_tensor(idx)] if isinstance(data, torch.Tensor) else data[idx])
        y = np.asarray(targets)[idx] if not isinstance(targets, torch.Tensor) else targets[torch.as_tensor(idx)].numpy()
        if x.ndim == 3:  # (n, h, w) grey
            x = x[:, None]
        elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):  # (n, h, w, c)
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x), np.asarray(y, dtype=np.int64).reshape(-1)
    images, labels = [], []
    for i in idx.tolist():  # datasets without an in-memory array (Omniglot) load file by file
        img, label = ds[i]
        a = np.asarray(img.convert("L") if img.mode not in ("L", "RGB") else img)
        images.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
        labels.append(int(label))
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def parse_tv(arg: str | None) -> tuple[TvDataset, bool]:
    """``"CIFAR10:train"`` -> (entry, train=True); unknown names raise DatasetError listing the supported ones."""
    names = ", ".join(d.name for d in TV_DATASETS.values())
    if not arg:
        raise DatasetError(f"torchvision needs a dataset name, e.g. torchvision:CIFAR10; supported: {names}")
    name, _, split = arg.partition(":")
    entry = TV_DATASETS.get(name.strip().lower())
    if entry is None:
        raise DatasetError(f"unknown torchvision dataset {name!r}; supported: {names}")
    split = (split or "test").strip().lower()
    if split not in ("train", "test"):
        raise DatasetError(f"torchvision split must be 'train' or 'test', got {split!r}")
    return entry, split == "train"


def load_torchvision(name: str, train: bool = False, limit: int | None = None, seed: int = 0) -> ImageSet:
    """Images (N, C, H, W) float in [0, 1] and labels of a torchvision dataset (seeded subset of ``limit``)."""
    entry, train = parse_tv(f"{name}:{'train' if train else 'test'}")
    ds = open_tv_dataset(entry, train)
    n = len(ds)
    if n == 0:
        raise DatasetError(f"torchvision dataset {entry.name} in {tv_root()} is empty")
    if limit is not None and int(limit) < n:
        idx = np.sort(np.random.default_rng(seed).choice(n, int(limit), replace=False))
    else:
        idx = np.arange(n)
    x, y = _arrays(ds, idx)
    images = torch.from_numpy(x).float().div_(255.0)  # (N, C, H, W)
    if entry.transpose:
        images = images.transpose(-2, -1)
    if entry.invert:
        images = 1.0 - images
    classes = getattr(ds, "classes", None)
    spec = f"torchvision:{entry.name}" + (":train" if train else "")
    return ImageSet(spec, images.contiguous(), y, class_names=list(classes) if classes else None)


@register_dataset("torchvision", "A torchvision dataset (MNIST, FashionMNIST, KMNIST, EMNIST letters, CIFAR10/100, "
                  "SVHN, Omniglot, ...), downloaded on demand",
                  offline=False, example="torchvision:FashionMNIST",
                  offers=lambda: [f"torchvision:{d.name}" for d in TV_DATASETS.values() if d.listed])
def load_tv_spec(arg: str | None, limit: int | None, seed: int) -> ImageSet:
    entry, train = parse_tv(arg)
    return load_torchvision(entry.name, train, limit, seed)
