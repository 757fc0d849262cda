"""``letters``: A–Z and a–z rendered from the TTF fonts that ship with matplotlib, MNIST-style.

Near-OOD for a digit classifier (EMNIST-letters-like, but offline): white on black, 28×28.
Each glyph is rendered once per font (DejaVu Sans/Serif/Mono with their bold/italic faces,
STIX General, Computer Modern), cropped, scaled so its longer side fills a 20×20 box
(as MNIST did) and put on a canvas at twice the final resolution. Per image, batched in
torch: stroke thickening (dilation by 0 or 1 px at 2×), scale 0.75–1.05, rotation ±15°,
placement with the centre of mass at the image centre plus ±2 px jitter (MNIST centres by
centre of mass), 2× anti-aliased downsampling, a Gaussian blur with σ ∈ {0, 0.3, 0.5, 0.7} px and
rescaling to peak 1. Labels are -1 (OOD); :func:`render_letters` also returns the letters.
"""

from __future__ import annotations

import importlib.util
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from gradviz.data import MAX_GENERATED, ImageSet, generated_count, register_dataset, warps
from gradviz.errors import DatasetError

DEFAULT_N = 1000
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf",
)
SCALE = 2  # glyphs are transformed at 2× and average-pooled down (anti-aliasing)
SIDE = 28
BOX = 20  # longer side of the glyph in the 28×28 image, as in MNIST
RENDER_PT = 48


def font_dir() -> Path:
    """matplotlib's bundled TrueType folder (found without importing matplotlib, which is slow)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf"
        if path.is_dir():
            return path
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=1)
def glyph_bank() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every (font, letter) once: images (2, G, 1, 56, 56) in [0, 1] (plain, thickened), centres of mass (G, 2)
    as (x, y) px, letters."""
    fonts = [font_dir() / f for f in FONT_FILES if (font_dir() / f).is_file()]
    if not fonts:
        raise DatasetError(f"no matplotlib fonts found in {font_dir()}; cannot render the letters set")
    side, box = SIDE * SCALE, BOX * SCALE
    canvas = RENDER_PT * 2
    images, chars = [], []
    for path in fonts:
        font = ImageFont.truetype(str(path), RENDER_PT)
        for ch in LETTERS:
            img = Image.new("L", (canvas, canvas))
            ImageDraw.Draw(img).text((canvas // 2, canvas // 2), ch, font=font, fill=255, anchor="mm")
            bbox = img.getbbox()
            if bbox is None:  # font without this glyph
                continue
            glyph = img.crop(bbox)
            w, h = glyph.size
            f = box / max(w, h)
            glyph = glyph.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BILINEAR,
                                 reducing_gap=2.0)
            out = Image.new("L", (side, side))
            out.paste(glyph, ((side - glyph.size[0]) // 2, (side - glyph.size[1]) // 2))
            images.append(np.frombuffer(out.tobytes(), dtype=np.uint8))
            chars.append(ch)
    thin = torch.from_numpy(np.stack(images)).float().div_(255.0).view(-1, 1, side, side)  # (G, 1, 56, 56)
    grid = torch.arange(side, dtype=torch.float32)
    mass = thin.sum((1, 2, 3))
    # (x, y)
    coms = torch.stack([(thin.sum(2)[:, 0] * grid).sum(1) / mass, (thin.sum(3)[:, 0] * grid).sum(1) / mass], 1)
    thick = F.max_pool2d(thin, 3, stride=1, padding=1)  # strokes dilated by 1 px at 2×
    return torch.stack([thin, thick]), coms, chars


BLUR_SIGMAS = (0.0, 0.3, 0.5, 0.7)  # px; a few levels so each is one plain convolution


_CHUNK = 2048  # images transformed at once: the 2× canvases cost ~50 KB an image, so memory stays ~100 MB


def _draw(bank, coms, idx, stroke, scale, angle, shift, level) -> torch.Tensor:
    """One chunk of letter images (n, 1, 28, 28) from its drawn parameters."""
    x = bank[stroke, idx]  # (n, 1, 56, 56)
    side = SIDE * SCALE
    com = (coms[idx] + 0.5) * (2.0 / side) - 1.0  # (n, 2) glyph centre of mass in normalised coords
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (n, 2, 2) output->input
    offset = com - (rot @ shift[..., None])[..., 0]
    x = warps.warp(x, torch.cat([rot, offset[..., None]], -1))  # theta (n, 2, 3)
    x = F.avg_pool2d(x, SCALE)  # (n, 1, 28, 28)
    for i, sigma in enumerate(BLUR_SIGMAS):
        m = level == i
        if sigma > 0 and m.any():
            x[m] = warps.gaussian_blur(x[m], sigma)
    x = x / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return x.clamp_(0.0, 1.0)


@lru_cache(maxsize=8)
def _render_cached(n: int, seed: int) -> tuple[torch.Tensor, tuple[str, ...]]:
    bank, coms, chars = glyph_bank()
    gen = torch.Generator().manual_seed(int(seed))
    # Every random draw first (a few numbers an image), then the images chunk by chunk.
    idx = torch.randint(len(chars), (n,), generator=gen)
    stroke = torch.randint(0, 2, (n,), generator=gen)
    scale = 0.75 + 0.30 * torch.rand(n, generator=gen)
    angle = math.radians(15.0) * (2 * torch.rand(n, generator=gen) - 1)
    shift = (2 * torch.rand(n, 2, generator=gen) - 1) * (2.0 * 2 / SIDE)  # ±2 px in normalised coords
    level = torch.randint(len(BLUR_SIGMAS), (n,), generator=gen)
    out = torch.empty(n, 1, SIDE, SIDE)
    for start in range(0, n, _CHUNK):
        part = slice(start, start + _CHUNK)
        out[part] = _draw(bank, coms, idx[part], stroke[part], scale[part], angle[part], shift[part], level[part])
    return out, tuple(chars[i] for i in idx.tolist())


def render_letters(n: int = DEFAULT_N, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """``n`` letter images (n, 1, 28, 28) in [0, 1] and the letter drawn in each; deterministic for ``seed``.

    At most :data:`gradviz.data.MAX_GENERATED` images (else :class:`DatasetError`, before anything is drawn)."""
    if int(n) <= 0:
        raise DatasetError(f"number of letters must be positive, got {n}")
    if int(n) > MAX_GENERATED:
        raise DatasetError(f"the letters set renders at most {MAX_GENERATED:,} images, asked for {int(n):,}")
    images, chars = _render_cached(int(n), int(seed))
    return images.clone(), list(chars)


@register_dataset("letters", "Letters A–Z, a–z rendered from matplotlib's fonts, MNIST-style 28×28 "
                  f"(offline, near-OOD; {DEFAULT_N:,} or the limit, at most {MAX_GENERATED:,})",
                  example="letters", offers=["letters"])
def load_letters(arg: str | None, limit: int | None, seed: int) -> ImageSet:
    images, _ = render_letters(generated_count(limit, DEFAULT_N), seed)
    return ImageSet("letters", images, np.full(len(images), -1, dtype=np.int64))
