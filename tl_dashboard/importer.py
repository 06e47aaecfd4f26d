"""Bring images in safely: zip archives, browser uploads and webcam captures.

:func:`import_zip` reads the whole central directory before writing a byte: path escapes,
absolute paths, symlinks, encrypted members, too many members, too many bytes and zip bombs
refuse the whole archive (a zip bomb: >= 64 MiB expanding over 100:1, per member or in all).
It then extracts with a running byte budget into a fresh folder, validates every image with
:func:`tl_dashboard.data.check_image` (the check ``scan_images`` runs) and removes the bad ones.
:func:`save_images` does the same for single uploads. :func:`resolve_allowed_path` (the
shared-server guard for folders typed into the UI) lives in :mod:`.pathguard` and is re-exported here.

This module never imports streamlit.

Example:
    >>> report = import_zip("pets.zip")                      # doctest: +SKIP
    >>> split = scan_images(report.root)                     # doctest: +SKIP
"""

from __future__ import annotations

import io
import os
import re
import secrets
import stat
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Sequence

from PIL import Image

from .data import IMAGE_EXTENSIONS, Skipped, check_image, env_number
from .errors import UserError
from .limits import check_upload
from .pathguard import PathNotAllowed, resolve_allowed_path  # re-exported: pages and tests use importer's names

__all__ = [
    "ArchiveError",
    "PathNotAllowed",
    "ImportReport",
    "DEFAULT_MAX_TOTAL_BYTES",
    "DEFAULT_MAX_FILES",
    "datasets_dir",
    "new_upload_dir",
    "safe_name",
    "sort_folder_upload",
    "import_zip",
    "save_images",
    "safe_member_path",
    "resolve_allowed_path",
]

DEFAULT_MAX_TOTAL_BYTES = 2 * 2**30  # uncompressed bytes an import may write; env TL_MAX_UPLOAD_GB overrides
DEFAULT_MAX_FILES = 20_000  # members an archive may hold; env TL_MAX_UPLOAD_FILES overrides
_MAX_RATIO = 100  # uncompressed/compressed above this (on >= _RATIO_FLOOR bytes) looks like a zip bomb
_RATIO_FLOOR = 64 * 2**20
_CHUNK = 2**20
_NAME_MAX = 255  # bytes per path component on common file systems
_HIDDEN_DIRS = ("__MACOSX",)
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
_FORMAT_EXT = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif"}
_CLASH = "name clashes with another member (a duplicate, a file where a folder is, or a case-only difference)"
_MEMBER_FIX = "re-create the zip from inside the data folder so every member has a plain relative path"


class ArchiveError(UserError, ValueError):
    """An archive refused for safety or format; str() is one line naming the archive, the member and the fix."""


@dataclass
class ImportReport:
    """What an import wrote and what it left out."""

    root: Path  # the data folder the images landed in: pass it to scan_images
    written: list[Path] = field(default_factory=list)  # every image kept, absolute paths
    skipped: list[Skipped] = field(default_factory=list)  # not kept, with a one-line reason (archive names)


def datasets_dir() -> Path:
    """Returns: the folder uploads go to (env ``TL_DATASETS_DIR`` or ``./datasets``), created if missing."""
    d = Path(os.environ.get("TL_DATASETS_DIR") or "datasets").expanduser().absolute()
    if d.exists() and not d.is_dir():
        raise NotADirectoryError(f"Datasets folder {d} is a file; point TL_DATASETS_DIR at a folder.")
    d.mkdir(parents=True, exist_ok=True)
    return d


def safe_name(text: str, fallback: str = "dataset") -> str:
    """A folder-safe name for a data set or class: letters, digits, '-' and '_' only, at most 60.

    Example:
        >>> safe_name("my cats!"), safe_name("...", "upload")
        ('my_cats', 'upload')
    """
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text).strip())
    return cleaned.strip("_")[:60] or fallback


