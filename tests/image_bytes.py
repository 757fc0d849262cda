"""Small files built in memory for tests: a flat grey PNG, a zip of named members, a folder of class
subfolders, a Playground canvas drawing and a phone photo of a digit on paper."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Callable

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


def class_folder(root: Path, per_class: int, image: Callable[[int, int], bytes], classes: int = 2) -> Path:
    """``root/<c>/<i>.png`` for ``classes`` classes of ``per_class`` images each, ``image(c, i)`` the PNG bytes."""
    for c in range(classes):
        (root / str(c)).mkdir(parents=True)
        for i in range(per_class):
            (root / str(c) / f"{i}.png").write_bytes(image(c, i))
    return root


def canvas_png(kind: str) -> bytes:
    """A Playground canvas PNG like the browser sends (white strokes on black, RGBA, the canvas size): ``"three"``
    (a drawn 3), ``"scribble"`` (seeded random strokes) or anything else (blank)."""
    import numpy as np
    from PIL import ImageDraw

    from gradviz.ui.canvas import CANVAS_SIZE

    img = Image.new("RGBA", (CANVAS_SIZE, CANVAS_SIZE), (0, 0, 0, 255))
    d = ImageDraw.Draw(img)
    if kind == "three":
        d.arc((90, 40, 190, 140), 200, 90, fill="white", width=22)
        d.arc((80, 130, 190, 240), 270, 160, fill="white", width=22)
    elif kind == "scribble":
        pts = [tuple(int(v) for v in p) for p in np.random.default_rng(1).integers(30, 250, (14, 2))]
        d.line(pts, fill="white", width=22, joint="curve")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def paper_photo(digit: str = "2", side: int = 1000, seed: int = 0) -> bytes:
    """A JPEG like a phone photo: a dark digit on light, unevenly lit, slightly noisy paper."""
    import numpy as np
    from PIL import ImageDraw, ImageFont

    from gradviz.data.letters import font_dir

    rng = np.random.default_rng(seed)
    paper = (205 + rng.normal(0, 5, (side, side)) + np.linspace(-15, 15, side)[None]).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(paper).convert("RGB")
    font = ImageFont.truetype(str(font_dir() / "DejaVuSans.ttf"), int(side * 0.55))
    ImageDraw.Draw(img).text((side // 2, side // 2), digit, font=font, fill=(35, 35, 45), anchor="mm")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()
