"""A drawing or a photo -> the model's input, the way the MNIST digits were made.

LeCun, Cortes & Burges, "The MNIST database of handwritten digits" (1998): "The original black
and white images from NIST were size normalized to fit in a 20x20 pixel box while preserving
their aspect ratio. The resulting images contain grey levels as a result of the anti-aliasing
technique used by the normalization algorithm. The images were centered in a 28x28 image by
computing the center of mass of the pixels, and translating the image so as to position this
point at the center of the 28x28 field."

So, for a card of input size (C, H, W): ink = white on black in [0, 1]; crop the ink's bounding
box; scale it (anti-aliased, aspect kept) so its longer side is 20/28 of H; paste it so that its
centre of mass lands on (H/2, W/2) — measured on the bundled MNIST test digits, their centre of
mass sits at (14.0, 14.0) in pixel-index coordinates —; repeat the grey plane over C channels.

Photos (``st.camera_input``) are cleaned first (:func:`photo_to_ink`): dark ink on light paper
is inverted, the paper's level subtracted, faint shading dropped, and thin pen strokes thickened
until the ink covers a fifth of its bounding box (MNIST digits: 21–53 %, median 34 %).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter

from gradviz.errors import ImageError

__all__ = ["ink_from_array", "photo_to_ink", "mnist_style", "to_model_input", "canvas_to_input", "photo_to_input",
           "photo_fit", "frame_to_input", "BOX_FRACTION", "INK_LEVEL"]

BOX_FRACTION = 20 / 28  # the longer side of the digit's box, as a fraction of the input side
INK_LEVEL = 0.05  # values above this count as ink for the bounding box
MIN_INK_COVER = 0.2  # thin photo strokes are thickened until ink covers this fraction of their box
PHOTO_FLOOR = 0.3  # photo shading below this (after normalisation) is dropped as background
PHOTO_SIDE = 400  # photos are shrunk (area-averaged) to at most this many pixels a side first
PHOTO_OVERSAMPLE = 4  # uploads to clean up are decoded at this many times the card's side (at most PHOTO_SIDE)


def ink_from_array(array: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) float in [0, 1] -> (H, W) grey float32 (channel mean)."""
    a = np.asarray(array, dtype=np.float32)
    if a.ndim == 3:
        a = a.mean(axis=0)
    if a.ndim != 2:
        raise ImageError(f"an image must be (H, W) or (C, H, W); got shape {a.shape}")
    return np.clip(np.nan_to_num(a), 0.0, 1.0)


def photo_to_ink(grey: np.ndarray) -> np.ndarray:
    """A photo's grey plane (H, W) in [0, 1] -> white ink on black, background removed.

    The paper is the border's median. Where the darkest pixels lie further below it than the
    brightest above it, the ink is darker than the paper and the photo is inverted. Values are
    then rescaled so the paper is 0 and the 99.5th percentile 1; shading under
    :data:`PHOTO_FLOOR` becomes 0.
    """
    g = _shrink(ink_from_array(grey), PHOTO_SIDE)
    paper = float(np.median(np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])))
    low, high = np.percentile(g, [0.5, 99.5])
    if paper - low > high - paper:  # dark pen on light paper
        g, paper = 1.0 - g, 1.0 - paper
    top = float(np.percentile(g, 99.5))
    if top - paper < 0.1:  # nothing stands out of the background
        return np.zeros_like(g)
    ink = np.clip((g - paper) / (top - paper), 0.0, 1.0)
    ink = np.where(ink < PHOTO_FLOOR, 0.0, (ink - PHOTO_FLOOR) / (1.0 - PHOTO_FLOOR)).astype(np.float32)
    return _thicken(ink)


def _shrink(plane: np.ndarray, side: int) -> np.ndarray:
    """Area-average ``plane`` down so its longer side is at most ``side`` (a 12-megapixel photo would
    make every later step slow; the digit ends up 20 px tall anyway)."""
    h, w = plane.shape
    if max(h, w) <= side:
        return plane
    f = side / max(h, w)
    img = Image.fromarray(plane.astype(np.float32), mode="F").resize((max(1, round(w * f)), max(1, round(h * f))),
                                                                    Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32)


