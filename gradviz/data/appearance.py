"""Does an image look like the ID set? Its polarity and mean intensity against the ID set's.

A photo of a dark digit on light paper, given to a model trained on MNIST (light strokes on a
black background), is far outside anything the model saw: the bundled CNN calls such a "2"
an "8" with p = 1.000. Two numbers catch that before anyone reads the prediction:

- **polarity**: the background level, the median of the image's border (a ring of H/14 pixels);
  a border above :data:`LIGHT_BACKGROUND` is a light background. It counts when at least
  :data:`POLARITY_SHARE` of the ID images agree with each other and the image disagrees with them;
- **mean intensity**: outside the ID images' 1st–99th percentile [lo, hi] by more than the larger of
  :data:`MEAN_MARGIN` and hi − lo (MNIST: 0.05–0.23, so above 0.41: a bold letter stays inside, a
  photo of paper, 0.77, or uniform noise, 0.5, does not).

Images are (N, C, H, W) in [0, 1] at the model's input (grey = channel mean). The remedy the
dashboard offers is the Playground camera's clean-up (:func:`gradviz.playground.preprocess.photo_to_input`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["IdLook", "background_level", "describe_id", "unlike", "unlike_id", "LIGHT_BACKGROUND", "POLARITY_SHARE",
           "MEAN_MARGIN"]

LIGHT_BACKGROUND = 0.5  # border median above this: a light background
POLARITY_SHARE = 0.9  # the ID set has a polarity when this share of its images agree
MEAN_MARGIN = 0.1  # least distance outside the ID set's 1st–99th percentile of image means that counts
REFERENCE_IMAGES = 500  # ID images the description is computed from (plenty for a share and two percentiles)
POLARITIES = ("light on a dark background", "dark on a light background")  # index: has a light background


def _grey(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W); got {tuple(images.shape)}")
    return images.float().mean(1)  # (N, H, W)


def background_level(images: torch.Tensor) -> np.ndarray:
    """Per image, the median of its border ring (H/14 pixels wide, at least 1): its background's level."""
    g = _grey(images)
    h, w = g.shape[-2:]
    r = max(1, min(h, w) // 14)
    ring = torch.ones(h, w, dtype=torch.bool)
    ring[r:h - r, r:w - r] = False
    return g[:, ring].median(dim=1).values.numpy().astype(np.float64)


@dataclass(frozen=True)
class IdLook:
    """What the ID set looks like: its share of light-background images and its 1st–99th percentile of image means."""

    name: str
    light_share: float
    mean_lo: float
    mean_hi: float

    @property
    def polarity(self) -> str | None:
        """The ID set's polarity (one of :data:`POLARITIES`) when POLARITY_SHARE of its images agree, else None."""
        if max(self.light_share, 1 - self.light_share) < POLARITY_SHARE:
            return None
        return POLARITIES[self.light_share >= 0.5]


def describe_id(id_images: torch.Tensor, name: str = "the ID set") -> IdLook:
    """:class:`IdLook` of ``id_images`` (N, C, H, W), from at most REFERENCE_IMAGES of them, evenly spaced."""
    n = int(id_images.shape[0])
    if n == 0:
        raise ValueError("the ID set holds no images")
    if n > REFERENCE_IMAGES:  # evenly spaced: a set sorted by class keeps every class
        id_images = id_images[torch.linspace(0, n - 1, REFERENCE_IMAGES).round().long()]
    light = float((background_level(id_images) > LIGHT_BACKGROUND).mean())
    lo, hi = np.percentile(_grey(id_images).mean(dim=(1, 2)).numpy(), [1, 99])
    return IdLook(name, light, float(lo), float(hi))


def unlike(images: torch.Tensor, look: IdLook) -> list[str]:
    """Per image, why it looks unlike the ID set ``look`` describes (polarity, mean intensity), or "" when it
    does not."""
    light = background_level(images) > LIGHT_BACKGROUND
    means = _grey(images).mean(dim=(1, 2)).numpy()
    lo, hi, polarity = look.mean_lo, look.mean_hi, look.polarity
    margin = max(MEAN_MARGIN, hi - lo)
    agree = max(look.light_share, 1 - look.light_share)  # the share of ID images with the majority's polarity
    out = []
    for is_light, mean in zip(light, means):
        reasons = []
        if polarity is not None and POLARITIES[bool(is_light)] != polarity:
            reasons.append(f"it is {POLARITIES[bool(is_light)]}, while {100 * agree:.0f} % of {look.name}'s images are "
                           f"{polarity}")
        if mean < lo - margin or mean > hi + margin:
            reasons.append(f"its mean intensity {mean:.2f} is far from {look.name}'s ({lo:.2f}–{hi:.2f} for 98 % "
                           "of its images)")
        out.append("; ".join(reasons))
    return out


def unlike_id(images: torch.Tensor, id_images: torch.Tensor, id_name: str = "the ID set") -> list[str]:
    """:func:`unlike` against ``id_images`` directly."""
    return unlike(images, describe_id(id_images, id_name))
