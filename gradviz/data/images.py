"""Safe decoding of untrusted image files (uploads, folders) into float arrays in [0, 1].

Every failure ends in :class:`~gradviz.errors.ImageError` with a one-line message.
Decisions (documented here because the pages show the notes to users):

- Formats: PNG, JPEG, BMP, TIFF, WebP, GIF only. The type is sniffed from the first bytes
  *before* Pillow sees the file, and Pillow is restricted to those plugins, so EPS/PDF
  (Ghostscript), PSD, ICO, SVG, HTML, ... are refused without being parsed.
- Size: bytes are checked against ``max_bytes`` (default ``settings().max_upload_mb``) and
  ``width × height`` from the header against ``max_pixels`` (default ``settings().max_pixels``)
  before any pixel is decoded; the message quotes that limit and the ``GRADVIZ_MAX_PIXELS``
  hint. Pillow's own bomb guard stays on as a backstop (its error is reworded the same way).
- Memory: with ``fit=(H, W)`` an image larger than that is reduced *while it is decoded* —
  JPEG through Pillow's ``draft`` (DCT scaling), every format through one antialiased Pillow
  resize straight to (H, W) — so a float32 array is only ever made at the small size (the
  uploads of a 4000×4000 PNG cost one 8-bit decode of it, never a 4000×4000 float array).
  ``pixel_budget`` refuses an image whose decoded pixels exceed what is left of a budget
  (:func:`load_uploads` bounds the pixels of one upload, ``settings().max_upload_pixels``).
- Truncated files are errors: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is kept off.
- Transparency (RGBA, LA, palette + transparency) is composited on **black**, the MNIST
  background: value × alpha.
- 16-bit images are divided by 65535; ``I`` (32-bit int) by 65535 when its values fit in
  [0, 65535], else min-max scaled; ``F`` (float) is kept when already in [0, 1], else
  min-max scaled over its finite values (NaN/inf become 0).
- Grey modes (1, L, LA, I;16, I, F) give C = 1; everything else is converted to RGB, C = 3
  (CMYK, YCbCr, palette, ...).
- Animated GIF / multi-page TIFF: the first frame is used, with a note.
- EXIF orientation is applied (the transposes of ``ImageOps.exif_transpose``), with a note.
- Tiny images (a side < 8 px, down to 1×1) are accepted with a note: they are valid images
  and the model card's resize will upsample them.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageFile

from gradviz.config import settings
from gradviz.errors import ImageError

if TYPE_CHECKING:
    from gradviz.data import ImageSet
    from gradviz.models.card import ModelCard

__all__ = ["DecodedImage", "decode_image", "load_uploads", "images_to_tensor", "sniff_format", "ALLOWED_FORMATS",
           "upload_spec", "uploads_to_imageset"]

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")
SUPPORTED_MSG = "not a supported image (PNG, JPEG, BMP, TIFF, WebP, GIF)"
TINY_SIDE = 8

Image.MAX_IMAGE_PIXELS = settings().max_pixels  # Pillow's own guard: a backstop behind the header check below
ImageFile.LOAD_TRUNCATED_IMAGES = False
PIXELS_HINT = "raise GRADVIZ_MAX_PIXELS if the image is genuine"


class PixelBudgetError(ImageError):
    """The image would take more decoded pixels than are left of a budget (one upload's, one session's)."""


@dataclass
class DecodedImage:
    """One decoded image: ``array`` float32 (C, H, W) in [0, 1], C in {1, 3}."""

    name: str
    array: np.ndarray  # (C, H, W) float32 in [0, 1]
    mode: str  # Pillow mode of the file as stored (before conversion)
    size: tuple[int, int]  # (width, height) as stored, Pillow's convention
    format: str  # PNG, JPEG, ...
    note: str = ""  # what was done to it ("animated GIF: first of 12 frames used"; ...)
    pixels: int = 0  # pixels Pillow decoded (after JPEG draft scaling): what budgets count


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
        f"(possible decompression bomb; {PIXELS_HINT})"
    )


def _pillow_bomb_error(name: str, exc: BaseException, limit: int) -> ImageError:
    """Pillow's own guard fired (a size it saw beyond the header, e.g. a later frame): quote our limit, not Pillow's."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)):,} pixels" if found else "more pixels than allowed"
    return ImageError(f"{name}: {size} exceeds the limit of {limit:,} pixels (possible decompression bomb; "
                      f"{PIXELS_HINT})")


