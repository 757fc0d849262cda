"""Writing benchmark results into docs/PERFORMANCE.md: one ``## heading`` section per benchmark."""

from __future__ import annotations

import re
from pathlib import Path

TITLE = "# Performance\n"


def replace_section(path: Path, heading: str, body: str) -> None:
    """Replace the body of ``## heading`` in ``path`` with ``body`` (the section is added at the end if
    missing; every other section is kept as it is)."""
    text = path.read_text() if path.exists() else TITLE
    block = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text.rstrip("\n") + "\n")