def new_upload_dir(prefix: str = "upload") -> Path:
    """Create a fresh, empty folder ``datasets_dir()/f"{prefix}-YYYYmmdd-HHMMSS-xxxx"``.

    Args:
        prefix: Letters, digits, ``_``, ``-`` or ``.``; must not start with a dot.

    Returns:
        The new folder; never one that existed before (``mkdir`` without ``exist_ok``).

    Raises:
        ValueError: ``prefix`` is empty or holds other characters.
    """
    if not re.fullmatch(r"[\w.-]+", prefix or "") or prefix.startswith("."):
        raise ValueError(f"prefix={prefix!r} must be letters, digits, '_', '-' or '.', not starting with a dot.")
    base = datasets_dir()
    while True:
        d = base / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue


def _member_parts(name: str) -> tuple[str, ...]:
    """Split an archive name into plain path parts ('' and '.' dropped). Raises ArchiveError when unsafe."""
    if "\x00" in name:
        raise ArchiveError(f"member {name!r} contains a NUL byte; {_MEMBER_FIX}.")
    posix = name.replace("\\", "/")
    if posix.startswith("/"):
        raise ArchiveError(f"member {name!r} is an absolute path; {_MEMBER_FIX}.")
    parts = tuple(p for p in posix.split("/") if p not in ("", "."))
    if parts and re.match(r"[A-Za-z]:", parts[0]):
        raise ArchiveError(f"member {name!r} starts with a drive letter; {_MEMBER_FIX}.")
    if ".." in parts:
        raise ArchiveError(f"member {name!r} leaves the target folder ('..' in its path); {_MEMBER_FIX}.")
    for p in parts:
        try:
            too_long = len(os.fsencode(p)) > _NAME_MAX
        except UnicodeError:
            raise ArchiveError(f"member {name!r} has a name this file system cannot store; rename it.") from None
        if too_long:
            raise ArchiveError(f"member {name!r} has a name part over {_NAME_MAX} bytes; shorten it.")
    return parts


def safe_member_path(name: str, dest: Path) -> Path:
    """Map an archive member name to a path inside ``dest`` (backslashes count as separators).

    Args:
        name: Member name as stored in the archive.
        dest: Folder the archive is extracted into (need not exist).

    Returns:
        ``dest`` joined with the member's parts; always inside ``dest``.

    Raises:
        ArchiveError: ``name`` is empty, absolute (``/x``, ``\\\\server\\x``), has a drive letter
            (``C:\\x``), a ``..`` part, a NUL byte or a part too long for the file system.
    """
    try:
        parts = _member_parts(name)
    except ArchiveError as exc:
        raise ArchiveError(f"Refused archive {exc}") from None
    if not parts:
        raise ArchiveError(f"Refused archive member {name!r}: its path is empty; {_MEMBER_FIX}.")
    base = os.path.abspath(dest)
    out = os.path.join(base, *parts)
    if os.path.commonpath([base, out]) != base:  # unreachable after the checks above; kept as a last guard
        raise ArchiveError(f"Refused archive member {name!r}: it leaves {base}; {_MEMBER_FIX}.")
    return Path(out)


def _limits(max_total_bytes: int | None, max_files: int | None) -> tuple[int, int]:
    if max_total_bytes is None:
        max_total_bytes = max(1, int(env_number("TL_MAX_UPLOAD_GB", DEFAULT_MAX_TOTAL_BYTES / 2**30) * 2**30))
    if max_files is None:
        max_files = max(1, int(env_number("TL_MAX_UPLOAD_FILES", DEFAULT_MAX_FILES)))
    for key, v in (("max_total_bytes", max_total_bytes), ("max_files", max_files)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{key}={v!r} must be a positive int (or None for the default).")
    return max_total_bytes, max_files


def _member_name(info: zipfile.ZipInfo) -> str:
    """The member's name; UTF-8 names stored without the UTF-8 flag are decoded as UTF-8, not cp437."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except UnicodeError:
        return info.filename


def _declared_size(info: zipfile.ZipInfo) -> int:
    """The one place that reads a member's declared size (tests patch it to simulate lying headers)."""
    return info.file_size


def _hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p in _HIDDEN_DIRS for p in parts)


