"""Names that come from users (class, file, folder, dataset and model names, error messages that
quote them) shown as plain text, never as markup.

Streamlit renders labels, captions, metric values, errors and ``st.markdown`` as GitHub-flavoured
Markdown: a class named ``![b](http://host/b.png)`` would make every viewer's browser fetch that
URL, ``[x](http://host)`` or a bare ``http://host`` would be a live link. :func:`md_text` makes a
name inert and keeps it readable (and searchable) as written:

- it backslash-escapes the characters that open inline markup: ``\\ ` * ~ [ ] < > & $`` (links,
  images, HTML, code, emphasis, math, entities), and ``_`` where it could start emphasis;
- it escapes a leading block marker (``#``, ``-``, ``+``, ``>``, ``=``, ``1.``) and folds line breaks;
- GitHub's bare-URL and e-mail links are found in the text *after* escapes are resolved, so
  there it inserts an invisible WORD JOINER (U+2060) into ``://``, ``www.`` and ``@``.

:func:`md_code` shows a name as inline code (nothing inside a code span is markup).

Plotly renders a subset of HTML in every text it draws (titles, axis ticks, legend, hover):
``<a href=...>`` is a live link. :func:`html_text` escapes ``&``, ``<`` and ``>`` (Plotly shows
the entities as the characters) and ``%`` (so a name never becomes part of a hover template).
"""

from __future__ import annotations

import html
import re

__all__ = ["md_text", "md_code", "html_text"]

WORD_JOINER = "\u2060"
_LINE_BREAKS = re.compile(r"[\r\n\t\v\f\x1c-\x1e\x85\u2028\u2029]+")
_INLINE = re.compile(r"([\\`*~\[\]<>&$])|(?<![^\W_])_|_(?![^\W_])")  # markup openers; ``_`` unless inside a word
_BLOCK_START = re.compile(r"^([#+\-=>])|^(\d+)([.)])")
_AUTOLINK = re.compile(r"(?=://)|(?<=www)(?=\.)|(?=@)", re.IGNORECASE)


def md_text(value: object) -> str:
    """``value`` as Markdown source that renders as its text on one line: no link, image, HTML or formatting."""
    text = _LINE_BREAKS.sub(" ", str(value)).lstrip()
    text = _INLINE.sub(lambda m: "\\" + m.group(0), text)
    text = _BLOCK_START.sub(lambda m: "\\" + m.group(1) if m.group(1) else m.group(2) + "\\" + m.group(3), text)
    return _AUTOLINK.sub(WORD_JOINER, text)


def md_code(value: object) -> str:
    """``value`` as a Markdown code span (a fence longer than any run of backticks in it; one line)."""
    text = _LINE_BREAKS.sub(" ", str(value))
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def html_text(value: object) -> str:
    """``value`` as Plotly text that renders as exactly its text (no tag, link or template field)."""
    return html.escape(str(value), quote=False).replace("%", "&#37;")
