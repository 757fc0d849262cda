"""``zip:PATH``, and zip uploads: a .zip of images as a dataset (class sub-folders become labels).

The archive is untrusted. Every member is checked from the central directory before any byte
is decompressed, and the whole archive is **refused** (one :class:`DatasetError` naming the
member) for:

- a path that escapes the archive (``../``, a drive letter) or is absolute ("zip slip"),
- a symbolic link member,
- a zip bomb: more than ``MAX_MEMBERS`` members, a total uncompressed size over the limit
  (``GRADVIZ_MAX_ZIP_MB`` × ``UNCOMPRESSED_FACTOR``) or over ``MAX_RATIO`` × the archive's own
  size (whole-archive ratio, so many small members cannot add up to a bomb), or a member over
  ``SMALL_MEMBER_BYTES`` whose compression ratio exceeds ``MAX_RATIO`` (no member is read past its
  declared size, so a lying header gains nothing and the bytes written stay under the same bound),
- an encrypted member.

Members that are merely not wanted are **skipped** and listed in ``ImageSet.skipped``: nested
archives (.zip, .tar, .gz, .7z, ...), files without an image extension, hidden files and
``__MACOSX/`` metadata, and files that do not decode as images (gradviz.data.images rules).

The wanted members are written, with their checked relative paths, into a fresh temporary
folder that is removed before the function returns, and read there by
:func:`gradviz.data.folder.load_folder` (same labels, sizes and decoding as ``folder:``). Nothing
is written anywhere else. A single top-level folder wrapping everything (``digits/0/a.png``)
is not taken as a class.
"""

from __future__ import annotations

import hashlib
import io
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from gradviz.config import settings
from gradviz.data import ImageSet, register_dataset
from gradviz.errors import DatasetError, ImageError