def _skip_reason(parts: tuple[str, ...]) -> str | None:
    if _hidden(parts):
        return "hidden file"
    suffix = PurePosixPath(parts[-1]).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        return f"not an image (extension {suffix})" if suffix else "not an image (no extension)"
    return None


def _plan(zf: zipfile.ZipFile, label: str, max_total: int, max_files: int) -> list[tuple]:
    """Check every member before anything is written. Returns: ``(info, name, parts, skip_reason|"dir"|None)``."""
    infos = zf.infolist()
    refuse = f"Refused zip {label!r}:"
    if len(infos) > max_files:
        raise ArchiveError(
            f"{refuse} it holds {len(infos)} members, above the limit of {max_files} (first one "
            f"over: {_member_name(infos[max_files])!r}); split it into smaller zips or raise "
            "TL_MAX_UPLOAD_FILES."
        )
    plan, total, packed = [], 0, 0
    for info in infos:
        name = _member_name(info)
        try:
            parts = _member_parts(name)
        except ArchiveError as exc:
            raise ArchiveError(f"{refuse} {exc}") from None
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise ArchiveError(
                f"{refuse} member {name!r} is a symbolic link; links are never extracted. "
                "Zip the real files instead (zip without --symlinks)."
            )
        if info.is_dir() or kind == stat.S_IFDIR:
            plan.append((info, name, parts, "dir"))
            continue
        if kind not in (0, stat.S_IFREG):
            raise ArchiveError(f"{refuse} member {name!r} is a device, pipe or socket, not a regular file; remove it.")
        if not parts:
            raise ArchiveError(f"{refuse} member {name!r} has an empty path; {_MEMBER_FIX}.")
        reason = _skip_reason(parts)
        plan.append((info, name, parts, reason))
        if reason:
            continue
        if info.flag_bits & 0x1:
            raise ArchiveError(
                f"{refuse} member {name!r} is encrypted; password-protected zips are not supported. "
                "Zip the images again without a password."
            )
        if info.compress_type not in _METHODS:
            raise ArchiveError(
                f"{refuse} member {name!r} uses compression method {info.compress_type}, which is not "
                "supported; zip it again with standard Deflate."
            )
        size = _declared_size(info)
        if size >= _RATIO_FLOOR and size > _MAX_RATIO * max(info.compress_size, 1):
            raise ArchiveError(
                f"{refuse} member {name!r} expands {info.compress_size} bytes to "
                f"{size / 2**20:.0f} MiB (over {_MAX_RATIO}:1), which looks like a zip bomb; if it "
                "is a real image, save it as PNG or JPEG and zip again."
            )
        total, packed = total + size, packed + info.compress_size
        if total > max_total:
            raise ArchiveError(
                f"{refuse} its images add up to over {max_total / 2**30:.2f} GiB uncompressed at "
                f"member {name!r}; split it into smaller zips or raise TL_MAX_UPLOAD_GB."
            )
    if total >= _RATIO_FLOOR and total > _MAX_RATIO * max(packed, 1):
        worst = max((p for p in plan if p[3] is None), key=lambda p: _declared_size(p[0]))
        raise ArchiveError(
            f"{refuse} {packed} compressed bytes expand to {total / 2**20:.0f} MiB (over "
            f"{_MAX_RATIO}:1, largest member {worst[1]!r}), which looks like a zip bomb; zip the "
            "original images again."
        )
    return plan


def _make_dirs(dest: Path, parts: Sequence[str], created: list[Path]) -> Path:
    """Create ``dest/parts`` one level at a time, never through a symlink. Returns: the folder."""
    d = dest
    for p in parts:
        d = d / p
        try:
            os.mkdir(d)
            created.append(d)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(d).st_mode):
                raise NotADirectoryError(d) from None
    return d


def _remove(files: Sequence[Path], dirs: Sequence[Path]) -> None:
    """Delete what this import wrote: files, then folders deepest first (only if empty)."""
    for f in files:
        Path(f).unlink(missing_ok=True)
    for d in reversed(dirs):
        try:
            os.rmdir(d)
        except OSError:
            pass


