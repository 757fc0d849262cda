"""``corrupt:<name>:<severity>``: MNIST-C / CIFAR-10-C-style corruptions of the held-out digits.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019 (CIFAR-10-C); Mu & Gilmer, "MNIST-C", 2019. Re-implemented as
batched torch ops on (N, C, H, W) in [0, 1] (any size: pixel amounts scale with H/28),
severity 1–5. The random draws (noise, directions, fields) depend only on the seed and the
batch shape, never on the severity, so a higher severity applies the *same* corruption
more strongly: the distance to the clean image grows monotonically with severity.
Geometric corruptions pad with black (the MNIST background); brightness adds to every
channel; ``inverse`` blends towards 1 − x (severity 5 = full inversion). Labels stay the
true digits: these are corrupted in-distribution samples (covariate shift).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from gradviz.data import ImageSet, register_dataset, warps
from gradviz.errors import DatasetError

Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]
CORRUPTIONS: dict[str, Corruption] = {}


def _corruption(name: str):
    def deco(fn: Corruption) -> Corruption:
        CORRUPTIONS[name] = fn
        return fn

    return deco


def list_corruptions() -> list[str]:
    """Names accepted by :func:`corrupt` and ``corrupt:<name>:<severity>``, sorted."""
    return sorted(CORRUPTIONS)


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (1–5) to images (N, C, H, W) in [0, 1]; deterministic for ``seed``."""
    if name not in CORRUPTIONS:
        raise DatasetError(f"unknown corruption {name!r}; valid: {', '.join(list_corruptions())}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= int(severity) <= 5:
        raise DatasetError(f"corruption severity must be an integer 1–5, got {severity!r}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        got = getattr(images, "shape", type(images))
        raise DatasetError(f"corrupt expects images of shape (N, C, H, W), got {got}")
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        out = CORRUPTIONS[name](images.float(), int(severity), gen)
    return out.clamp(0.0, 1.0).contiguous()


def _rel(x: torch.Tensor) -> float:
    """Pixel amounts are tuned for 28-pixel images; scale them with the image height."""
    return x.shape[-2] / 28.0


# ---------------------------------------------------------------- noise
@_corruption("gaussian_noise")
def gaussian_noise(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """x + σ·z, σ = 0.08 … 0.38."""
    sigma = (0.08, 0.12, 0.18, 0.26, 0.38)[s - 1]
    return x + sigma * torch.randn(x.shape, generator=gen)


@_corruption("shot_noise")
def shot_noise(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Poisson photon noise: Poisson(λx)/λ, λ = 60 … 3."""
    lam = (60.0, 25.0, 12.0, 5.0, 3.0)[s - 1]
    return torch.poisson(x * lam, generator=gen) / lam


@_corruption("impulse_noise")
def impulse_noise(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Salt-and-pepper on a fraction 0.03 … 0.27 of the values (nested sets across severities)."""
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[s - 1]
    u = torch.rand(x.shape, generator=gen)
    salt = (torch.rand(x.shape, generator=gen) < 0.5).to(x.dtype)
    return torch.where(u < amount, salt, x)


@_corruption("speckle_noise")
def speckle_noise(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Multiplicative noise x + x·σz, σ = 0.15 … 0.6."""
    sigma = (0.15, 0.25, 0.35, 0.45, 0.6)[s - 1]
    return x + x * sigma * torch.randn(x.shape, generator=gen)


# ---------------------------------------------------------------- blur
@_corruption("gaussian_blur")
def gaussian_blur(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Gaussian blur, σ = 0.5 … 2.0 px (at 28 px)."""
    sigma = (0.5, 0.75, 1.0, 1.5, 2.0)[s - 1] * _rel(x)
    return warps.gaussian_blur(x, sigma)


def _shift(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Translate each image by (dx, dy) pixels (N,), bilinear, black outside."""
    eye = torch.eye(2).expand(x.shape[0], 2, 2)
    return warps.warp_pixels(x, eye, torch.stack([dx, dy], -1))


@_corruption("motion_blur")
def motion_blur(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Average of copies shifted along a line of length 3 … 13 px, one random direction per image."""
    length = (3.0, 5.0, 7.0, 9.0, 13.0)[s - 1] * _rel(x)
    angle = 2 * math.pi * torch.rand(x.shape[0], generator=gen)
    steps = max(3, int(round(length)) | 1)
    out = torch.zeros_like(x)
    for t in torch.linspace(-length / 2, length / 2, steps).tolist():
        out += _shift(x, t * torch.cos(angle), t * torch.sin(angle))
    return out / steps


@_corruption("pixelate")
def pixelate(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Replace b×b blocks by their mean, b = 2, 3, 4, 5, 7 px (at 28 px)."""
    b = max(2, round((2, 3, 4, 5, 7)[s - 1] * _rel(x)))
    h, w = x.shape[-2:]
    blocks = F.avg_pool2d(x, b, stride=b, ceil_mode=True)
    return blocks.repeat_interleave(b, -2).repeat_interleave(b, -1)[..., :h, :w]


# ---------------------------------------------------------------- intensity
@_corruption("contrast")
def contrast(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Pull every pixel towards the image's per-channel mean: (x − m)·c + m, c = 0.6 … 0.1."""
    c = (0.6, 0.45, 0.3, 0.2, 0.1)[s - 1]
    m = x.mean(dim=(-2, -1), keepdim=True)
    return (x - m) * c + m


@_corruption("brightness")
def brightness(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Add 0.1 … 0.5 to every channel (clipped at 1)."""
    return x + (0.1, 0.2, 0.3, 0.4, 0.5)[s - 1]


def _fractal_noise(n: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 1, h, w) smooth cloud-like field in [0, 1]: octaves of upsampled noise, amplitude halving."""
    field = torch.zeros(n, 1, h, w)
    amp, total = 1.0, 0.0
    for cells in (2, 4, 8, 16):
        coarse = torch.rand(n, 1, cells + 1, cells + 1, generator=gen)
        field += amp * F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
        total += amp
        amp *= 0.5
    field = field / total
    lo = field.amin(dim=(-2, -1), keepdim=True)
    hi = field.amax(dim=(-2, -1), keepdim=True)
    return (field - lo) / (hi - lo).clamp_min(1e-6)


@_corruption("fog")
def fog(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """CIFAR-10-C fog: (x + a·f)·max(x)/(max(x) + a), f a fractal cloud field, a = 0.25 … 0.9."""
    a = (0.25, 0.4, 0.55, 0.7, 0.9)[s - 1]
    f = _fractal_noise(x.shape[0], x.shape[-2], x.shape[-1], gen)
    mx = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + a * f) * mx / (mx + a)


@_corruption("inverse")
def inverse(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Blend towards the negative: (1 − α)x + α(1 − x), α = 0.6 … 1.0 (5 = full inversion)."""
    alpha = (0.6, 0.7, 0.8, 0.9, 1.0)[s - 1]
    return (1 - alpha) * x + alpha * (1 - x)


# ---------------------------------------------------------------- geometry
def _signs(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1


@_corruption("rotate")
def rotate(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Rotate by ±8 … ±45 degrees (random sign per image)."""
    deg = (8.0, 16.0, 24.0, 32.0, 45.0)[s - 1]
    a = torch.deg2rad(deg * _signs(x.shape[0], gen))
    c, sn = torch.cos(a), torch.sin(a)
    mat = torch.stack([torch.stack([c, -sn], -1), torch.stack([sn, c], -1)], -2)
    return warps.warp_pixels(x, mat)


@_corruption("shear")
def shear(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Horizontal shear by ±0.1 … ±0.6 (random sign per image)."""
    k = (0.1, 0.2, 0.3, 0.45, 0.6)[s - 1] * _signs(x.shape[0], gen)
    one, zero = torch.ones_like(k), torch.zeros_like(k)
    mat = torch.stack([torch.stack([one, k], -1), torch.stack([zero, one], -1)], -2)
    return warps.warp_pixels(x, mat)


@_corruption("scale")
def scale(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Shrink about the centre to 0.9 … 0.5 of the size (black border)."""
    f = (0.9, 0.8, 0.7, 0.6, 0.5)[s - 1]
    mat = torch.eye(2).expand(x.shape[0], 2, 2) / f
    return warps.warp_pixels(x, mat)


@_corruption("translate")
def translate(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Shift by 1.5 … 8 px (at 28 px) in a random direction per image."""
    dist = (1.5, 3.0, 4.5, 6.0, 8.0)[s - 1] * _rel(x)
    angle = 2 * math.pi * torch.rand(x.shape[0], generator=gen)
    return _shift(x, dist * torch.cos(angle), dist * torch.sin(angle))


@_corruption("elastic")
def elastic(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Elastic deformation: a smooth random displacement field with RMS 0.5 … 2.4 px (at 28 px)."""
    alpha = (0.5, 0.9, 1.3, 1.8, 2.4)[s - 1] * _rel(x)
    n, _, h, w = x.shape
    coarse = torch.randn(n, 2, max(2, h // 5), max(2, w // 5), generator=gen)
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)  # (N, 2, H, W)
    field = field / field.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-6)
    disp = alpha * field.permute(0, 2, 3, 1) * torch.tensor([2.0 / w, 2.0 / h])  # px -> normalised
    base = F.affine_grid(torch.eye(2, 3).expand(n, 2, 3), list(x.shape), align_corners=False)
    return warps.sample(x, base + disp)


def parse_corruption(arg: str | None) -> tuple[str, int]:
    """``"fog:3"`` -> ``("fog", 3)``; anything else raises DatasetError listing the valid names."""
    names = ", ".join(list_corruptions())
    if not arg:
        raise DatasetError(f"corrupt needs a corruption and a severity, e.g. corrupt:fog:3; corruptions: {names}")
    name, _, sev = arg.partition(":")
    if name not in CORRUPTIONS:
        raise DatasetError(f"unknown corruption {name!r}; valid: {names}")
    if not sev.strip().isdigit() or not 1 <= int(sev) <= 5:
        raise DatasetError(f"corruption severity must be 1–5, e.g. corrupt:{name}:3, got {sev!r}")
    return name, int(sev)


OFFERED_SEVERITIES = (3, 5)  # the pickers list every corruption at these; any severity 1–5 can be typed


@register_dataset("corrupt", "Held-out MNIST digits with a corruption at severity 1–5 (MNIST-C / CIFAR-10-C style), "
                  "true labels",
                  example="corrupt:fog:3", check=parse_corruption,
                  offers=lambda: [f"corrupt:{c}:{s}" for c in list_corruptions() for s in OFFERED_SEVERITIES])
def load_corrupted(arg: str | None, limit: int | None, seed: int) -> ImageSet:
    from gradviz.data.mnist import mnist_split

    name, severity = parse_corruption(arg)
    images, labels = mnist_split("test")
    if limit is not None:
        images, labels = images[: int(limit)], labels[: int(limit)]
    return ImageSet(f"corrupt:{name}:{severity}", corrupt(images, name, severity, seed), labels.copy(),
                    class_names=[str(i) for i in range(10)])