MAX_MEMBERS = 20_000
MAX_RATIO = 100  # uncompressed / compressed per member; images rarely compress beyond ~10
UNCOMPRESSED_FACTOR = 4  # total uncompressed bytes allowed = this × the archive size limit
SMALL_MEMBER_BYTES = 16 * 2**10  # tiny members (headers, blank icons) may compress better than MAX_RATIO
MIN_ARCHIVE_BYTES = 64 * 2**10  # the whole-archive ratio is taken over at least this many archive bytes
ARCHIVE_EXTENSIONS = frozenset({".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".jar", ".whl", ".zst"})
ARCHIVE_MAGIC = (b"PK\x03\x04", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07")


def _safe_parts(name: str) -> tuple[str, ...]:
    """The member's path parts, or a DatasetError when the path is absolute or escapes the archive."""
    raw = name.replace("\\", "/")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise DatasetError(f"refused archive: member {name!r} has an absolute path")
    parts = tuple(p for p in PurePosixPath(raw).parts if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise DatasetError(f"refused archive: member {name!r} points outside the archive (../ path, 'zip slip')")
    return parts


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)  # 3 = Unix


def _check_size(archive_bytes: int, max_mb: int | None) -> int:
    limit = int(max_mb or settings().max_zip_mb) * 2**20
    if archive_bytes > limit:
        raise DatasetError(f"refused archive: {archive_bytes / 2**20:.1f} MB exceeds the limit of "
                           f"{limit / 2**20:.0f} MB (GRADVIZ_MAX_ZIP_MB)")
    return limit


def check_members(archive: zipfile.ZipFile, archive_bytes: int, max_mb: int | None = None
                  ) -> tuple[list[tuple[zipfile.ZipInfo, tuple[str, ...]]], list[tuple[str, str]]]:
    """(members to read with their relative parts, skipped (name, reason)); refuses unsafe archives."""
    from gradviz.data.folder import IMAGE_EXTENSIONS

    limit = _check_size(archive_bytes, max_mb)
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise DatasetError(f"refused archive: {len(infos):,} members exceed the limit of {MAX_MEMBERS:,}")
    # whole archive: every member's bytes together, at most MAX_RATIO × the archive (and the absolute cap)
    cap = min(UNCOMPRESSED_FACTOR * limit, MAX_RATIO * max(archive_bytes, MIN_ARCHIVE_BYTES))
    total = 0
    keep, skipped = [], []
    for info in infos:
        parts = _safe_parts(info.filename)
        if _is_symlink(info):
            raise DatasetError(f"refused archive: member {info.filename!r} is a symbolic link")
        if info.is_dir() or not parts:
            continue
        if info.flag_bits & 0x1:
            raise DatasetError(f"refused archive: member {info.filename!r} is encrypted")
        if info.file_size > SMALL_MEMBER_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            ratio = info.file_size / max(info.compress_size, 1)
            raise DatasetError(f"refused archive: member {info.filename!r} expands {ratio:,.0f}× "
                               f"(limit {MAX_RATIO}×; possible zip bomb)")
        total += info.file_size
        if total > cap:
            raise DatasetError(f"refused archive: it unpacks to more than {cap / 2**20:,.0f} MB, over {MAX_RATIO}× "
                               f"its own size or {UNCOMPRESSED_FACTOR * limit / 2**20:,.0f} MB (possible zip bomb)")
        rel = "/".join(parts)
        suffix = PurePosixPath(parts[-1]).suffix.lower()
        if any(p.startswith(".") for p in parts) or parts[0] == "__MACOSX":
            continue  # hidden files and macOS resource forks: not data
        if suffix in ARCHIVE_EXTENSIONS:
            skipped.append((rel, "nested archive: not opened"))
        elif suffix not in IMAGE_EXTENSIONS:
            skipped.append((rel, f"not an image file ({suffix or 'no extension'})"))
        else:
            keep.append((info, parts))
    return keep, skipped


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The member's bytes, never more than its declared size (a lying header is refused)."""
    with archive.open(info) as fh:
        data = fh.read(info.file_size + 1)
    if len(data) > info.file_size:
        raise DatasetError(f"refused archive: member {info.filename!r} holds more data than its header says")
    return data


def load_zip_bytes(data: bytes, name: str = "upload.zip", limit: int | None = None, seed: int = 0,
                   max_mb: int | None = None, max_bytes: int | None = None, bytes_setting: str = "") -> ImageSet:
    """An :class:`ImageSet` from the bytes of a .zip of images (see the module doc for what is refused);
    ``max_bytes`` bounds the decoded images (:func:`gradviz.data.folder.load_folder`)."""
    from gradviz.data.folder import load_folder

    _check_size(len(data), max_mb)
    try:
        archive = zipfile.ZipFile(io.BytesIO(bytes(data)))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DatasetError(f"{name}: not a readable .zip archive ({exc})") from None
    with archive:
        keep, skipped = check_members(archive, len(data), max_mb)
        if not keep:
            raise DatasetError(f"{name}: no image files (png, jpg, bmp, tif, webp, gif) in the archive"
                               + (f"; skipped: {skipped[0][0]} ({skipped[0][1]})" if skipped else ""))
        # one folder wrapping everything is the archive's name, not a class
        tops = {parts[0] for _, parts in keep}
        strip = 1 if len(tops) == 1 and all(len(parts) > 1 for _, parts in keep) else 0
        # bytes written <= the sum of declared sizes (checked above): _read_member never reads past one
        with tempfile.TemporaryDirectory(prefix="gradviz-zip-") as tmp:
            root = Path(tmp).resolve()
            for info, parts in keep:
                target = root.joinpath(*parts[strip:])
                if root not in target.resolve().parents:  # belt and braces after _safe_parts
                    raise DatasetError(f"refused archive: member {info.filename!r} points outside the archive")
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(_read_member(archive, info))
                except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as exc:
                    skipped.append(("/".join(parts), f"damaged member ({type(exc).__name__})"))
                except RuntimeError as exc:  # zipfile: CRC / decompression problems
                    skipped.append(("/".join(parts), f"damaged member ({exc})"))
            try:
                data_set = load_folder(root, allowed_roots=[root], limit=limit, seed=seed, max_bytes=max_bytes,
                                       bytes_setting=bytes_setting)
            except DatasetError as exc:  # name the archive, never the temporary folder
                raise DatasetError(f"{name}: {str(exc).replace(str(root), '.')}") from None
    data_set.skipped = skipped + list(data_set.skipped)
    data_set.spec = f"zip:{name}"
    return data_set


def zip_digest(data: bytes) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()[:8]


@register_dataset("zip", "A .zip of images (class sub-folders become labels; unsafe archives refused)",
                  example="zip:/path/to/images.zip", reads_paths=True)
def load_zip_spec(arg: str | None, limit: int | None, seed: int, allowed_roots=None) -> ImageSet:
    """A zip file on the server: anywhere for the CLI; in the web app only under the allowed roots (the same
    one answer as ``folder:`` for outside / missing / not a file)."""
    from gradviz.data.folder import read_regular_file, resolve_path

    path = resolve_path(arg or "", allowed_roots, noun="zip file")
    max_bytes = settings().max_zip_mb * 2**20
    if path.stat().st_size > max_bytes:
        raise DatasetError(f"refused archive: {path.stat().st_size / 2**20:.1f} MB exceeds the limit of "
                           f"{settings().max_zip_mb} MB (GRADVIZ_MAX_ZIP_MB)")
    try:
        data = read_regular_file(path, max_bytes)  # a FIFO swapped in after the check is not waited on
    except (ImageError, OSError) as exc:
        raise DatasetError(f"zip file {path.name!r} cannot be read: {exc}") from None
    return load_zip_bytes(data, path.name, limit, seed)
