"""Batched image operations the synthetic sets share: Gaussian blur and per-image warps.

Blur is torchvision's (``transforms.v2.functional.gaussian_blur``: separable Gaussian weights at
pixel spacing, reflect padding). torchvision's affine, rotate and elastic transforms take one set
of parameters per call, while the corruptions and the letters renderer draw different parameters
for every image of a batch; :func:`warp` therefore takes one matrix per image and samples the
whole batch in one call (``affine_grid`` + ``grid_sample``: bilinear, black outside — the MNIST
background). Images are (N, C, H, W) floats in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import gaussian_blur as _tv_gaussian_blur

__all__ = ["gaussian_blur", "sample", "warp", "warp_pixels"]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with one σ (pixels) for the whole batch, kernel radius ⌈3σ⌉; σ ≤ 0 returns ``x``."""
    if sigma <= 0:
        return x
    size = 2 * max(1, math.ceil(3 * sigma)) + 1
    return _tv_gaussian_blur(x, [size, size], [float(sigma), float(sigma)])


def sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``x`` read at ``grid`` (N, H', W', 2) in normalised [-1, 1] coordinates: bilinear, zeros outside."""
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp(x: torch.Tensor, theta: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Each image warped by its own affine map ``theta`` (N, 2, 3), output → input in normalised coordinates
    (as :func:`torch.nn.functional.affine_grid`); output ``size`` (H, W), the input's by default."""
    n, c = x.shape[:2]
    h, w = size or tuple(x.shape[-2:])
    return sample(x, F.affine_grid(theta, [n, c, h, w], align_corners=False))


def warp_pixels(x: torch.Tensor, mat: torch.Tensor, shift_px: torch.Tensor | None = None) -> torch.Tensor:
    """Warp by pixel-space matrices ``mat`` (N, 2, 2) about the image centre, then shift by ``shift_px`` (N, 2) px.

    ``mat`` maps output pixel offsets to input offsets (the inverse map grid sampling needs).
    """
    n, _, h, w = x.shape
    d = torch.tensor([w / 2.0, h / 2.0])
    theta_lin = mat / d.view(1, 2, 1) * d.view(1, 1, 2)  # D⁻¹ A D: the same map in normalised coordinates
    trans = torch.zeros(n, 2) if shift_px is None else -(mat @ shift_px[..., None])[..., 0] / d
    return warp(x, torch.cat([theta_lin, trans[..., None]], -1))
