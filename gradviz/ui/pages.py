"""The dashboard's pages: the one list that the navigation (``app.py``), Home's links, Learn's tour and
the browser tests read. A new page is its file in ``pages/`` plus one line in :data:`PAGES`, at the place in
the navigation where it should appear."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["PageInfo", "PAGES", "page", "navigation"]


@dataclass(frozen=True)
class PageInfo:
    """One page: its script (relative to ``app.py``), sidebar title, Material icon, what it is for (one line)."""

    path: str
    title: str
    icon: str
    description: str
    charts: bool = True  # draws Plotly charts once it has run (the browser smoke test waits for them)
    default: bool = False  # the page ``/`` opens

    @property
    def key(self) -> str:
        """Short name: the script's stem (``pages/compare.py`` -> ``compare``)."""
        return Path(self.path).stem


PAGES: tuple[PageInfo, ...] = (
    PageInfo("pages/home.py", "Home", ":material/home:", "The run's metrics and a score histogram", default=True),
    PageInfo("pages/compare.py", "Compare distributions", ":material/bar_chart:", "Histograms, ROC, threshold, gallery"),
    PageInfo("pages/compare_models.py", "Compare models", ":material/compare:", "Several models on the same sets, "
             "side by side"),
    PageInfo("pages/inspect.py", "Inspect a sample", ":material/search:", "Upload an image, see its scores and saliency"),
    PageInfo("pages/playground.py", "Playground", ":material/draw:", "Draw a digit, walk it out of distribution, watch "
             "every score live", charts=False),
    PageInfo("pages/layers.py", "Layer profiles", ":material/layers:", "Which layer's gradient separates best"),
    PageInfo("pages/meta.py", "Meta classifier", ":material/calculate:", "Learn to predict errors and OOD from gradients"),
    PageInfo("pages/trust.py", "Trust", ":material/verified_user:", "Selective prediction with every score, "
             "calibration before and after temperature scaling"),
    PageInfo("pages/corruptions.py", "Corruption lab", ":material/blur_on:", "Scores as corruption severity grows"),
    PageInfo("pages/learn.py", "Learn", ":material/school:", "Each method explained with its formula", charts=False),
)


def page(path_or_key: str) -> PageInfo:
    """The registered page with this script path (``pages/compare.py``) or key (``compare``)."""
    for p in PAGES:
        if path_or_key in (p.path, p.key):
            return p
    raise KeyError(f"no page {path_or_key!r}; pages: {', '.join(p.key for p in PAGES)}")


def navigation() -> list:
    """``st.Page`` objects of every page, in order, for ``st.navigation``."""
    import streamlit as st  # here only: the registry itself is plain data (the browser tests read it)

    return [st.Page(p.path, title=p.title, icon=p.icon, default=p.default) for p in PAGES]
