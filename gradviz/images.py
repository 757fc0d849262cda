"""Safe decoding of untrusted image files (uploads, folders) into float arrays in [0, 1].

Every failure ends in :class:`~gradviz.errors.ImageError` with a one-line message.
Decisions (documented here because the pages show the notes to users):

- Formats: PNG, JPEG, BMP, TIFF, WebP, GIF only. The type is sniffed from the first bytes
  *before* Pillow sees the file, and Pillow is restricted to those plugins, so EPS/PDF
  (Ghostscript), PSD, ICO, SVG, HTML, ... are refused without being parsed.
- Size: bytes are checked against ``max_bytes`` (default ``settings().max_upload_mb``) and
  ``width × height`` from the header against ``max_pixels`` (default ``settings().max_pixels``)
  before any pixel is decoded. Pillow's own bomb guard (``Image.MAX_IMAGE_PIXELS``, set to
  ``settings().max_pixels`` at import) is turned into an error too, so the effective limit
  is ``min(max_pixels, Image.MAX_IMAGE_PIXELS)``.
- Truncated files are errors: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is kept off.
- Transparency (RGBA, LA, palette + transparency) is composited on **black**, the MNIST
  background: value × alpha.
- 16-bit images are divided by 65535; ``I`` (32-bit int) by 65535 when its values fit in
  [0, 65535], else min-max scaled; ``F`` (float) is kept when already in [0, 1], else
  min-max scaled over its finite values (NaN/inf become 0).
- Grey modes (1, L, LA, I;16, I, F) give C = 1; everything else is converted to RGB, C = 3
  (CMYK, YCbCr, palette, ...).
- Animated GIF / multi-page TIFF: the first frame is used, with a note.
- EXIF orientation is applied (``ImageOps.exif_transpose``), with a note.
- Tiny images (a side < 8 px, down to 1×1) are accepted with a note: they are valid images
  and the model card's resize will upsample them.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from gradviz.config import settings
from gradviz.errors import ImageError

if TYPE_CHECKING:
    from gradviz.models.card import ModelCard

__all__ = ["DecodedImage", "decode_image", "load_uploads", "images_to_tensor", "sniff_format", "ALLOWED_FORMATS"]

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")
SUPPORTED_MSG = "not a supported image (PNG, JPEG, BMP, TIFF, WebP, GIF)"
TINY_SIDE = 8
GREY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}

Image.MAX_IMAGE_PIXELS = settings().max_pixels
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass
class DecodedImage:
    """One decoded image: ``array`` float32 (C, H, W) in [0, 1], C in {1, 3}."""

    name: str
    array: np.ndarray  # (C, H, W) float32 in [0, 1]
    mode: str  # Pillow mode of the file as stored (before conversion)
    size: tuple[int, int]  # (width, height) as stored, Pillow's convention
    format: str  # PNG, JPEG, ...
    note: str = ""  # what was done to it ("animated GIF: first of 12 frames used"; ...)


def sniff_format(data: bytes) -> str | None:
    """The allowed format named by the file's magic bytes, or None."""
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _not_supported(name: str, data: bytes) -> ImageError:
    head = data[:512].lstrip().lower()
    if head.startswith(b"%!ps") or data.startswith(b"\xc5\xd0\xd3\xc6"):
        hint = " — looks like PostScript/EPS, which is never opened"
    elif b"<svg" in head:
        hint = " — looks like SVG (vector graphics)"
    elif head.startswith((b"<!doctype html", b"<html")):
        hint = " — looks like an HTML page"
    elif head.startswith(b"%pdf"):
        hint = " — looks like a PDF"
    else:
        hint = ""
    return ImageError(f"{name}: {SUPPORTED_MSG}{hint}")


def _bomb_error(name: str, width: int, height: int, limit: int) -> ImageError:
    return ImageError(
        f"{name}: {width}×{height} = {width * height:,} pixels exceeds the limit of {limit:,} pixels "
        "(possible decompression bomb; raise GRADVIZ_MAX_PIXELS if the image is genuine)"
    )