def _check_image(path: Path, shown: str | None = None) -> str | None:
    """:func:`data.check_image`, naming the file ``shown`` (e.g. the upload's name, not its temp file)."""
    reason = check_image(path)
    return reason.replace(path.name, shown) if reason and shown else reason


def _data_root(dest: Path) -> Path:
    """Descend through single wrapping folders (``pets/cats``, ``pets/dogs`` -> ``pets``)."""
    root = dest
    while True:
        with os.scandir(root) as it:
            entries = list(it)
        if len(entries) != 1 or not entries[0].is_dir(follow_symlinks=False):
            return root
        with os.scandir(entries[0].path) as it:
            if not any(e.is_dir(follow_symlinks=False) for e in it):
                return root
        root = Path(entries[0].path)


def import_zip(
    source: str | Path | bytes | BinaryIO, into: Path | None = None, *, max_total_bytes: int | None = None, max_files: int | None = None
) -> ImportReport:
    """Safely extract the images of a zip archive into a new data folder.

    Every member is checked from the central directory before anything is written; one unsafe
    member refuses the whole archive. Images are then streamed out under a running byte budget
    and decoded once; hidden files, non-images and bad images are left out and reported.

    Args:
        source: Path of a zip, its bytes, or a binary file (e.g. a Streamlit upload; a
            non-seekable stream is read into memory first).
        into: Target folder, new or empty. ``None``: a fresh :func:`new_upload_dir`.
        max_total_bytes: Most uncompressed bytes the images may add up to (declared and
            actual). ``None``: env ``TL_MAX_UPLOAD_GB`` (GiB) or 2 GiB.
        max_files: Most members the archive may hold. ``None``: env ``TL_MAX_UPLOAD_FILES`` or 20 000.

    Returns:
        An :class:`ImportReport`. ``root`` skips single wrapping folders, so
        ``scan_images(report.root)`` works directly; ``written`` may be empty; ``skipped``
        names members as the archive does. Folders left empty by removed images are pruned.

    Raises:
        ArchiveError: Not a zip; ``into`` is a file or not empty; a member escapes the folder,
            is absolute, a symlink or encrypted; too many members or bytes; a likely zip bomb;
            or a member is corrupt. Nothing this call wrote is left on disk.
        limits.UploadTooLarge: over the host's ``TL_MAX_UPLOAD_MB`` or ``TL_MAX_DATASETS_GB``;
        storage.DiskFull: the images do not fit on the disk. Both before a byte is written.
        FileNotFoundError: ``source`` is a path that does not exist.
    """
    max_total, max_n = _limits(max_total_bytes, max_files)
    label = str(source) if isinstance(source, (str, os.PathLike)) else str(getattr(source, "name", "uploaded zip"))
    dest = _check_dest(into, label)
    with _open_zip(source, label) as zf:
        plan = _plan(zf, label, max_total, max_n)
        check_upload(
            _size_of(zf.fp),
            sum(info.file_size for info, _n, _p, why in plan if not why),  # before a byte
            dest or datasets_dir(),
            f"the zip {label!r}",
        )
        dest, made = _make_dest(dest)  # made: dest and missing parents, created here; removed again on failure
        report = ImportReport(root=dest)
        created: list[Path] = []  # folders created inside dest, parents first
        files: list[tuple[Path, str]] = []  # (written file, member name)
        try:
            _extract(zf, plan, dest, report, created, files, max_total, label)
            with ThreadPoolExecutor(max_workers=2) as pool:
                reasons = list(pool.map(_check_image, [f for f, _ in files]))
        except BaseException:
            _remove([f for f, _ in files], made + created)
            raise
    for (f, member), why in zip(files, reasons):
        if why is None:
            report.written.append(f)
        else:
            f.unlink(missing_ok=True)
            report.skipped.append(Skipped(Path(member), why))
    _remove([], created)  # prune folders left empty (a class of only bad images would break scan_images)
    report.root = _data_root(dest)
    report.skipped.sort(key=lambda s: s.path.as_posix())
    return report


