"""Safe decoding of untrusted image bytes (gradviz.data.images): every bad file ends in ImageError."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st
from PIL import Image, ImageFile

from gradviz.errors import ImageError
from gradviz.data.images import decode_image, images_to_tensor, load_uploads, sniff_format
from gradviz.models.card import ModelCard
from gradviz.models.zoo import mnist_card


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _bomb_png(side: int = 30000) -> bytes:
    """A real, valid 1-bit PNG of side×side black pixels (a few hundred KB), built row by row."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    block = row * 1000
    parts = [comp.compress(block) for _ in range(side // 1000)] + [comp.compress(row * (side % 1000)), comp.flush()]
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


def _gradient_rgb(w: int = 16, h: int = 12) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def test_plain_png_decodes_to_float_chw_in_unit_range():
    arr = np.arange(12 * 16 * 3, dtype=np.uint8).reshape(12, 16, 3)
    out = decode_image(_save(Image.fromarray(arr, "RGB"), "PNG"), "a.png")
    assert out.array.dtype == np.float32 and out.array.shape == (3, 12, 16)
    np.testing.assert_allclose(out.array, arr.transpose(2, 0, 1) / 255.0, atol=1e-6)
    assert out.size == (16, 12) and out.format == "PNG" and out.mode == "RGB"


def test_zero_byte_file_is_refused():
    with pytest.raises(ImageError, match="empty file"):
        decode_image(b"", "empty.png")


@pytest.mark.parametrize("data", [
    b"hello, I am a text file renamed to .png\n",
    b"<!DOCTYPE html><html><body>not an image</body></html>",
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>',
])
def test_non_image_bytes_are_refused_as_unsupported(data):
    with pytest.raises(ImageError, match=r"not a supported image \(PNG, JPEG, BMP, TIFF, WebP, GIF\)"):
        decode_image(data, "fake.png")


def test_eps_is_refused_before_pillow_or_ghostscript_sees_it(monkeypatch):
    from PIL import EpsImagePlugin

    def boom(*a, **k):
        raise AssertionError("Ghostscript must never run")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", boom)
    monkeypatch.setattr(Image, "open", boom)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\n%%EOF\n"
    with pytest.raises(ImageError, match="PostScript/EPS"):
        decode_image(eps, "drawing.eps")


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA"])
def test_other_pillow_formats_are_refused(fmt):
    data = _save(_gradient_rgb(16, 16), fmt)
    assert sniff_format(data) is None
    with pytest.raises(ImageError, match="not a supported image"):
        decode_image(data, f"x.{fmt.lower()}")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_refused(fmt):
    data = _save(_gradient_rgb(64, 64), fmt)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], f"cut.{fmt.lower()}")


