"""Transformation paths: walk one image step by step away from the data, as one batch.

Each path maps a severity s in [0, 1] (step 0 = the image itself) to a transformed image:

==============  =====================================  ==========================================
path            image at severity s                    end point
==============  =====================================  ==========================================
``rotate``      rotated by 180·s degrees                upside down
``blur``        Gaussian blur, σ = 3·s px (at 28 px)    a smudge
``noise``       x + σz, σ = s, z ~ N(0, 1) fixed        mostly noise
``contrast``    (x − m)(1 − s) + m, m the image mean    flat grey
``invert``      (1 − s)x + s(1 − x)                     the negative
``to_noise``    (1 − s)x + s·u, u ~ U(0, 1) fixed       uniform noise
``to_image``    (1 − s)x + s·t                          another image t
==============  =====================================  ==========================================

The formulas are those of the corruptions in :mod:`gradviz.data.corruptions` (``gaussian_noise``,
``contrast``, ``inverse``), made continuous; rotation and blur use
``torchvision.transforms.v2.functional``. The random fields (z, u) depend only on the seed and
the image shape, never on s, so a later step applies the *same* change more strongly: the
distance to the start grows monotonically along every path but rotation and blur (whose
parameter grows monotonically). Everything is clipped to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from gradviz.errors import GradvizError

__all__ = ["PathKind", "PATHS", "Walk", "walk", "MIN_STEPS", "MAX_STEPS"]

MIN_STEPS, MAX_STEPS = 2, 100


@dataclass(frozen=True)
class PathKind:
    """A path's name, how to show its parameter, and what a student should look for along it."""

    name: str
    title: str
    unit: str  # the parameter's unit ("°", "px", "" for a fraction)
    end: float  # the parameter at severity 1
    axis: str  # the path plot's x-axis title
    needs_target: bool = False
    hint: str = ""


PATHS: dict[str, PathKind] = {p.name: p for p in [
    PathKind("rotate", "Rotate 0–180°", "°", 180.0, "rotation angle (°)",
             hint="Where does the prediction flip, and which scores rise before it does?"),
    PathKind("blur", "Blur (σ 0–3 px)", "px", 3.0, "blur σ (px at 28 px)",
             hint="A heavy blur is a smooth blob: does the model grow unsure, or confidently call it a digit?"),
    PathKind("noise", "Add Gaussian noise (σ 0–1)", "σ", 1.0, "noise σ",
             hint="Which scores rise with the noise, and which fall because the model grows *more* confident?"),
    PathKind("contrast", "Contrast down to flat grey", "", 1.0, "contrast removed",
             hint="The ink fades into grey: which scores notice that the evidence is gone?"),
    PathKind("invert", "Invert (black on white)", "", 1.0, "inversion",
             hint="The same shape in negative: no training digit looks like it. Who notices?"),
    PathKind("to_noise", "Morph into uniform noise", "", 1.0, "share of noise",
             hint="Halfway, the digit is still plain to a person. When do the scores split?"),
    PathKind("to_image", "Morph into another image", "", 1.0, "share of the other image", needs_target=True,
             hint="Between two digits the prediction flips: are the in-between images uncertain?"),
]}


@dataclass
class Walk:
    """One path as a batch: ``images[k]`` is step k (step 0 = the start image)."""

    kind: str
    images: torch.Tensor  # (S, C, H, W) in [0, 1]
    severity: np.ndarray  # (S,) from 0 to 1, increasing
    values: np.ndarray  # (S,) the path's parameter (degrees, px, σ, fraction)

    @property
    def unit(self) -> str:
        return PATHS[self.kind].unit

    def labels(self) -> list[str]:
        """One short label per step, e.g. '90°' or '45 %'."""
        unit = self.unit
        if unit == "":
            return [f"{100 * v:.0f} %" for v in self.values]
        if unit == "°":
            return [f"{v:.0f}°" for v in self.values]
        return [f"{v:.2f} {unit}" for v in self.values]


def _as_batch(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[0] != 1):
        raise GradvizError(f"{what} must be one image (C, H, W) or (1, C, H, W); got {getattr(x, 'shape', type(x))}")
    return x.detach().float().cpu().reshape(1, *x.shape[-3:]).clamp(0, 1)


def walk(x: torch.Tensor, kind: str, steps: int = 30, target: torch.Tensor | None = None, seed: int = 0) -> Walk:
    """The path ``kind`` (see :data:`PATHS`) from image ``x`` in ``steps`` steps, as one (steps, C, H, W) batch."""
    if kind not in PATHS:
        raise GradvizError(f"unknown path {kind!r}; valid: {', '.join(PATHS)}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not MIN_STEPS <= int(steps) <= MAX_STEPS:
        raise GradvizError(f"steps must be an integer {MIN_STEPS}–{MAX_STEPS}, got {steps!r}")
    x = _as_batch(x, "the start image")
    n = int(steps)
    s = torch.linspace(0.0, 1.0, n)
    a = s.view(n, 1, 1, 1)
    gen = torch.Generator().manual_seed(int(seed))
    px = x.shape[-2] / 28.0  # pixel amounts are tuned for 28-pixel images
    with torch.no_grad():
        if kind == "rotate":
            out = torch.cat([TF.rotate(x, float(180.0 * v), interpolation=InterpolationMode.BILINEAR, fill=0.0)
                             for v in s.tolist()])
        elif kind == "blur":
            out = torch.cat([_blur(x, 3.0 * v * px) for v in s.tolist()])
        elif kind == "noise":
            out = x + a * torch.randn(x.shape, generator=gen)
        elif kind == "contrast":
            m = x.mean(dim=(-2, -1), keepdim=True)
            out = (x - m) * (1 - a) + m
        elif kind == "invert":
            out = (1 - a) * x + a * (1 - x)
        elif kind == "to_noise":
            out = (1 - a) * x + a * torch.rand(x.shape, generator=gen)
        else:  # to_image
            if target is None:
                raise GradvizError("the morph needs a target image; pick one")
            t = _as_batch(target, "the target image")
            if t.shape != x.shape:
                raise GradvizError(f"the target image is {tuple(t.shape[1:])}, the start image {tuple(x.shape[1:])}")
            out = (1 - a) * x + a * t
    values = (s * PATHS[kind].end).numpy().astype(np.float64)
    return Walk(kind, out.clamp(0, 1).contiguous(), s.numpy().astype(np.float64), values)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 1e-6:
        return x.clone()
    k = 2 * max(1, math.ceil(3 * sigma)) + 1
    return TF.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])