def _check_dest(into: Path | None, label: str) -> Path | None:
    """The target folder, absolute; refused if it is a file or holds anything."""
    dest = None if into is None else Path(into).expanduser().absolute()
    if dest is not None and (dest.is_symlink() or dest.exists()):
        if not dest.is_dir():
            raise ArchiveError(
                f"Refused to extract {label!r} into {dest}: it is not a folder; pick a new or empty "
                "folder, or leave `into` unset for a fresh one."
            )
        if any(dest.iterdir()):
            raise ArchiveError(
                f"Refused to extract {label!r} into {dest}: the folder is not empty and nothing in it "
                "is overwritten; pick a new or empty folder, or leave `into` unset for a fresh one."
            )
    return dest


def _open_zip(source: str | Path | bytes | BinaryIO, label: str) -> zipfile.ZipFile:
    fp = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    if not isinstance(fp, (str, os.PathLike)) and not fp.seekable():  # zipfile needs to seek to the directory
        fp = io.BytesIO(fp.read())
    try:
        return zipfile.ZipFile(fp)
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise ArchiveError(
            f"{label!r} is not a zip archive ({str(exc).splitlines()[0] if str(exc) else exc!r}); "
            "upload a .zip of a folder with one sub-folder per class."
        ) from None


def _make_dest(dest: Path | None) -> tuple[Path, list[Path]]:
    """Create the target folder (a fresh upload folder when None). Returns: it, and what was created."""
    if dest is None:
        dest = new_upload_dir("upload")
        return dest, [dest]
    made = list(reversed([p for p in (dest, *dest.parents) if not p.exists()]))
    for d in made:
        d.mkdir(exist_ok=True)
    return dest, made


def _extract(
    zf: zipfile.ZipFile,
    plan: list[tuple],
    dest: Path,
    report: ImportReport,
    created: list[Path],
    files: list[tuple[Path, str]],
    max_total: int,
    label: str,
) -> None:
    """Write the planned members under ``dest`` within a running byte budget; each written file joins
    ``files`` as soon as it exists (so a failure can remove it), each left-out member ``report.skipped``."""
    budget, name = max_total, ""
    try:
        for info, name, parts, reason in plan:
            if reason and reason != "dir":
                report.skipped.append(Skipped(Path(name), reason))
                continue
            try:
                if reason == "dir":
                    if parts and not _hidden(parts):
                        _make_dirs(dest, parts, created)
                    continue
                _make_dirs(dest, parts[:-1], created)
                target = dest.joinpath(*parts)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                report.skipped.append(Skipped(Path(name), _CLASH))
                continue
            files.append((target, name))
            with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                while chunk := src.read(_CHUNK):
                    budget -= len(chunk)
                    if budget < 0:
                        raise ArchiveError(
                            f"Refused zip {label!r}: member {name!r} pushes the import past "
                            f"{max_total / 2**30:.2f} GiB although the archive declared less; it "
                            "lies about its sizes. Zip the images again."
                        )
                    out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise ArchiveError(
            f"Refused zip {label!r}: member {name!r} cannot be read ({exc}); the archive is "
            "corrupt or lies about its sizes. Zip the images again."
        ) from None


def _safe_basename(name: str) -> str:
    """Last path part of ``name``, without control/reserved characters or leading dots; <= 200 bytes."""
    base = re.split(r"[\\/]", name)[-1]
    base = "".join("_" if ord(c) < 32 or c in '<>:"|?*\x7f' else c for c in base).strip().lstrip(".").rstrip(". ")
    stem, suffix = os.path.splitext(base or "image")
    while len(os.fsencode(stem + suffix)) > 200 and stem:
        stem = stem[:-1]
    return (stem or "image") + suffix


def _publish(tmp: Path, folder: Path, base: str) -> Path:
    """Give ``tmp`` its final name in ``folder`` atomically, adding -1, -2, ... rather than overwrite."""
    stem, suffix = os.path.splitext(base)
    i = 0
    while True:
        target = folder / (base if i == 0 else f"{stem}-{i}{suffix}")
        i += 1
        try:
            os.link(tmp, target)  # atomic and fails if target exists: never overwrites
            return target
        except FileExistsError:
            continue
        except OSError:  # no hard links here (FAT, some shares): reserve the name, then replace it
            try:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                continue
            os.replace(tmp, target)
            return target