def test_truncated_file_refused_even_if_pillow_flag_was_switched_on(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = _save(_gradient_rgb(64, 64), "PNG")
    with pytest.raises(ImageError, match="truncated"):
        decode_image(data[: len(data) // 2], "cut.png")


def test_decompression_bomb_png_is_refused_from_its_header():
    data = _bomb_png(30000)
    assert len(data) < 1_000_000
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image(data, "bomb.png", max_bytes=10 * 2**20)


def test_pixel_limit_is_checked_before_decoding():
    data = _save(_gradient_rgb(100, 100), "PNG")
    with pytest.raises(ImageError, match=r"100×100 = 10,000 pixels exceeds the limit of 5,000"):
        decode_image(data, "big.png", max_pixels=5000)
    assert decode_image(data, "big.png", max_pixels=10_000).array.shape == (3, 100, 100)


def test_byte_limit_is_enforced():
    data = _save(_gradient_rgb(64, 64), "PNG")
    with pytest.raises(ImageError, match="exceeds the limit of .* MB per file"):
        decode_image(data, "big.png", max_bytes=len(data) - 1)


def test_one_pixel_image_is_accepted_with_a_note():
    out = decode_image(_save(Image.new("L", (1, 1), 200), "PNG"), "dot.png")
    assert out.array.shape == (1, 1, 1)
    assert abs(float(out.array[0, 0, 0]) - 200 / 255) < 1e-6
    assert "tiny image" in out.note


def test_16bit_png_is_scaled_by_65535():
    arr = np.array([[0, 1000, 65535], [30000, 40000, 50000]], dtype=np.uint16)
    data = _save(Image.fromarray(arr), "PNG")
    out = decode_image(data, "deep.png")
    assert out.array.shape == (1, 2, 3)
    np.testing.assert_allclose(out.array[0], arr / 65535.0, atol=1e-6)
    assert "scaled" in out.note


def test_16bit_tiff_is_scaled_by_65535():
    arr = (np.arange(20, dtype=np.uint16) * 3000).reshape(4, 5)
    out = decode_image(_save(Image.fromarray(arr), "TIFF"), "deep.tif")
    np.testing.assert_allclose(out.array[0], arr / 65535.0, atol=1e-6)


def test_float_tiff_is_min_max_scaled():
    arr = np.array([[-2.0, 0.0], [2.0, 6.0]], dtype=np.float32)
    out = decode_image(_save(Image.fromarray(arr, "F"), "TIFF"), "float.tif")
    np.testing.assert_allclose(out.array[0], (arr + 2) / 8, atol=1e-6)
    assert "min-max" in out.note


def test_cmyk_jpeg_becomes_rgb():
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    data = _save(img, "JPEG", quality=95)
    out = decode_image(data, "print.jpg")
    assert out.array.shape == (3, 16, 16) and out.mode == "CMYK"
    r, g, b = out.array.mean(axis=(1, 2))
    assert r > 0.8 and g < 0.2 and b < 0.2


def test_rgba_is_composited_on_black():
    img = Image.new("RGBA", (4, 4), (255, 100, 0, 128))
    out = decode_image(_save(img, "PNG"), "alpha.png")
    np.testing.assert_allclose(out.array[:, 0, 0], np.array([255, 100, 0]) / 255 * 128 / 255, atol=1e-6)
    assert "black" in out.note


def test_la_is_composited_on_black_and_stays_grey():
    img = Image.new("LA", (4, 4), (200, 0))
    out = decode_image(_save(img, "PNG"), "la.png")
    assert out.array.shape == (1, 4, 4) and float(out.array.max()) == 0.0


def test_palette_png_with_transparency_is_composited_on_black():
    img = Image.new("P", (4, 2), 1)
    img.putpalette([255, 255, 255, 255, 0, 0] + [0] * 762)
    img.putpixel((0, 0), 0)  # index 0 = white but fully transparent
    data = _save(img, "PNG", transparency=0)
    out = decode_image(data, "pal.png")
    assert out.array.shape == (3, 2, 4)
    np.testing.assert_allclose(out.array[:, 0, 0], 0.0)  # transparent white -> black
    np.testing.assert_allclose(out.array[:, 1, 1], [1.0, 0.0, 0.0])  # opaque red kept


def test_animated_gif_uses_first_frame_with_a_note():
    frames = [Image.new("L", (8, 8), v) for v in (10, 120, 250)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = decode_image(buf.getvalue(), "anim.gif")
    assert "animated GIF: first of 3 frames used" in out.note
    assert abs(float(out.array.mean()) - 10 / 255) < 0.02


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (20, 10), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = decode_image(_save(img, "JPEG", exif=exif.tobytes()), "phone.jpg")
    assert out.array.shape == (3, 20, 10)
    assert "EXIF orientation applied" in out.note


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF"])
def test_every_allowed_format_decodes(fmt):
    out = decode_image(_save(_gradient_rgb(16, 12), fmt), f"x.{fmt.lower()}")
    assert out.array.shape[1:] == (12, 16) and out.array.shape[0] in (1, 3)


def test_load_uploads_keeps_going_after_a_bad_file():
    good = _save(_gradient_rgb(8, 8), "PNG")
    decoded, errors = load_uploads([("a.png", good), ("bad.png", b"nope"), ("b.png", good)])
    assert [d.name for d in decoded] == ["a.png", "b.png"]
    assert errors[0][0] == "bad.png" and "not a supported image" in errors[0][1]


def test_load_uploads_reports_files_beyond_the_count_limit():
    good = _save(_gradient_rgb(8, 8), "PNG")
    decoded, errors = load_uploads([(f"{i}.png", good) for i in range(5)], max_files=3)
    assert len(decoded) == 3
    assert [e[0] for e in errors] == ["3.png", "4.png"] and all("limit 3" in e[1] for e in errors)


def test_load_uploads_reports_files_beyond_the_total_size_limit():
    big = _save(Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)), "PNG")
    n_fit = int(2 * 2**20 // len(big))
    decoded, errors = load_uploads([(f"{i}.png", big) for i in range(n_fit + 2)], max_total_mb=2)
    assert len(decoded) == n_fit and len(errors) == 2
    assert all("limit of 2 MB" in msg for _, msg in errors)


def test_images_to_tensor_adapts_mixed_sizes_and_modes_to_the_card():
    imgs = [
        decode_image(_save(_gradient_rgb(40, 30), "PNG"), "rgb.png"),
        decode_image(_save(Image.new("L", (5, 9), 255), "PNG"), "grey.png"),
    ]
    x = images_to_tensor(imgs, mnist_card())
    assert x.shape == (2, 1, 28, 28) and x.dtype.is_floating_point
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert abs(float(x[1].mean()) - 1.0) < 1e-5
    card = ModelCard("c", "x", (3, 32, 32), (0.5,) * 3, (0.5,) * 3, [str(i) for i in range(10)])
    assert images_to_tensor(imgs, card).shape == (2, 3, 32, 32)


def test_images_to_tensor_refuses_an_empty_list():
    with pytest.raises(ImageError, match="no images"):
        images_to_tensor([], mnist_card())


def _check_output(out):
    a = out.array
    assert a.dtype == np.float32 and a.ndim == 3 and a.shape[0] in (1, 3)
    assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1


@hsettings(max_examples=200, deadline=None)
@given(st.one_of(
    st.binary(max_size=512),
    st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
                     b"RIFF\x00\x00\x00\x00WEBP"])
    .flatmap(lambda magic: st.binary(max_size=256).map(lambda tail: magic + tail)),
))
def test_random_bytes_only_ever_raise_image_error(data):
    try:
        out = decode_image(data, "fuzz")
    except ImageError:
        return
    _check_output(out)


_MODES = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "TIFF": ["1", "L", "RGB", "RGBA", "CMYK", "I;16", "I", "F"],
    "BMP": ["1", "L", "P", "RGB"],
    "GIF": ["L", "P"],
    "JPEG": ["L", "RGB", "CMYK"],
    "WEBP": ["RGB", "RGBA"],
}


