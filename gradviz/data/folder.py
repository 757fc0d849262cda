"""``folder:PATH``: every image under a folder (recursive), class sub-folders as labels.

- Files: extensions .png .jpg .jpeg .bmp .tif .tiff .webp .gif (case-insensitive); hidden
  files/folders and other extensions are ignored. Each file is decoded by
  :func:`gradviz.data.images.decode_image` (same safety rules as uploads); a file that fails is
  skipped and listed in ``ImageSet.skipped`` as (relative path, reason).
- Labels: the first-level sub-folder names, sorted, become class indices (``class_names``);
  images directly in the folder get label -1. ``paths`` holds each image's relative path.
- Native size: if every image has the same size and its sides are ≤ 64 px (MNIST, CIFAR
  folders) that size is kept; otherwise every image is resized (bilinear, antialiased,
  aspect ratio not kept) to 64×64, which bounds memory: a larger image is reduced while it
  is decoded (``decode_image(fit=(64, 64))``), never held at full size as floats. Channels:
  1 if every image is grey, else 3 (grey images repeated). :func:`gradviz.data.load_dataset`
  then adapts to the model card. The decoder's notes per file land in ``ImageSet.notes``.
- At most ``limit`` (or ``MAX_FOLDER_FILES``) files are decoded: a seeded random subset
  when there are more, noted in ``skipped``. With ``max_bytes`` (the web app's bound on a
  session's own ID sets) the decoded set also stays within that many bytes: a seeded random
  subset again, noted, or a refusal with the numbers when not even one image fits.
- Path safety (web app): :func:`resolve_folder` with ``allowed_roots`` refuses any folder
  whose resolved path (symlinks and ``..`` resolved) is outside the roots, and answers a
  folder that is outside, missing, not a folder or unreadable with the *same* message (no
  oracle for what exists on the server). Relative paths are taken from the first root.
  While walking, symbolic links (files or folders) that resolve outside the chosen folder
  are skipped and listed. Paths longer than ``MAX_PATH_CHARS`` are refused before any
  file-system call. Anything that is not a regular file (a named pipe, a device, a socket),
  whatever its name, is skipped and listed without being opened for reading: opening a FIFO
  would wait forever for a writer. The file is checked again on the open handle.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gradviz.data import ImageSet, register_dataset, short_spec
from gradviz.errors import DatasetError, ImageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
MAX_FOLDER_FILES = 10_000
FOLDER_SIZE = 64  # common side when sizes differ or exceed it
MAX_FILE_MB = 64
MAX_PATH_CHARS = 1024


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_folder(path: str | os.PathLike, allowed_roots: Sequence[str | os.PathLike] | None = None) -> Path:
    """The resolved folder for ``path``; with ``allowed_roots``, refuse anything outside them.

    Relative paths are taken relative to the first allowed root when roots are given
    (else to the working directory). Symlinks and ``..`` are resolved before the check. With
    roots, "outside", "missing", "not a folder" and "unreadable" share one message.
    """
    return resolve_path(path, allowed_roots, noun="folder")


def resolve_path(path: str | os.PathLike, allowed_roots: Sequence[str | os.PathLike] | None = None,
                 noun: str = "folder") -> Path:
    """:func:`resolve_folder` for a ``noun`` = "folder" or a file (any other noun, e.g. "zip file"):
    the same checks and, with roots, the same one answer for outside / missing / wrong kind / unreadable."""
    want_dir = noun == "folder"
    example = "folder:/data/my_images" if want_dir else "zip:/data/my_images.zip"
    raw = str(path).strip() if path is not None else ""
    if not raw:
        raise DatasetError(f"{noun} needs a path, e.g. {example}")
    if len(raw) > MAX_PATH_CHARS or "\x00" in raw:
        what = (f"{len(raw):,} characters; at most {MAX_PATH_CHARS:,}" if len(raw) > MAX_PATH_CHARS
                else "a NUL character")
        raise DatasetError(f"{noun} path {short_spec(raw)!r} is not a usable path ({what})")

    def usable(p: Path) -> bool:
        return p.is_dir() and os.access(p, os.R_OK | os.X_OK) if want_dir else p.is_file() and os.access(p, os.R_OK)

    if allowed_roots is None:
        try:
            resolved = Path(raw).expanduser().resolve()
            if usable(resolved):
                return resolved
        except (OSError, RuntimeError) as exc:  # ENAMETOOLONG, ELOOP, EACCES, ...
            why = getattr(exc, "strerror", None) or type(exc).__name__
            raise DatasetError(f"{noun} {short_spec(raw)!r} cannot be read ({why})") from None
        raise DatasetError(f"{noun} {short_spec(raw)!r} does not exist or is not a {'folder' if want_dir else 'file'}")
    roots = [Path(r).expanduser().resolve() for r in allowed_roots]
    names = ", ".join(str(r) for r in roots)
    refused = DatasetError(f"{noun} {short_spec(raw)!r} is not available: give an existing {noun} under the allowed "
                           f"data roots ({names or 'none on this server'})")
    if not roots:
        raise refused
    try:
        p = Path(raw).expanduser()
        resolved = (p if p.is_absolute() else roots[0] / p).resolve()
        if any(_inside(resolved, r) for r in roots) and usable(resolved):
            return resolved
    except (OSError, RuntimeError, ValueError):
        pass  # too long, a loop, no permission: the same answer as "not there"
    raise refused


def _special_kind(mode: int) -> str | None:
    """What a non-regular file is ("named pipe (FIFO)", ...), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
             (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "folder"))
    return next((name for test, name in kinds if test(mode)), "special file")


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; ImageError for anything else.

    Opened without blocking and checked on the handle, so a FIFO or device swapped in after the
    folder was listed is refused instead of waited on (or read without end).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        kind = _special_kind(info.st_mode)
        if kind:
            raise ImageError(f"not a regular file ({kind}): not read")
        if info.st_size > max_bytes:
            raise ImageError(f"larger than {max_bytes / 2**20:.0f} MB")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageError(f"larger than {max_bytes / 2**20:.0f} MB")
    return data


