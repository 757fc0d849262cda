"""Small files built in memory for tests: a flat grey PNG and a zip of named members."""

from __future__ import annotations

import io
import zipfile

from PIL import Image


def png_bytes(value: int, size: int = 28) -> bytes:
    """A ``size``×``size`` grey PNG filled with ``value``."""
    buf = io.BytesIO()
    Image.new("L", (size, size), value).save(buf, format="PNG")
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A deflated zip archive holding ``members`` (name -> bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()