@st.composite
def _odd_images(draw):
    fmt = draw(st.sampled_from(sorted(_MODES)))
    mode = draw(st.sampled_from(_MODES[fmt]))
    w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if mode in ("I;16",):
        img = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif mode == "I":
        img = Image.fromarray(rng.integers(-(2**20), 2**20, (h, w), dtype=np.int32), "I")
    elif mode == "F":
        arr = rng.normal(0, draw(st.sampled_from([1e-3, 1.0, 1e6])), (h, w)).astype(np.float32)
        img = Image.fromarray(arr, "F")
    else:
        base = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
        img = base.convert(mode)
    data = _save(img, fmt)
    cut = draw(st.sampled_from([None, None, 0.5, 0.9]))
    if cut is not None:
        data = data[: max(1, int(len(data) * cut))]
    return data


@hsettings(max_examples=200, deadline=None)
@given(_odd_images(), st.sampled_from([None, (8, 8), (5, 11)]))
def test_odd_valid_or_cut_images_decode_cleanly_or_raise_image_error(data, fit):
    """Every mode, also reduced while decoding (fit smaller than the image in one or both sides)."""
    try:
        out = decode_image(data, "odd", fit=fit)
    except ImageError:
        return
    _check_output(out)
    if fit is not None:
        assert out.array.shape[1] <= max(fit) and out.array.shape[2] <= max(fit)


# --------------------------------------------------------------------------- reduced while decoding


def test_fit_reduces_while_decoding_like_the_float_resize_did():
    """Pillow's antialiased resize at decode ≈ the full-resolution float array resized by torch."""
    from gradviz.data import adapt_images

    rng = np.random.default_rng(1)
    smooth = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((400, 300), Image.BICUBIC)
    data = _save(smooth, "PNG")
    reduced = decode_image(data, "a.png", fit=(28, 28))
    assert reduced.array.shape == (3, 28, 28) and reduced.size == (400, 300) and reduced.pixels == 400 * 300
    full = decode_image(data, "a.png")
    card = ModelCard("c", "x", (3, 28, 28), (0.5,) * 3, (0.5,) * 3, [str(i) for i in range(10)])
    old = adapt_images(__import__("torch").from_numpy(full.array)[None], card)[0].numpy()
    assert np.abs(reduced.array - old).mean() < 0.01 and np.abs(reduced.array - old).max() < 0.08
    small = decode_image(_save(_gradient_rgb(16, 12), "PNG"), "s.png", fit=(28, 28))
    assert small.array.shape == (3, 12, 16)  # never enlarged here: the card's resize does that