def _to_array(img: Image.Image, notes: list[str]) -> np.ndarray:
    """Pillow image (any mode) -> (C, H, W) float32 in [0, 1], alpha composited on black."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        x = np.asarray(img).astype(np.float32)[None] / 65535.0
        notes.append("16-bit image scaled to [0, 1]")
        return x
    if mode == "I":
        x = np.asarray(img).astype(np.float64)
        if x.size and x.min() >= 0 and x.max() <= 65535:
            notes.append("32-bit integer image scaled by 1/65535")
            return (x / 65535.0).astype(np.float32)[None]
        notes.append("32-bit integer image min-max scaled")
        return _minmax(x)[None]
    if mode == "F":
        x = np.asarray(img).astype(np.float64)
        finite = np.isfinite(x)
        if not finite.all():
            notes.append("NaN/inf pixels set to 0")
            x = np.where(finite, x, 0.0)
        if x.size and (x.min() < 0 or x.max() > 1):
            notes.append("32-bit float image min-max scaled")
            return _minmax(x)[None]
        notes.append("32-bit float image kept")
        return x.astype(np.float32)[None]
    if mode == "P":
        has_alpha = "transparency" in img.info or (img.palette is not None and img.palette.mode == "RGBA")
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
    elif mode == "PA":
        img = img.convert("RGBA")
        mode = img.mode
    elif mode in ("1", "L"):
        return (np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[None]
    elif mode in ("LA", "La"):
        la = np.asarray(img.convert("LA"), dtype=np.float32) / 255.0  # (H, W, 2)
        notes.append("transparency composited on black")
        return (la[..., 0] * la[..., 1])[None]
    elif mode == "CMYK":
        img = img.convert("RGB")
        notes.append("CMYK converted to RGB")
        mode = "RGB"
    elif "A" in mode or mode == "RGBa":
        img = img.convert("RGBA")
        mode = "RGBA"
    elif mode != "RGB":
        img = img.convert("RGB")
        mode = "RGB"
    if mode == "RGBA":
        rgba = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 4)
        notes.append("transparency composited on black")
        return np.ascontiguousarray((rgba[..., :3] * rgba[..., 3:4]).transpose(2, 0, 1))
    rgb = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def _apply_exif_orientation(img: Image.Image, notes: list[str]) -> Image.Image:
    """Rotate/flip per the EXIF orientation tag; a malformed EXIF block is ignored with a note."""
    try:
        orientation = img.getexif().get(0x0112, 1)
        if orientation in (None, 1):
            return img
        out = ImageOps.exif_transpose(img)
    except Exception as exc:  # malformed EXIF must not make a readable image unusable
        notes.append(f"EXIF unreadable, orientation ignored ({type(exc).__name__})")
        return img
    notes.append("EXIF orientation applied")
    return out if out is not None else img


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if not np.isfinite(hi - lo) or hi - lo <= 0:
        return np.zeros_like(x, dtype=np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def decode_image(data: bytes, name: str = "upload", max_pixels: int | None = None, max_bytes: int | None = None) -> DecodedImage:
    """Decode untrusted image bytes to a :class:`DecodedImage`; any problem raises ImageError."""
    cfg = settings()
    max_pixels = int(max_pixels or cfg.max_pixels)
    max_bytes = int(max_bytes or cfg.max_upload_mb * 1024 * 1024)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"{name}: expected file bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(f"{name}: {len(data) / 2**20:.1f} MB exceeds the limit of {max_bytes / 2**20:.1f} MB per file")
    fmt = sniff_format(data)
    if fmt is None:
        raise _not_supported(name, data)
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # another library may have switched it on
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Pillow's "Corrupt EXIF data" etc. on odd files
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageError(f"{name}: image has no pixels ({width}×{height})")
            if width * height > max_pixels:
                raise _bomb_error(name, width, height, max_pixels)
            mode, real_fmt = img.mode, (img.format or fmt)
            n_frames = int(getattr(img, "n_frames", 1) or 1)
            if n_frames > 1:
                img.seek(0)
                kind = "animated GIF" if real_fmt == "GIF" else f"multi-frame {real_fmt}"
                notes.append(f"{kind}: first of {n_frames} frames used")
            img.load()
            img = _apply_exif_orientation(img, notes)
            array = _to_array(img, notes)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: {SUPPORTED_MSG} — the {fmt} data could not be read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name}: truncated or corrupt {fmt} file ({_short(exc)})") from None
    except MemoryError:
        raise ImageError(f"{name}: image too large to decode in memory") from None
    except Exception as exc:  # untrusted bytes: Pillow plugins raise assorted types on malformed input
        raise ImageError(f"{name}: could not decode {fmt} file ({type(exc).__name__}: {_short(exc)})") from None
    if array.ndim != 3 or array.shape[0] not in (1, 3) or array.shape[1] == 0 or array.shape[2] == 0:
        raise ImageError(f"{name}: decoded to an unusable array of shape {tuple(array.shape)}")
    array = np.clip(np.nan_to_num(array.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    h, w = array.shape[1:]
    if min(h, w) < TINY_SIDE:
        notes.append(f"tiny image ({w}×{h}): it will be upscaled")
    return DecodedImage(name, array, mode, (int(width), int(height)), real_fmt, "; ".join(notes))


def _short(exc: BaseException, n: int = 120) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= n else text[: n - 1] + "…"


def load_uploads(
    files: list[tuple[str, bytes]],
    max_files: int | None = None,
    max_total_mb: float | None = None,
    max_pixels: int | None = None,
) -> tuple[list[DecodedImage], list[tuple[str, str]]]:
    """Decode many ``(name, bytes)`` files: ``(decoded, errors)``; a bad file never stops the others.

    Limits: ``max_files`` (default ``settings().max_upload_files``), ``max_total_mb``
    (default 4 × ``settings().max_upload_mb``) over the whole batch, and per file
    ``settings().max_upload_mb`` / ``max_pixels``. Files beyond a limit are not decoded;
    each gets an error entry whose message states the limit.
    """
    cfg = settings()
    max_files = int(max_files or cfg.max_upload_files)
    max_total = float(max_total_mb or 4 * cfg.max_upload_mb) * 1024 * 1024
    decoded: list[DecodedImage] = []
    errors: list[tuple[str, str]] = []
    total = 0
    for i, (name, data) in enumerate(files):
        name = str(name)
        if i >= max_files:
            errors.append((name, str(ImageError(f"{name}: not loaded — more than {max_files} files (limit {max_files} per upload)"))))
            continue
        size = len(data) if isinstance(data, (bytes, bytearray, memoryview)) else 0
        if total + size > max_total:
            errors.append((name, str(ImageError(
                f"{name}: not loaded — total upload size would exceed the limit of {max_total / 2**20:.0f} MB"))))
            continue
        total += size
        try:
            decoded.append(decode_image(data, name, max_pixels=max_pixels))
        except ImageError as exc:
            errors.append((name, str(exc)))
    return decoded, errors


def images_to_tensor(decoded: list[DecodedImage], card: "ModelCard") -> torch.Tensor:
    """Stack decoded images of any sizes into (N, C, H, W) at ``card.input_size`` (each resized first)."""
    from gradviz.data import adapt_images

    if not decoded:
        raise ImageError("no images to convert (every file was refused or none was given)")
    out = [adapt_images(torch.from_numpy(np.ascontiguousarray(d.array))[None], card) for d in decoded]  # each (1, C, H, W)
    return torch.cat(out, 0)