def sort_folder_upload(files: Sequence[tuple[str, bytes]]) -> tuple[str, dict[str, list[tuple[str, bytes]]], int]:
    """Sort a browser folder upload into classes by the folder each file sits in.

    Args:
        files: ``(relative name, payload)`` pairs as a browser sends a picked folder, e.g.
            ``("pets/cats/1.jpg", b"...")``: the picked folder, a class folder, the file.

    Returns:
        ``(folder name, {class: [(file name, payload), ...]}, loose)``: class names made folder-safe
        (:func:`safe_name`), and how many files sat outside every class folder (they are left out).

    Example:
        >>> sort_folder_upload([("pets/cats/1.jpg", b"a"), ("pets/dogs/2.jpg", b"b"), ("pets/x.jpg", b"c")])
        ('pets', {'cats': [('1.jpg', b'a')], 'dogs': [('2.jpg', b'b')]}, 1)
    """
    by_class: dict[str, list[tuple[str, bytes]]] = {}
    loose = 0
    for name, payload in files:
        parts = PurePosixPath(str(name).replace("\\", "/")).parts
        if len(parts) < 3:  # "folder/image.jpg": not inside a class folder
            loose += 1
            continue
        by_class.setdefault(safe_name(parts[-2], "class"), []).append((parts[-1], payload))
    top = PurePosixPath(str(files[0][0]).replace("\\", "/")).parts[0] if files else ""
    return safe_name(top, "upload"), by_class, loose


def _size_of(fp: str | os.PathLike | BinaryIO) -> int:
    if isinstance(fp, (str, os.PathLike)):
        return os.path.getsize(fp)
    pos = fp.tell()
    size = fp.seek(0, os.SEEK_END)
    fp.seek(pos)
    return size


def save_images(files: Sequence[tuple[str, bytes]], into_class_dir: Path) -> ImportReport:
    """Validate uploaded images (browser upload, webcam capture) and write them into a class folder.

    Args:
        files: ``(name, payload)`` pairs. Only the base name of ``name`` is used; a name without
            an extension gets one from the decoded format.
        into_class_dir: Class folder to write into; created if missing.

    Returns:
        An :class:`ImportReport` with ``root=into_class_dir``. Existing files are never
        overwritten (``x.png`` becomes ``x-1.png``); each image is written to a hidden temp file,
        validated there, then linked (or ``os.replace``-d) into its final name atomically.

    Raises:
        OSError: The class folder cannot be created or written.
    """
    folder = Path(into_class_dir).expanduser().absolute()
    size = sum(len(payload) for _name, payload in files)
    check_upload(size, size, folder, f"the {len(files)} uploaded image(s)")  # limits and free space, before a byte
    folder.mkdir(parents=True, exist_ok=True)
    report = ImportReport(root=folder)
    for name, payload in files:
        base = _safe_basename(str(name))
        suffix = os.path.splitext(base)[1].lower()
        if suffix and suffix not in IMAGE_EXTENSIONS:
            report.skipped.append(Skipped(Path(str(name)), f"not an image (extension {suffix})"))
            continue
        tmp = folder / f".tl-upload-{secrets.token_hex(8)}{suffix or '.img'}"
        try:
            with open(tmp, "xb") as f:
                f.write(payload)
            reason = _check_image(tmp, shown=base)
            if reason is None and not suffix:  # e.g. a webcam capture named "image": name it by its format
                with Image.open(tmp) as img:
                    fmt = img.format or "unknown"
                suffix = _FORMAT_EXT.get(fmt, "")
                base += suffix
                reason = None if suffix else f"not an image (unsupported format {fmt})"
            if reason:
                report.skipped.append(Skipped(Path(str(name)), reason))
            else:
                report.written.append(_publish(tmp, folder, base))
        finally:
            tmp.unlink(missing_ok=True)
    return report