def test_jpeg_is_drafted_at_a_fraction_of_its_pixels():
    data = _save(Image.new("RGB", (1600, 1200), (10, 200, 30)), "JPEG")
    out = decode_image(data, "photo.jpg", fit=(28, 28))
    assert out.array.shape == (3, 28, 28) and out.pixels <= 1600 * 1200 // 64  # DCT scaling 1/8
    np.testing.assert_allclose(out.array.mean((1, 2)), [10 / 255, 200 / 255, 30 / 255], atol=0.03)


def test_exif_rotation_with_a_non_square_fit_comes_out_upright():
    img = Image.new("RGB", (200, 100), (255, 255, 255))  # stored landscape, displayed portrait
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(_save(img, "JPEG", exif=exif.tobytes()), "phone.jpg", fit=(40, 20))
    assert out.array.shape == (3, 40, 20) and "EXIF orientation applied" in out.note


def test_upload_pixel_budget_refuses_files_beyond_it_with_the_setting():
    data = _save(Image.new("L", (100, 100), 3), "PNG")
    decoded, errors = load_uploads([(f"{i}.png", data) for i in range(5)], fit=(28, 28), max_total_pixels=25_000)
    assert len(decoded) == 2 and [e[0] for e in errors] == ["2.png", "3.png", "4.png"]
    assert all("25,000 decoded pixels allowed (GRADVIZ_MAX_UPLOAD_PIXELS; 20,000 already used)" in e[1] for e in errors)


def test_bomb_messages_quote_the_configured_limit_and_the_setting(monkeypatch):
    with pytest.raises(ImageError) as info:  # Pillow's own guard fires first here (30000² > 2 × its limit)
        decode_image(_bomb_png(), "bomb.png")
    msg = str(info.value)
    assert "900,000,000 pixels exceeds the limit of 16,000,000 pixels" in msg and "GRADVIZ_MAX_PIXELS" in msg
    assert "32000000" not in msg.replace(",", "") and "DOS" not in msg
    monkeypatch.setenv("GRADVIZ_MAX_PIXELS", "1000000")
    with pytest.raises(ImageError, match=r"1,000,000 pixels \(possible decompression bomb; raise GRADVIZ_MAX_PIXELS"):
        decode_image(_bomb_png(2000), "b.png")


def test_uploads_to_imageset_keeps_the_decoders_notes():
    from gradviz.data.images import uploads_to_imageset

    deep = _save(Image.fromarray((np.arange(30 * 30).reshape(30, 30) * 60).astype(np.uint16)), "PNG")
    data, errors = uploads_to_imageset([("deep.png", deep), ("dot.png", _save(Image.new("L", (1, 1)), "PNG")),
                                        ("plain.png", _save(Image.new("L", (28, 28)), "PNG"))], mnist_card())
    assert not errors and data.images.shape == (3, 1, 28, 28)
    notes = dict(data.notes)
    assert "16-bit image scaled" in notes["deep.png"] and "tiny image (1×1)" in notes["dot.png"]
    assert "plain.png" not in notes and data.decoded_pixels == 900 + 1 + 784


_PEAK_SCRIPT = """
import resource, sys, gc
from gradviz.data.images import uploads_to_imageset
from gradviz.models.zoo import mnist_card
card = mnist_card()
data = open(sys.argv[1], "rb").read()
uploads_to_imageset([("warm.png", data[:0])], card)  # imports and first-call allocations before the baseline
gc.collect()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the process's peak so far
files = [(f"{i}.png", data) for i in range(64)]
images, errors = uploads_to_imageset(files, card)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(images), len(errors), (after - before) / 1024)
"""


@pytest.mark.slow
def test_worst_case_upload_peak_memory_stays_small(tmp_path):
    """64 RGB PNGs of 4000×4000 (56 KB each, inside every per-file limit): the peak RSS of a fresh process
    (what ru_maxrss sees: Pillow's C buffers included) grows by one 8-bit decode, not 64 float32 arrays (~12 GB)."""
    import subprocess
    import sys
    import zlib

    side = 4000
    comp = zlib.compressobj(9)
    row = b"\x00" + bytes([90, 160, 220]) * side  # filter byte + one RGB row; never a 48 MB image in this process
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    png = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
           + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))
    path = tmp_path / "big.png"
    path.write_bytes(png)
    assert len(png) < 100_000
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path)], capture_output=True, text=True, timeout=240,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    n_images, n_errors, grew_mib = out.stdout.split()
    # the default budget (256,000,000 pixels) decodes 16 of them; the other 48 are refused with a message
    assert (int(n_images), int(n_errors)) == (16, 48)
    assert float(grew_mib) < 250, f"peak RSS grew by {grew_mib} MiB"