def _bbox(ink: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the pixels above INK_LEVEL (bottom/right exclusive); None if blank."""
    peak = float(ink.max()) if ink.size else 0.0
    if peak <= INK_LEVEL:
        return None
    mask = ink > INK_LEVEL
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _thicken(ink: np.ndarray, max_passes: int = 12) -> np.ndarray:
    """Grow strokes with a 3×3 max filter until they cover MIN_INK_COVER of their bounding box."""
    img = Image.fromarray(ink.astype(np.float32), mode="F")
    for _ in range(max_passes):
        a = np.asarray(img)
        box = _bbox(a)
        if box is None:
            return a
        t, b, l, r = box
        if (a[t:b, l:r] > 0.5).mean() >= MIN_INK_COVER:
            break
        img = img.filter(ImageFilter.MaxFilter(3))
    return np.asarray(img, dtype=np.float32)


def mnist_style(ink: np.ndarray, size: tuple[int, int] = (28, 28)) -> np.ndarray | None:
    """White-on-black ink (H, W) -> (h, w) = ``size`` MNIST-style input; None for a blank image.

    Box: the ink's bounding box, scaled (Lanczos, anti-aliased) so its longer side is
    ``BOX_FRACTION`` of ``h``, aspect kept; placed so its centre of mass is at (h/2, w/2).
    """
    ink = ink_from_array(ink)
    box = _bbox(ink)
    if box is None:
        return None
    t, b, l, r = box
    crop = ink[t:b, l:r] / max(float(ink.max()), 1e-6)
    h, w = int(size[0]), int(size[1])
    side = max(1, round(BOX_FRACTION * h))
    scale = side / max(crop.shape)
    nh, nw = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    small = Image.fromarray(crop.astype(np.float32), mode="F").resize((nw, nh), Image.Resampling.LANCZOS)
    patch = np.clip(np.asarray(small, dtype=np.float32), 0.0, 1.0)
    mass = float(patch.sum())
    if mass <= 0:
        return None
    yy, xx = np.mgrid[:nh, :nw]
    cy, cx = float((yy * patch).sum() / mass), float((xx * patch).sum() / mass)
    top, left = int(round(h / 2 - cy)), int(round(w / 2 - cx))
    out = np.zeros((h, w), dtype=np.float32)
    # paste with clipping: a lopsided shape may push part of its box past the border
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + nh, h), min(left + nw, w)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = patch[y0 - top:y1 - top, x0 - left:x1 - left]
    return out


def to_model_input(plane: np.ndarray, card) -> torch.Tensor:
    """(H, W) grey plane in [0, 1] -> (1, C, H, W) float tensor for ``card`` (grey repeated over C)."""
    c, h, w = (int(v) for v in card.input_size)
    a = np.asarray(plane, dtype=np.float32)
    if a.shape != (h, w):
        raise ImageError(f"a {a.shape} plane does not fit the model's {h}×{w} input")
    return torch.from_numpy(a).clamp(0, 1)[None, None].expand(1, c, h, w).contiguous()


def canvas_to_input(array: np.ndarray, card) -> torch.Tensor | None:
    """A decoded canvas (C, H, W) in [0, 1] (white strokes on black) -> (1, C, H, W) model input; None if blank."""
    plane = mnist_style(ink_from_array(array), tuple(card.input_size[1:]))
    return None if plane is None else to_model_input(plane, card)


def photo_to_input(array: np.ndarray, card) -> torch.Tensor | None:
    """A decoded photo (C, H, W) in [0, 1] -> (1, C, H, W) model input; None if no ink stands out."""
    plane = mnist_style(photo_to_ink(ink_from_array(array)), tuple(card.input_size[1:]))
    return None if plane is None else to_model_input(plane, card)


def frame_to_input(kind: str, data: bytes, card) -> tuple[torch.Tensor | None, str]:
    """A drawing (``kind="canvas"``) or camera picture's bytes -> ((1, C, H, W) model input or None if no
    ink, the decoder's note). Decoded already reduced to the working size (:data:`PHOTO_SIDE`, or the
    model's side if larger): a 4000×4000 frame never exists at full resolution in memory."""
    from gradviz.data.images import decode_image, fit_within

    side = max(PHOTO_SIDE, *(int(v) for v in card.input_size[1:]))
    decoded = decode_image(data, "drawing" if kind == "canvas" else "camera picture", fit=fit_within(data, side))
    convert = canvas_to_input if kind == "canvas" else photo_to_input
    return convert(decoded.array, card), decoded.note


def photo_fit(card) -> tuple[int, int]:
    """(H, W) to decode an upload at before :func:`photo_to_input`: ``PHOTO_OVERSAMPLE`` × the card's input
    (at most ``PHOTO_SIDE`` a side, never below the card's): the clean-up crops the digit's box out of the
    photo, so it needs more pixels than the model's input, but not a 12-megapixel array."""
    h, w = (int(v) for v in card.input_size[1:])
    f = max(1.0, min(float(PHOTO_OVERSAMPLE), PHOTO_SIDE / max(h, w)))
    return max(h, round(h * f)), max(w, round(w * f))
