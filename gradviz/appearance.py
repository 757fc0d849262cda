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

import numpy as np
import torch

__all__ = ["background_level", "unlike_id", "LIGHT_BACKGROUND", "POLARITY_SHARE", "MEAN_MARGIN"]

LIGHT_BACKGROUND = 0.5  # border median above this: a light background
POLARITY_SHARE = 0.9  # the ID set has a polarity when this share of its images agree
MEAN_MARGIN = 0.1  # least distance outside the ID set's 1st–99th percentile of image means that counts


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


def unlike_id(images: torch.Tensor, id_images: torch.Tensor, id_name: str = "the ID set") -> list[str]:
    """Per image, why it looks unlike ``id_images`` (the polarity, the mean intensity), or "" when it does not."""
    light = background_level(images) > LIGHT_BACKGROUND
    means = _grey(images).mean(dim=(1, 2)).numpy()
    id_light = float((background_level(id_images) > LIGHT_BACKGROUND).mean())
    lo, hi = np.percentile(_grey(id_images).mean(dim=(1, 2)).numpy(), [1, 99])
    margin = max(MEAN_MARGIN, float(hi - lo))
    kinds = ("light on a dark background", "dark on a light background")  # by light background: False, True
    agree = max(id_light, 1 - id_light)  # the share of ID images with the majority's polarity
    id_polarity = kinds[id_light >= 0.5] if agree >= POLARITY_SHARE else None
    out = []
    for is_light, mean in zip(light, means):
        reasons = []
        if id_polarity is not None and kinds[bool(is_light)] != id_polarity:
            reasons.append(f"it is {kinds[bool(is_light)]}, while {100 * agree:.0f} % of {id_name}'s images are {id_polarity}")
        if mean < lo - margin or mean > hi + margin:
            reasons.append(f"its mean intensity {mean:.2f} is far from {id_name}'s ({lo:.2f}–{hi:.2f} for 98 % of its images)")
        out.append("; ".join(reasons))
    return out
