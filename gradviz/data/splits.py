"""Your own ID set, split in two: ``fit:[FRACTION:]SPEC`` and ``test:[FRACTION:]SPEC``.

Methods that are fitted on ID data (Mahalanobis' class means, the meta classifier, ...) must
not be scored on the images they were fitted on. ``fit:SPEC`` is a share ``FRACTION``
(default 0.5) of the set ``SPEC`` and ``test:SPEC`` the rest, so a run uses::

    RunConfig(id="test:folder:/data/mine", fit_set="fit:folder:/data/mine")
    # CLI: --id folder:/data/mine --id-split 0.5   (the same two specs)

The split is deterministic: per label (the images without a label form one group) a
permutation drawn from ``seed`` takes ``round(FRACTION × n)`` images for fitting (at least one
image stays on each side of a group of two or more); both parts come in a seeded random order,
so a ``limit`` takes a random subset of each.
"""

from __future__ import annotations

import numpy as np

from gradviz.data import ImageSet, load_dataset, register_dataset, short_spec
from gradviz.errors import DatasetError
from gradviz.reporting.plaintext import md_text

DEFAULT_FIT_FRACTION = 0.5
PARTS = ("fit", "test")


def split_indices(labels: np.ndarray, fit_fraction: float = DEFAULT_FIT_FRACTION, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, test indices): disjoint, covering every index, stratified by label, seeded."""
    if not 0.0 < float(fit_fraction) < 1.0:
        raise DatasetError(f"the fitting share must lie strictly between 0 and 1, got {fit_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fit, test = [], []
    for value in np.unique(labels):
        idx = np.flatnonzero(labels == value)
        idx = idx[rng.permutation(len(idx))]
        n_fit = int(round(fit_fraction * len(idx)))
        if len(idx) >= 2:
            n_fit = min(max(n_fit, 1), len(idx) - 1)
        fit.append(idx[:n_fit])
        test.append(idx[n_fit:])
    fit_idx, test_idx = np.concatenate(fit), np.concatenate(test)
    return fit_idx[rng.permutation(len(fit_idx))], test_idx[rng.permutation(len(test_idx))]


def split_id_set(data: ImageSet, fit_fraction: float = DEFAULT_FIT_FRACTION,
                 seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """(fitting part, test part) of ``data`` (see :func:`split_indices`)."""
    if len(data) < 2:
        raise DatasetError(f"{data.spec}: {len(data)} image(s) cannot be split into a fitting and a test part")
    fit_idx, test_idx = split_indices(data.labels, fit_fraction, seed)
    fit, test = data.subset(fit_idx), data.subset(test_idx)
    fit.spec, test.spec = split_spec("fit", data.spec, fit_fraction), split_spec("test", data.spec, fit_fraction)
    return fit, test


def split_spec(part: str, spec: str, fit_fraction: float = DEFAULT_FIT_FRACTION) -> str:
    """``split_spec("test", "folder:/x")`` -> ``"test:folder:/x"`` (the fraction is written when not 0.5)."""
    if part not in PARTS:
        raise DatasetError(f"part must be one of {PARTS}, got {part!r}")
    share = "" if float(fit_fraction) == DEFAULT_FIT_FRACTION else f"{float(fit_fraction):g}:"
    return f"{part}:{share}{spec}"


def parse_split(arg: str | None) -> tuple[float, str]:
    """``"0.3:folder:/x"`` -> (0.3, "folder:/x"); ``"mnist"`` -> (0.5, "mnist")."""
    if not arg:
        raise DatasetError("fit:/test: need the set to split, e.g. test:folder:/data/mine")
    head, _, rest = arg.partition(":")
    try:
        fraction = float(head)
    except ValueError:
        return DEFAULT_FIT_FRACTION, arg
    if not rest:
        raise DatasetError(f"fit:/test: {arg!r} names a share but no set, e.g. test:0.3:folder:/data/mine")
    return fraction, rest


def check_split(arg: str | None) -> None:
    """Refuse a ``fit:``/``test:`` argument whose share is not strictly between 0 and 1 (NaN, 1e400, 0, 2), whose
    set is itself a part, or whose set is unknown — without loading anything."""
    from gradviz.data import check_spec

    fraction, inner = parse_split(arg)
    if not 0.0 < fraction < 1.0:  # NaN and ±inf fail too
        raise DatasetError(f"the fitting share of fit:/test: must lie strictly between 0 and 1, got {fraction:g} "
                           "(e.g. fit:0.3:folder:/data/mine)")
    if inner.split(":", 1)[0] in PARTS:
        raise DatasetError(f"cannot split a part of a set again: {short_spec(arg)}")
    problem = check_spec(inner)
    if problem:
        raise DatasetError(problem)


def _load_part(part: str, arg: str | None, seed: int, allowed_roots=None) -> ImageSet:
    fraction, inner = parse_split(arg)
    if inner.split(":", 1)[0] in PARTS:
        raise DatasetError(f"cannot split a part of a set again: {part}:{arg}")
    # native images (the caller adapts them to the model); the inner spec meets the same path rules
    whole = load_dataset(inner, None, None, seed, allowed_roots=allowed_roots)
    fit, test = split_id_set(whole, fraction, seed)
    return fit if part == "fit" else test


@register_dataset("fit", "The fitting part of your own ID set (default half; stratified, seeded)",
                  example="fit:folder:/path/to/images", reads_paths=True, check=check_split)
def load_fit_part(arg: str | None, limit: int | None, seed: int, allowed_roots=None) -> ImageSet:
    return _load_part("fit", arg, seed, allowed_roots)


@register_dataset("test", "The test part of your own ID set: the images fit:SPEC does not hold",
                  example="test:folder:/path/to/images", reads_paths=True, check=check_split)
def load_test_part(arg: str | None, limit: int | None, seed: int, allowed_roots=None) -> ImageSet:
    return _load_part("test", arg, seed, allowed_roots)


def split_summary(name: str, fit: ImageSet, test: ImageSet, fit_fraction: float, seed: int | None = None,
                  model_classes: list[str] | None = None) -> str:
    """One paragraph of Markdown stating how an own ID set was split (shown on the pages), with what labels mean;
    the set's name and folder names in it are plain text (:func:`gradviz.reporting.plaintext.md_text`)."""
    classes = fit.class_names or []
    n = len(fit) + len(test)
    text = (f"**{md_text(name)}** as the ID set: {n:,} images{f' in {len(classes)} classes' if classes else ''}; "
            f"{len(fit):,} ({fit_fraction:.0%}) fit the fitted methods (Mahalanobis, kNN, ViM, the meta classifier, "
            "…) and "
            f"{len(test):,} are the ID test images that are scored — split per class"
            + (f", seed {seed}." if seed is not None else "."))
    if not classes or (fit.labels < 0).all():
        text += (" No class sub-folders: labels are unknown, so accuracy is not measured and methods that need "
                 "labels to fit (Mahalanobis) are left out.")
    elif model_classes is not None and [c for c in classes if c not in model_classes]:
        shown = ", ".join(md_text(c) for c in classes[:4]) + (", …" if len(classes) > 4 else "")
        text += (f" Folder names ({shown}) are not the model's class "
                 "names: label i is the i-th folder in sorted order, compared with the model's output i.")
    elif model_classes is not None and classes != list(model_classes)[:len(classes)]:
        text += " Note: labels follow the folders' sorted order, which differs from the model's class order."
    return text


def has_labels(data: ImageSet) -> bool:
    return bool(len(data)) and bool((np.asarray(data.labels) >= 0).any())
