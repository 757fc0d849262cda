"""One palette for methods on every chart: family → colour ramp, method → (colour, dash), and which lines
to draw by default.

A family keeps its hue range (output blue–purple, feature green–olive, gradient red–orange–brown), so a
reader sees the family at a glance; within a family each method takes the next colour of the family's
ramp, and once the ramp is used up the next dash. Every registered method therefore gets its own
(colour, dash) pair, fixed by the registry order (not by what a page happens to draw), so a method
looks the same on every page and in every export. 24 lines on one chart stay unreadable whatever the
palette: :func:`default_lines` picks the few worth drawing first.
"""

from __future__ import annotations

import hashlib
import math

__all__ = ["FAMILY_COLORS", "DASHES", "family_colors", "family_color", "family_of", "method_styles", "method_style",
           "default_lines", "MAX_DEFAULT_LINES"]

# Each ramp: well separated colours of one hue range, darkest first (the family's main colour).
FAMILY_COLORS: dict[str, list[str]] = {
    "output": ["#1f5fa8", "#17a2b8", "#6a3d9a", "#5b8def", "#0b2e59"],
    "feature": ["#2e8b3a", "#8c9a1b", "#00695c", "#74c476", "#4e5d2a"],
    "gradient": ["#d62728", "#ff7f0e", "#8c564b", "#e377c2", "#a50f15"],
    "input-gradient": ["#e6a100", "#b35806", "#f1c232", "#7f4f00", "#d9822b"],
}
SPARE_COLORS = [["#7f7f7f", "#404040", "#b0b0b0", "#595959", "#999999"],
                ["#9e4a9c", "#c994c7", "#6d1f6a", "#dd3497", "#49006a"]]
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
MAX_DEFAULT_LINES = 8


def family_colors(family: str) -> list[str]:
    """The colour ramp of a method family (unknown families get a spare grey or purple ramp)."""
    if family in FAMILY_COLORS:
        return FAMILY_COLORS[family]
    return SPARE_COLORS[int(hashlib.md5(family.encode()).hexdigest(), 16) % len(SPARE_COLORS)]


def family_color(family: str) -> str:
    """The family's main colour (e.g. the Playground gauges' bars)."""
    return family_colors(family)[0]


def _registry() -> list[tuple[str, str]]:
    from gradviz.methods.registry import list_methods

    return [(m.name, m.family) for m in list_methods()]


def family_of(method: str, families: dict[str, str] | None = None) -> str:
    """A method's family: from ``families`` when given, else the registry's, else ``other``."""
    if families and method in families:
        return families[method]
    return dict(_registry()).get(method, "other")


def method_styles(methods: list[str] | None = None,
                  families: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """{method: (colour, dash)} for ``methods`` (default: every registered one), each pair distinct.

    A method's place in its family follows the registry order, then the order of ``methods`` for names the
    registry does not know; ``families`` overrides or adds families (e.g. for plug-in scores)."""
    known = _registry()
    methods = list(methods) if methods is not None else [n for n, _ in known]
    order = list(dict.fromkeys([n for n, _ in known] + methods))
    counters: dict[str, int] = {}
    styles = {}
    for name in order:
        fam = family_of(name, families)
        k = counters.get(fam, 0)
        counters[fam] = k + 1
        ramp = family_colors(fam)
        styles[name] = (ramp[k % len(ramp)], DASHES[(k // len(ramp)) % len(DASHES)])
    return {m: styles[m] for m in methods}


def method_style(method: str, families: dict[str, str] | None = None) -> tuple[str, str]:
    """(colour, dash) of one method (see :func:`method_styles`)."""
    return method_styles([method], families)[method]


def default_lines(methods: list[str], ranking: dict[str, float] | None = None, families: dict[str, str] | None = None,
                  per_family: int = 2, limit: int = MAX_DEFAULT_LINES) -> list[str]:
    """The lines to draw first: the ``per_family`` best of each family by ``ranking`` (higher = better, e.g. AUROC;
    missing or NaN ranks last), at most ``limit`` in all, in the order of ``methods``."""
    ranking = ranking or {}

    def rank(m: str) -> float:
        v = ranking.get(m)
        return -math.inf if v is None or not math.isfinite(float(v)) else float(v)

    by_family: dict[str, list[str]] = {}
    for m in methods:
        by_family.setdefault(family_of(m, families), []).append(m)
    picked: list[str] = []
    for k in range(per_family):  # the best of every family first, then the second best, ...
        for members in by_family.values():
            best = sorted(members, key=lambda m: -rank(m))  # stable: ties keep the given order
            if k < len(best):
                picked.append(best[k])
    chosen = set(picked[:limit])
    return [m for m in methods if m in chosen]