def _to_array(img: Image.Image, notes: list[str], stored_mode: str | None = None) -> np.ndarray:
    """Pillow image (any mode) -> (C, H, W) float32 in [0, 1], alpha composited on black.

    ``stored_mode``: the file's mode where :func:`_shrink` converted it (16-bit grey becomes ``I``)."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N") or (mode == "I" and str(stored_mode).startswith("I;16")):
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


def _orientation(img: Image.Image) -> int | Exception:
    """The EXIF orientation tag (1 = as stored), or the exception a malformed EXIF block raised."""
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if value is not None else 1
    except Exception as exc:  # malformed EXIF must not make a readable image unusable
        return exc


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}  # the table ImageOps.exif_transpose uses


def _apply_exif_orientation(img: Image.Image, notes: list[str],
                            orientation: int | Exception | None = None) -> Image.Image:
    """Rotate/flip per the EXIF orientation tag; a malformed EXIF block is ignored with a note.

    ``orientation`` as read by :func:`_orientation` before the image was reduced (the tag of the
    file, which a resized copy no longer carries)."""
    if orientation is None:
        orientation = _orientation(img)
    if isinstance(orientation, Exception):
        notes.append(f"EXIF unreadable, orientation ignored ({type(orientation).__name__})")
        return img
    if orientation not in _TRANSPOSE:
        return img
    notes.append("EXIF orientation applied")
    return img.transpose(_TRANSPOSE[orientation])


_SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90°


def _stored_fit(fit: tuple[int, int], orientation: int | Exception) -> tuple[int, int]:
    """``fit`` (H, W) of the upright image, as (H, W) of the image as stored (swapped when EXIF rotates it)."""
    return (int(fit[1]), int(fit[0])) if orientation in _SWAPS_SIDES else (int(fit[0]), int(fit[1]))


def _shrink(img: Image.Image, fit: tuple[int, int], notes: list[str]) -> Image.Image:
    """``img`` resized to ``fit`` = (H, W) when it is larger in either side (one antialiased bilinear
    Pillow resize, as torch's ``interpolate(antialias=True)`` did on the float array before).

    Modes Pillow cannot resize faithfully are converted first: 1 -> L, P -> RGB(A) (a palette
    resize would be nearest-neighbour), 16-bit grey -> I (exact values), F with NaN/inf -> 0.
    LA/RGBA are resized premultiplied by Pillow, which equals compositing on black first.
    """
    h, w = fit
    if img.width <= w and img.height <= h:
        return img
    mode = img.mode
    if mode == "1":
        img = img.convert("L")
    elif mode == "P":
        has_alpha = "transparency" in img.info or (img.palette is not None and img.palette.mode == "RGBA")
        img = img.convert("RGBA" if has_alpha else "RGB")
    elif mode.startswith("I;16"):
        img = img.convert("I")
    elif mode == "F":
        x = np.asarray(img, dtype=np.float32)
        if not np.isfinite(x).all():
            notes.append("NaN/inf pixels set to 0")
            img = Image.fromarray(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), "F")
    elif mode not in ("L", "LA", "La", "I", "RGB", "RGBA", "RGBa"):
        img = img.convert("RGBA" if "A" in mode else "RGB")
        if mode == "CMYK":
            notes.append("CMYK converted to RGB")
    return img.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=3.0)


def fit_within(data: bytes, side: int) -> tuple[int, int] | None:
    """(H, W) of the upright image scaled so its longer side is ``side`` (aspect kept), read from the
    header only; None when it is no larger or the header cannot be read (then :func:`decode_image` decides).

    Pass it as ``decode_image(..., fit=...)``: a 4000×3000 camera frame is then decoded already reduced."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(bytes(data)), formats=list(ALLOWED_FORMATS)) as img:
                w, h = (int(v) for v in img.size)
                orientation = _orientation(img)
    except Exception:  # noqa: BLE001 — untrusted bytes: decode_image refuses them with its own message
        return None
    if orientation in _SWAPS_SIDES:
        w, h = h, w
    if max(h, w) <= side or min(h, w) <= 0:
        return None
    f = side / max(h, w)
    return max(1, round(h * f)), max(1, round(w * f))


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if not np.isfinite(hi - lo) or hi - lo <= 0:
        return np.zeros_like(x, dtype=np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def decode_image(data: bytes, name: str = "upload", max_pixels: int | None = None, max_bytes: int | None = None,
                 fit: tuple[int, int] | None = None, pixel_budget: int | None = None) -> DecodedImage:
    """Decode untrusted image bytes to a :class:`DecodedImage`; any problem raises ImageError.

    ``fit`` = (H, W): an image larger than that in either side is reduced while decoding (module
    doc), so memory stays at one 8-bit decode of it. ``pixel_budget``: refuse the image when the
    pixels to decode (after JPEG draft scaling) exceed it (:func:`load_uploads` passes what is left).
    """
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
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's backstop never fires below our own (quoted) limit
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Pillow's "Corrupt EXIF data" etc. on odd files
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our header check below decides
            img: Image.Image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
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
            if fit is not None and real_fmt == "JPEG":  # EXIF sits in the header: known before decoding
                h_fit, w_fit = _stored_fit(fit, _orientation(img))
                img.draft(img.mode, (int(w_fit), int(h_fit)))  # DCT scaling: decodes at 1/2, 1/4 or 1/8 size
            pixels = int(img.size[0]) * int(img.size[1])
            if pixel_budget is not None and pixels > pixel_budget:
                raise PixelBudgetError(f"{name}: not loaded — its {pixels:,} pixels would exceed what is left of "
                                       f"the pixel budget ({max(0, int(pixel_budget)):,} pixels)")
            img.load()
            orientation = _orientation(img)  # read again: a PNG's eXIf chunk may follow its pixels
            if fit is not None:
                img = _shrink(img, _stored_fit(fit, orientation), notes)
            img = _apply_exif_orientation(img, notes, orientation)
            array = _to_array(img, notes, mode)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise _pillow_bomb_error(name, exc, max_pixels) from None
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
    return DecodedImage(name, array, mode, (int(width), int(height)), real_fmt, "; ".join(notes), pixels)


def _short(exc: BaseException, n: int = 120) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= n else text[: n - 1] + "…"


def load_uploads(
    files: list[tuple[str, bytes]],
    max_files: int | None = None,
    max_total_mb: float | None = None,
    max_pixels: int | None = None,
    *,
    fit: tuple[int, int] | None = None,
    max_total_pixels: int | None = None,
    pixels_setting: str = "GRADVIZ_MAX_UPLOAD_PIXELS",
) -> tuple[list[DecodedImage], list[tuple[str, str]]]:
    """Decode many ``(name, bytes)`` files: ``(decoded, errors)``; a bad file never stops the others.

    Limits: ``max_files`` (default ``settings().max_upload_files``), ``max_total_mb``
    (default 4 × ``settings().max_upload_mb``) over the whole batch, ``max_total_pixels``
    (default ``settings().max_upload_pixels``) decoded pixels over the whole batch, and per file
    ``settings().max_upload_mb`` / ``max_pixels``. Files beyond a limit are not decoded; each
    gets an error entry whose message states the limit (``pixels_setting`` names the variable
    that sets the pixel limit). ``fit`` = (H, W) reduces each image while decoding.
    """
    cfg = settings()
    max_files = int(max_files or cfg.max_upload_files)
    max_total = float(max_total_mb or 4 * cfg.max_upload_mb) * 1024 * 1024
    pixel_limit = int(cfg.max_upload_pixels if max_total_pixels is None else max_total_pixels)
    decoded: list[DecodedImage] = []
    errors: list[tuple[str, str]] = []
    total = pixels = 0
    for i, (name, data) in enumerate(files):
        name = str(name)
        if i >= max_files:
            refused = ImageError(f"{name}: not loaded — more than {max_files} files (limit {max_files} per upload)")
            errors.append((name, str(refused)))
            continue
        size = len(data) if isinstance(data, (bytes, bytearray, memoryview)) else 0
        if total + size > max_total:
            errors.append((name, str(ImageError(
                f"{name}: not loaded — total upload size would exceed the limit of {max_total / 2**20:.0f} MB"))))
            continue
        total += size
        try:
            image = decode_image(data, name, max_pixels=max_pixels, fit=fit, pixel_budget=pixel_limit - pixels)
        except PixelBudgetError:  # say which limit, and how to change it
            errors.append((name, f"{name}: not loaded — with it this upload would pass the {pixel_limit:,} decoded "
                                 f"pixels allowed ({pixels_setting}; {pixels:,} already used); upload fewer or "
                                 "smaller images"))
            continue
        except ImageError as exc:
            errors.append((name, str(exc)))
            continue
        pixels += image.pixels
        decoded.append(image)
    return decoded, errors


def images_to_tensor(decoded: list[DecodedImage], card: "ModelCard") -> torch.Tensor:
    """Stack decoded images of any sizes into (N, C, H, W) at ``card.input_size`` (each resized first)."""
    from gradviz.data import adapt_images

    if not decoded:
        raise ImageError("no images to convert (every file was refused or none was given)")
    # each (1, C, H, W)
    out = [adapt_images(torch.from_numpy(np.ascontiguousarray(d.array))[None], card) for d in decoded]
    return torch.cat(out, 0)


def upload_spec(n_files: int) -> str:
    """The dataset spec naming a set of uploaded images, e.g. ``upload:3 files``."""
    return f"upload:{int(n_files)} file{'s' if int(n_files) != 1 else ''}"


def uploads_to_imageset(files: list[tuple[str, bytes]], card: "ModelCard", *, max_total_pixels: int | None = None,
                        pixels_setting: str = "GRADVIZ_MAX_UPLOAD_PIXELS",
                        clean_up: bool = False) -> tuple["ImageSet | None", list[tuple[str, str]]]:
    """Decode uploaded ``(name, bytes)`` files for ``card``'s input: (ImageSet or None if none decoded, errors).

    Each image is reduced to the card's input size while it is decoded. Bad files never stop the
    others; each gets one ``(name, message)`` entry in ``errors``. The set's ``notes`` hold what the
    decoder did to each file (EXIF orientation, 16-bit scaling, ...) and ``decoded_pixels`` what
    the upload cost (for a session's budget). ``clean_up``: each image goes through the Playground
    camera's clean-up instead (dark ink on light paper inverted, the paper subtracted, the digit
    put in a 20/28 box centred by mass: :func:`gradviz.playground.preprocess.photo_to_input`),
    decoded a little larger for it (``photo_fit``); an image where no ink stands out is kept as it is.
    """
    from gradviz.data import ImageSet

    _, h, w = card.input_size
    if clean_up:
        from gradviz.playground.preprocess import photo_fit

        fit = photo_fit(card)
    else:
        fit = (int(h), int(w))
    decoded, errors = load_uploads(list(files), fit=fit, max_total_pixels=max_total_pixels,
                                   pixels_setting=pixels_setting)
    if not decoded:
        return None, errors
    if clean_up:
        images, notes = _cleaned(decoded, card)
    else:
        images, notes = images_to_tensor(decoded, card), [(d.name, d.note) for d in decoded if d.note]
    labels = np.full(len(decoded), -1, dtype=np.int64)
    data = ImageSet(upload_spec(len(decoded)), images, labels, paths=[d.name for d in decoded],  # images (N, C, H, W)
                    class_names=list(card.class_names), notes=notes,
                    decoded_pixels=sum(d.pixels for d in decoded))
    return data, errors


def _cleaned(decoded: list[DecodedImage], card: "ModelCard") -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """Each image through the camera clean-up, or as it is when no ink stands out: ((N, C, H, W), notes)."""
    from gradviz.playground.preprocess import photo_to_input

    out, notes = [], []
    for d in decoded:
        x = photo_to_input(d.array, card)  # (1, C, H, W) or None
        if x is None:
            x = images_to_tensor([d], card)
            what = "clean-up found no ink standing out of the background: used as it is"
        else:
            what = "cleaned up like the Playground camera (polarity, paper, centred by mass)"
        notes.append((d.name, "; ".join(filter(None, [d.note, what]))))
        out.append(x)
    return torch.cat(out, 0), notes