def _image_files(root: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files under ``root`` (sorted, relative) and symlinks skipped for pointing outside it."""
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    visited = {root}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            sub = here / d
            real = sub.resolve()
            if not _inside(real, root):
                skipped.append((sub.relative_to(root).as_posix(), "symbolic link points outside the folder"))
            elif real not in visited:  # a link back into the tree would loop
                visited.add(real)
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            f = here / name
            rel = f.relative_to(root)
            if f.is_symlink() and not _inside(f.resolve(), root):
                skipped.append((rel.as_posix(), "symbolic link points outside the folder"))
                continue
            try:
                kind = _special_kind(os.stat(f).st_mode)  # stat never blocks, unlike open on a FIFO
            except OSError as exc:
                skipped.append((rel.as_posix(), f"cannot be read ({exc.strerror or type(exc).__name__})"))
                continue
            if kind:
                skipped.append((rel.as_posix(), f"not a regular file ({kind}): not read"))
                continue
            files.append(rel)
    return sorted(files, key=lambda r: r.as_posix()), skipped


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) -> (C, *size), bilinear with antialiasing."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp_(0, 1)


def _side_lengths(x: torch.Tensor) -> tuple[int, int]:
    """(H, W) of a (C, H, W) image."""
    return int(x.shape[-2]), int(x.shape[-1])


def _final_shape(channels: int, sizes: set[tuple[int, int]]) -> tuple[int, int, int]:
    """(C, H, W) every image is stacked at: one common size if they share it, else FOLDER_SIZE²."""
    h, w = next(iter(sizes)) if len(sizes) == 1 else (FOLDER_SIZE, FOLDER_SIZE)
    return channels, h, w


def load_folder(path: str | os.PathLike, allowed_roots: Sequence[str | os.PathLike] | None = None,
                limit: int | None = None, seed: int = 0, max_bytes: int | None = None,
                bytes_setting: str = "") -> ImageSet:
    """Load every image under ``path`` (see module doc); refuses folders outside ``allowed_roots`` when given.

    ``max_bytes``: the decoded set (float32, as stacked) holds at most this many bytes. The files are then
    decoded in a seeded random order until the next one would pass it, so the images kept are a random
    subset (stated in ``skipped``, with ``bytes_setting`` naming the bound); DatasetError with the numbers
    when not even one image fits."""
    from gradviz.data.images import decode_image

    root = resolve_folder(path, allowed_roots)
    files, skipped = _image_files(root)
    if not files:
        raise DatasetError(f"no image files ({', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))}) found in folder "
                           f"{short_spec(path)!r}")
    cap = int(limit) if limit else MAX_FOLDER_FILES
    if len(files) > cap:
        keep = np.sort(np.random.default_rng(seed).choice(len(files), cap, replace=False))
        skipped.append((".", f"only {cap} of {len(files)} image files loaded (random subset, seed {seed})"))
        files = [files[i] for i in keep]
    class_names = sorted({f.parts[0] for f in files if len(f.parts) > 1}) or None
    class_index = {c: i for i, c in enumerate(class_names or [])}
    arrays: list[torch.Tensor] = []
    labels: list[int] = []
    paths: list[str] = []
    notes: list[tuple[str, str]] = []
    pixels = 0
    order = range(len(files)) if max_bytes is None else np.random.default_rng(seed).permutation(len(files))
    kept: list[int] = []
    channels, sizes = 1, set[tuple[int, int]]()
    for i in order:
        rel = files[i]
        full = root / rel
        try:
            decoded = decode_image(read_regular_file(full, MAX_FILE_MB * 2**20), rel.as_posix(),
                                   max_bytes=MAX_FILE_MB * 2**20,
                                   fit=(FOLDER_SIZE, FOLDER_SIZE))  # larger images: reduced while decoding
        except (ImageError, OSError) as exc:
            skipped.append((rel.as_posix(), str(exc)))
            continue
        x = torch.from_numpy(decoded.array)  # (C, H, W), sides ≤ FOLDER_SIZE
        if max_bytes is not None:  # the bytes of the stacked set with this image, before keeping it
            shape = _final_shape(max(channels, x.shape[0]), sizes | {_side_lengths(x)})
            if 4 * (len(arrays) + 1) * int(np.prod(shape)) > max_bytes:
                _refuse_or_note(len(arrays), len(files), shape, max_bytes, bytes_setting, seed, skipped)
                break
            channels, sizes = shape[0], sizes | {_side_lengths(x)}
        if decoded.note:
            notes.append((rel.as_posix(), decoded.note))
        pixels += decoded.pixels
        arrays.append(x)
        kept.append(int(i))
        labels.append(class_index[rel.parts[0]] if len(rel.parts) > 1 else -1)
        paths.append(rel.as_posix())
    if max_bytes is not None and arrays:  # back to the files' sorted order
        back = np.argsort(kept, kind="stable")
        arrays, labels, paths = [arrays[j] for j in back], [labels[j] for j in back], [paths[j] for j in back]
    if not arrays:
        first = f"; first problem: {skipped[-1][0]}: {skipped[-1][1]}" if skipped else ""
        raise DatasetError(f"none of the {len(files)} image files in folder {short_spec(path)!r} could be read{first}")
    channels = 1 if all(a.shape[0] == 1 for a in arrays) else 3
    sizes = {_side_lengths(a) for a in arrays}
    size = sizes.pop() if len(sizes) == 1 else (FOLDER_SIZE, FOLDER_SIZE)
    images = torch.stack([_resize(a, size).expand(channels, -1, -1) for a in arrays]).contiguous()  # (N, C, H, W)
    return ImageSet(f"folder:{path}", images, np.asarray(labels, dtype=np.int64), paths, class_names, skipped, notes,
                    pixels)


def _refuse_or_note(n_kept: int, n_files: int, shape: tuple[int, int, int], max_bytes: int, setting: str,
                    seed: int, skipped: list[tuple[str, str]]) -> None:
    """Where ``load_folder``'s byte bound stops it: a DatasetError when nothing fits, else a note in ``skipped``."""
    each = 4 * int(np.prod(shape)) / 2**20
    bound = f"{max_bytes / 2**20:,.0f} MB{f' ({setting})' if setting else ''}"
    if n_kept == 0:
        raise DatasetError(f"not even one of the {n_files:,} images fits: decoded at {'×'.join(map(str, shape))} "
                           f"(float32) each takes {each:.2f} MB, and the bound is {bound}")
    skipped.append((".", f"only {n_kept:,} of {n_files:,} image files loaded (random subset, seed {seed}): decoded at "
                         f"{'×'.join(map(str, shape))} ({each:.2f} MB each) they fill the bound of {bound}"))


@register_dataset("folder", "Every image under a folder (recursive); class sub-folders become labels",
                  example="folder:/path/to/images", reads_paths=True)
def load_folder_spec(arg: str | None, limit: int | None, seed: int,
                     allowed_roots: Sequence[str | os.PathLike] | None = None) -> ImageSet:
    return load_folder(arg or "", allowed_roots, limit, seed)
