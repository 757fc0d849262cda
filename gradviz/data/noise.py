"""Pure-noise OOD sets: ``noise-uniform`` (U[0, 1]) and ``noise-gaussian`` (N(0.5, 0.25²) clipped to [0, 1]).

Images are 1×28×28 (``load_dataset`` adapts them to the model card), 1,000 by default
or ``limit``, at most :data:`gradviz.data.MAX_GENERATED`; the same seed gives the same images.
Clipping the Gaussian puts about 2.3 % of the pixels at exactly 0 and 2.3 % at exactly 1 (±2σ).
"""

from __future__ import annotations

import numpy as np
import torch

from gradviz.data import MAX_GENERATED, ImageSet, generated_count, register_dataset
from gradviz.errors import DatasetError

DEFAULT_N = 1000
NOISE_SHAPE = (1, 28, 28)
GAUSSIAN_MEAN, GAUSSIAN_STD = 0.5, 0.25


def _check_count(n: int) -> int:
    if not 0 < int(n) <= MAX_GENERATED:
        raise DatasetError(f"a noise set holds 1 to {MAX_GENERATED:,} images, asked for {int(n):,}")
    return int(n)


def uniform_noise(n: int, seed: int = 0, shape: tuple[int, int, int] = NOISE_SHAPE) -> torch.Tensor:
    """(n, *shape) float32 images with i.i.d. U[0, 1] pixels."""
    n = _check_count(n)
    gen = torch.Generator().manual_seed(int(seed))
    return torch.rand((n, *shape), generator=gen)


def gaussian_noise(n: int, seed: int = 0, shape: tuple[int, int, int] = NOISE_SHAPE) -> torch.Tensor:
    """(n, *shape) float32 images with i.i.d. N(0.5, 0.25²) pixels clipped to [0, 1]."""
    n = _check_count(n)
    gen = torch.Generator().manual_seed(int(seed))
    return (GAUSSIAN_MEAN + GAUSSIAN_STD * torch.randn((n, *shape), generator=gen)).clamp_(0.0, 1.0)


def _unlabelled(spec: str, images: torch.Tensor) -> ImageSet:
    return ImageSet(spec, images, np.full(len(images), -1, dtype=np.int64))


@register_dataset("noise-uniform", "Uniform noise U[0,1], 1×28×28 (offline, seeded)", example="noise-uniform",
                  offers=["noise-uniform"])
def load_uniform(arg: str | None, limit: int | None, seed: int) -> ImageSet:
    return _unlabelled("noise-uniform", uniform_noise(generated_count(limit, DEFAULT_N), seed))


@register_dataset("noise-gaussian", "Gaussian noise N(0.5, 0.25²) clipped to [0,1], 1×28×28 (offline, seeded)",
                  example="noise-gaussian", offers=["noise-gaussian"])
def load_gaussian(arg: str | None, limit: int | None, seed: int) -> ImageSet:
    return _unlabelled("noise-gaussian", gaussian_noise(generated_count(limit, DEFAULT_N), seed))
