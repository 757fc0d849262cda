"""Names that come from users (class, file, folder, dataset and model names, error messages that
quote them) shown as plain text, never as markup.

Streamlit renders labels, captions, metric values, errors and ``st.markdown`` as GitHub-flavoured
Markdown: a class named ``![b](http://host/b.png)`` would make every viewer's browser fetch that
URL, ``[x](http://host)`` would be a live link. :func:`md_text` backslash-escapes every ASCII
punctuation character (CommonMark shows an escaped one literally) and folds line breaks, so the
name reads as written and nothing in it is markup: no image, link, HTML, heading, list, math or
table.

Plotly renders a subset of HTML in every text it draws (titles, axis ticks, legend, hover):
``<a href=...>`` is a live link. :func:`html_text` escapes ``&``, ``<`` and ``>`` (Plotly shows
the entities as the characters) and ``%`` (so a name never becomes part of a hover template).
"""

from __future__ import annotations

import html
import re

__all__ = ["md_text", "html_text"]

_MD_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character
_LINE_BREAKS = re.compile(r"[\r\n\t\v\f\x1c-\x1e\x85\u2028\u2029]+")


def md_text(value: object) -> str:
    """``value`` as Markdown source that renders as exactly its text (one line)."""
    return _MD_PUNCTUATION.sub(r"\\\1", _LINE_BREAKS.sub(" ", str(value)))


def html_text(value: object) -> str:
    """``value`` as Plotly text that renders as exactly its text (no tag, link or template field)."""
    return html.escape(str(value), quote=False).replace("%", "&#37;")
